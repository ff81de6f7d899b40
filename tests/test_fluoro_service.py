"""The gRPC registration start for fluoroscopy, end to end through the real client: a small phantom's
plan and its two views uploaded, the registration run by the real parts, the stored transform and the
targets in the C-arm world frame."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from service_support import TOKENS, service_config

from navsvc.fluoro.pose import perturb
from navsvc.frames import MRI, WORLD
from navsvc.server.client import NavClient
from navsvc.server.pb import navsvc_pb2 as pb
from navsvc.transforms import RigidTransform

SEED = 200


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory):
    from navsvc.imaging import write_image
    from phantoms import make_case
    from planning import plan_automatic, save_plan

    case = make_case(SEED, "small", modalities=("mri", "fluoro"))
    folder = tmp_path_factory.mktemp("fluoro-service") / "inputs"
    case.write(folder / "case")
    paths = {"mri": folder / "mri.nii.gz", "labels": folder / "labels.nii.gz"}
    write_image(paths["mri"], case.mri)
    write_image(paths["labels"], case.labels)
    plan = plan_automatic(case.mri, case.labels, mri_path=str(paths["mri"]), seg_path=str(paths["labels"]))
    paths["plan"] = save_plan(plan, folder / "plan.json")
    views = sorted((folder / "case" / "fluoro").glob("view_*.nii.gz"))
    return case, paths, [(v, v.with_name(v.name.replace(".nii.gz", ".json"))) for v in views]


@pytest.mark.slow
def test_fluoro_registration_over_grpc(tmp_path: Path, phantom) -> None:
    from navsvc.server.app import create_server

    case, paths, views = phantom
    app, port = create_server(service_config(tmp_path, limits={"max_upload_bytes": 50_000_000}))
    try:
        c = NavClient(f"127.0.0.1:{port}", TOKENS["technician"])
        c.wait_ready(10)
        case_id = c.call("CreateCase", pb.CreateCaseRequest(label="fluoro phantom")).case_id
        c.call("LoadPlan", pb.LoadPlanRequest(case_id=case_id, plan=c.file_ref(case_id, paths["plan"], False),
                                              mri=c.file_ref(case_id, paths["mri"], False),
                                              labels=c.file_ref(case_id, paths["labels"], False)))
        refs = [pb.FluoroViewRef(image=c.file_ref(case_id, img, False), geometry=c.file_ref(case_id, geo, False))
                for img, geo in views]
        # one view only: refused before anything is queued
        with pytest.raises(grpc.RpcError) as err:
            c.call("StartRegistration", pb.StartRegistrationRequest(case_id=case_id, fluoro=refs[:1]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "two fluoroscopy views" in err.value.details()
        T_true = RigidTransform(case.T_ct_from_mri_femur.matrix, WORLD, MRI)
        lesion_world = case.landmarks_ct["lesion_centroid"]
        T_init = perturb(T_true, 5.0, 5.0, lesion_world, seed=3)
        options = {"starts": "1", "T_world_from_mri_init": json.dumps(T_init.matrix.ravel().tolist())}
        reg = c.call("StartRegistration", pb.StartRegistrationRequest(case_id=case_id, fluoro=refs, options=options))
        events = list(c.stream("WatchRegistration", pb.WatchRegistrationRequest(
            registration_id=reg.registration_id), timeout_s=900))
        assert any(e.stage == "fluoro" for e in events)
        done = c.call("GetRegistration", pb.GetRegistrationRequest(registration_id=reg.registration_id))
        assert done.error == "" and done.qa.verdict in ("PASS", "WARN"), (done.error, list(done.qa.reasons))
        T = np.array(done.T_ct_from_mri.values).reshape(4, 4)
        lesion_mri = case.landmarks_mri["lesion_centroid"]
        tre_mm = float(np.linalg.norm(T[:3, :3] @ lesion_mri + T[:3, 3] - lesion_world))
        assert tre_mm < 1.0, tre_mm
        names = {p.name for p in (tmp_path / "data").rglob("overlay_view*.png")}
        assert {"overlay_view1.png", "overlay_view2.png"} <= names
        c.close()
    finally:
        app.stop()
