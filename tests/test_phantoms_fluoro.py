"""Fluoroscopy views and the cone-beam preset."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from navsvc.imaging import index_from_lps
from phantoms import load_case, make_case
from phantoms.fluoro import project


@pytest.fixture(scope="module")
def fl_case():
    return make_case(4, "small", modalities=("fluoro",), fluoro_views=("ap", "lateral"))


def test_fluoro_geometry_is_consistent(fl_case):
    assert [v.geometry["view"] for v in fl_case.fluoro] == ["ap", "lateral"]
    for v in fl_case.fluoro:
        g = v.geometry
        m = np.array(g["T_ct_from_carm"])
        P = np.array(g["projection_matrix"])
        np.testing.assert_allclose(m[:3, :3].T @ m[:3, :3], np.eye(3), atol=1e-12)
        # the isocentre projects to the principal point
        np.testing.assert_allclose(project(P, m[:3, 3])[0], g["principal_point_px"], atol=1e-9)
        # every point on the ray from the source to a pixel projects to that pixel
        u, w = 10.0, 61.0
        det_carm = np.array([(u - g["principal_point_px"][0]) * g["pixel_spacing_mm"][0],
                             (w - g["principal_point_px"][1]) * g["pixel_spacing_mm"][1], g["sdd_mm"] - g["sad_mm"]])
        det_ct = m[:3, :3] @ det_carm + m[:3, 3]
        src = np.array(g["source_position_ct_mm"])
        for t in (0.3, 0.6, 0.9):
            np.testing.assert_allclose(project(P, src + t * (det_ct - src))[0], [u, w], atol=1e-9)
        np.testing.assert_allclose(np.linalg.norm(det_ct - src) >= g["sdd_mm"], True)
    # AP: the beam runs anterior -> posterior (+y) in the CT frame
    ap = np.array(fl_case.fluoro[0].geometry["T_ct_from_carm"])
    np.testing.assert_allclose(ap[:3, 2], [0, 1, 0], atol=1e-12)


def test_fluoro_images_show_the_body_and_bone(fl_case):
    for v in fl_case.fluoro:
        img = sitk.GetArrayViewFromImage(v.image)
        g = v.geometry
        assert img.shape == (g["size_px"][1], g["size_px"][0])
        inside = img[img > 0]
        assert inside.size > 0.6 * img.size
        assert 2.0 < np.median(inside) < 9.0  # 10-40 cm of water-like tissue at 0.02 / mm
        assert img[0, 0] == 0.0  # outside the collimator
        # bone raises the line integral: the femoral head against the image median
        u, w = np.round(g["landmarks_px"]["head_centre"]).astype(int)
        assert img[w - 1:w + 2, u - 1:u + 2].mean() > np.median(inside)


def test_fluoro_round_trip(fl_case, tmp_path):
    back = load_case(fl_case.write(tmp_path / "c"))
    assert len(back.fluoro) == 2
    for a, b in zip(fl_case.fluoro, back.fluoro, strict=True):
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(b.image))
        assert a.geometry["projection_matrix"] == b.geometry["projection_matrix"]


@pytest.mark.slow
def test_cone_beam_ct_is_truncated_noisy_and_true():
    c = make_case(0, "cbct", modalities=("ct",), ct_fov_mm=(110.0, 110.0, 120.0))
    ct = sitk.GetArrayViewFromImage(c.ct)
    lab = sitk.GetArrayViewFromImage(c.labels_ct)
    assert c.ct.GetSpacing() == pytest.approx((0.8, 0.8, 0.8))
    # corners of each slice lie outside the 70 mm reconstruction cylinder
    assert (ct[:, 0, 0] == -1000).all() and (ct[:, -1, -1] == -1000).all()
    ijk = np.round(index_from_lps(c.ct, c.landmarks_ct["lesion_centroid"])).astype(int)
    assert lab[ijk[2], ijk[1], ijk[0]] == 2
    v = float((lab == 2).sum() * 0.8**3)
    assert v == pytest.approx(c.params["lesion_volume_mm3"], rel=0.02)
    # noise from neighbour differences in soft tissue (robust to edges): 45 HU set
    a, b = ct[:, :, 1:].astype(float), ct[:, :, :-1].astype(float)
    soft = (lab[:, :, 1:] == 0) & (lab[:, :, :-1] == 0) & (np.abs(a) < 400) & (np.abs(b) < 400)
    d = (a - b)[soft]
    sigma = 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)
    assert 38 < sigma < 52
