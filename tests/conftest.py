"""Shared test fixtures: small non-cubic, anisotropic, oblique volumes with non-zero origin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from navsvc.transforms import rotation_matrix_from_euler_deg

REPO = Path(__file__).resolve().parents[1]
#: Real data that none of our code made (see ../shared/data/README.md).
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_CT_DIR = SHARED_DATA / "real-ct-pelvis"


def oblique_direction(angles_deg=(12.0, -7.0, 20.0)) -> np.ndarray:
    return rotation_matrix_from_euler_deg(angles_deg)


@pytest.fixture
def oblique_image() -> sitk.Image:
    """A 23 x 17 x 11 float32 image, spacing 0.7 x 0.9 x 3.0 mm, oblique, origin (-41, 17.5, 203)."""
    rng = np.random.default_rng(1234)
    arr = rng.normal(100.0, 20.0, size=(11, 17, 23)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.9, 3.0))
    img.SetOrigin((-41.0, 17.5, 203.0))
    img.SetDirection(oblique_direction().ravel().tolist())
    return img


@pytest.fixture
def real_ct_dir() -> Path:
    if not (REAL_CT_DIR / "example_ct.nii.gz").is_file():
        pytest.skip(f"real CT data absent: expected {REAL_CT_DIR}/example_ct.nii.gz (../shared/data beside the repo)")
    return REAL_CT_DIR
