"""Fluoroscopy 2D/3D registration: C-arm view geometry, a differentiable DRR renderer in torch,
attenuation volumes from the MRI segmentation, and multi-view rigid pose optimisation."""
