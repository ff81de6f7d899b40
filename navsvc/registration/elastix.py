"""elastix backend (itk-elastix): rigid Mattes MI, optionally followed by a B-spline stage.

elastix registers fixed = CT to moving = MRI and returns a transform that maps **fixed
points to moving points**, i.e. ``T_mri_from_ct``; it is named so here and inverted once.

Configurations:

* ``default``: elastix's default rigid map (4 resolutions, 256 iterations, 2048 random
  samples) with geometric-centre initialisation -- what a typical user runs.
* ``careful``: the MRI femur dilated by 5 mm as moving mask, geometric-centre initialisation
  (centre of gravity of the intensities sent it 50 mm off), 4 resolutions, 1000 iterations
  each, 10000 random off-grid samples per iteration, 40 histogram bins -- the best rigid
  elastix configuration we could make for a femur. A fixed mask (a CT femur mask dilated by
  5 mm, ``use_fixed_mask``, as a user who segmented the CT would give) is optional: elastix
  then initialises by the two masks' centres, which a truncated cone-beam field of view puts
  8 mm apart (phantom cbct-103: lost at 43 mm with it, 0.12 mm without); all CT bone as fixed
  mask pulled it towards the pelvis.

A start (``initial_T_ct_from_mri``): elastix begins from that pose instead of its own
geometric-centre initialisation (itk-elastix's external initial transform, fixed = CT to
moving = MRI, composed before the rigid stage; the result is read back from elastix's
combination transform, so it is the whole ``T_mri_from_ct`` including the start). The
benchmark's ``elastix-rigid-masks-oracle-start`` gives it the case's true femur pose moved by
a small known error: not something a user has, but it shows what careful elastix reaches and
costs where it converges (:mod:`navsvc.registration.validation_methods`).
``overrides`` replaces entries of the rigid parameter map (e.g. more iterations or samples).

The B-spline stage (``bspline=True``) uses elastix's default B-spline map with a 20 mm final
grid and the same masks; its result is returned as a dense displacement field on the CT grid.
"""

from __future__ import annotations

import logging

import itk
import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from navsvc.errors import ConfigError
from navsvc.frames import CT, MRI
from navsvc.transforms import RigidTransform, Transform

log = logging.getLogger(__name__)


def to_itk(image: sitk.Image, pixel: type = np.float32) -> itk.Image:
    """A SimpleITK image as an ITK image with the same geometry (LPS)."""
    arr = sitk.GetArrayFromImage(image).astype(pixel)
    out = itk.image_view_from_array(np.ascontiguousarray(arr))
    out = itk.image_duplicator(out)
    out.SetSpacing([float(s) for s in image.GetSpacing()])
    out.SetOrigin([float(o) for o in image.GetOrigin()])
    out.SetDirection(itk.matrix_from_array(np.array(image.GetDirection()).reshape(3, 3)))
    return out


def _rigid_map(params: itk.ParameterObject, config: str, iterations: int | None) -> dict[str, list[str]]:
    m = params.GetDefaultParameterMap("rigid")
    m["AutomaticTransformInitialization"] = ["true"]
    m["WriteResultImage"] = ["false"]
    m["Interpolator"] = ["LinearInterpolator"]
    if config == "careful":
        # with masks given, elastix's geometric-centre initialisation aligns the masks' centres
        m["AutomaticTransformInitializationMethod"] = ["GeometricalCenter"]
        m["NumberOfResolutions"] = ["4"]
        m["MaximumNumberOfIterations"] = [str(iterations or 1000)]
        m["NumberOfSpatialSamples"] = ["10000"]
        m["ImageSampler"] = ["RandomCoordinate"]  # off-grid samples: no grid-aligned interpolation bias
        m["NumberOfHistogramBins"] = ["40"]
        m["ErodeMask"] = ["false"]
        # without a fixed mask most CT samples fall outside the moving femur mask; that is the point
        m["RequiredRatioOfValidSamples"] = ["0.05"]
    else:
        m["AutomaticTransformInitializationMethod"] = ["GeometricalCenter"]
        if iterations:
            m["MaximumNumberOfIterations"] = [str(iterations)]
    return m


def _itk_affine(T_mri_from_ct: RigidTransform) -> itk.Transform:
    """``T_mri_from_ct`` as an ITK affine transform (maps CT points to MRI points, LPS mm)."""
    tx = itk.AffineTransform[itk.D, 3].New()
    tx.SetMatrix(itk.matrix_from_array(np.asarray(T_mri_from_ct.rotation, dtype=np.float64)))
    tx.SetTranslation([float(v) for v in T_mri_from_ct.translation_mm])
    return tx


def _fit_rigid(tx: itk.Transform, points_mm: NDArray[np.float64]) -> RigidTransform:
    """The rigid ``T_mri_from_ct`` that ``tx`` (fixed = CT -> moving = MRI points) is, from its
    action on ``points_mm`` (N >= 4, not coplanar; least squares, exact for a rigid ``tx``)."""
    mapped = np.array([tx.TransformPoint([float(c) for c in p]) for p in points_mm], dtype=np.float64)
    a = np.hstack([points_mm, np.ones((len(points_mm), 1))])
    sol, *_ = np.linalg.lstsq(a, mapped, rcond=None)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = sol[:3].T, sol[3]
    u, _, vt = np.linalg.svd(m[:3, :3])
    m[:3, :3] = u @ vt  # remove rounding: elastix's Euler transform is a rotation
    return RigidTransform(m, MRI, CT)


def _corners_mm(image: sitk.Image) -> NDArray[np.float64]:
    size = image.GetSize()
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(i), float(j), float(k)])
                     for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])


def _bspline_map(params: itk.ParameterObject) -> dict[str, list[str]]:
    m = params.GetDefaultParameterMap("bspline")
    m["FinalGridSpacingInPhysicalUnits"] = ["20.0"]
    m["RequiredRatioOfValidSamples"] = ["0.05"]
    m["MaximumNumberOfIterations"] = ["500"]
    m["NumberOfSpatialSamples"] = ["4000"]
    m["WriteResultImage"] = ["false"]
    m["ErodeMask"] = ["false"]
    return m


def elastix_register(
    ct: sitk.Image,
    mri: sitk.Image,
    *,
    moving_mask: sitk.Image | None = None,
    fixed_mask: sitk.Image | None = None,
    config: str = "careful",
    bspline: bool = False,
    iterations: int | None = None,
    threads: int | None = None,
    use_fixed_mask: bool = False,
    initial_T_ct_from_mri: RigidTransform | None = None,
    overrides: dict[str, str] | None = None,
) -> tuple[RigidTransform, Transform | None]:
    """Run elastix (fixed = CT, moving = MRI).

    Returns (``T_ct_from_mri`` of the rigid stage, ``T_mri_from_ct`` of rigid + B-spline as
    a displacement-field :class:`Transform` on the CT grid, or None without ``bspline``).
    Masks are used only by the ``careful`` configuration. ``initial_T_ct_from_mri``: start
    from this pose (no automatic initialisation); ``overrides``: rigid-map entries to replace.
    """
    if initial_T_ct_from_mri is not None and bspline:
        raise ConfigError("elastix with a given start: expected the rigid stage only, got bspline=True")
    params = itk.ParameterObject.New()
    rigid_params = _rigid_map(params, config, iterations)
    if initial_T_ct_from_mri is not None:
        rigid_params["AutomaticTransformInitialization"] = ["false"]
    for key, value in (overrides or {}).items():
        rigid_params[key] = [str(value)]
    params.AddParameterMap(rigid_params)
    if bspline:
        params.AddParameterMap(_bspline_map(params))
    method = itk.ElastixRegistrationMethod.New(to_itk(ct), to_itk(mri))
    method.SetParameterObject(params)
    method.SetLogToConsole(False)
    if threads:
        method.SetNumberOfThreads(int(threads))
    if initial_T_ct_from_mri is not None:
        method.SetExternalInitialTransform(_itk_affine(initial_T_ct_from_mri.inverse()))
    if config == "careful":
        if moving_mask is not None:
            method.SetMovingMask(to_itk(moving_mask, np.uint8))
        if fixed_mask is not None and use_fixed_mask:
            method.SetFixedMask(to_itk(fixed_mask, np.uint8))
    method.Update()
    result = method.GetTransformParameterObject()
    if initial_T_ct_from_mri is not None:
        # the combination transform is the start followed by the rigid stage
        return _fit_rigid(method.GetCombinationTransform(), _corners_mm(ct)).inverse(), None
    rigid_map = result.GetParameterMap(0)
    angles_t = [float(v) for v in rigid_map["TransformParameters"]]
    center = [float(v) for v in rigid_map["CenterOfRotationPoint"]]
    euler = sitk.Euler3DTransform()
    euler.SetCenter(center)
    if rigid_map.get("ComputeZYX", ("false",))[0] == "true":
        euler.SetComputeZYX(True)
    euler.SetParameters(angles_t)
    T_mri_from_ct_rigid = RigidTransform.from_sitk(euler, MRI, CT)
    if not bspline:
        return T_mri_from_ct_rigid.inverse(), None
    field = itk.transformix_deformation_field(to_itk(mri), result)
    field_arr = np.asarray(itk.array_from_image(field), dtype=np.float64)
    field_img = sitk.GetImageFromArray(field_arr, isVector=True)
    field_img.CopyInformation(ct)
    T_mri_from_ct = Transform(sitk.DisplacementFieldTransform(field_img), MRI, CT)
    return T_mri_from_ct_rigid.inverse(), T_mri_from_ct
