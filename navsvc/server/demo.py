"""The end-to-end demo on a generated phantom (``navsvc demo``).

Starts the real service in-process with embedded defaults (ports chosen by the OS), then acts
as its clients: a technician creates a case, plans on the phantom MRI, uploads the plan with
its MRI and segmentation (chunked, SHA-256 checked), registers against the phantom CT with
live progress; a surgeon approves; a robot receives the targets over a real OpenIGTLink
socket. The targets it receives are compared with the phantom's exact ground truth.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from navsvc.config import config_from_dict
from navsvc.errors import NavError, PreconditionFailed, RegistrationFailed

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    """What the demo measured. TRE in mm between the targets received over OpenIGTLink and
    the phantom's true positions in the CT; timings in seconds."""

    case_id: str
    registration_id: str
    qa_verdict: str
    qa_reasons: list[str]
    qa_figures: dict[str, float]
    qa_picture: str
    targets_ct_lps: dict[str, list[float]]
    truth_ct_lps: dict[str, list[float]]
    tre_mm: dict[str, float]
    timings_s: dict[str, float] = field(default_factory=dict)
    registration_timings_s: dict[str, float] = field(default_factory=dict)
    out_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _keep_previous_run(out_dir: Path) -> None:
    """The demo starts from an empty store (an earlier demo's approved targets would otherwise be
    restored at start-up, as the service must do). Move an earlier run's data aside; delete nothing."""
    data = out_dir / "data"
    if data.exists():
        previous = out_dir / "previous-runs" / time.strftime("data-%Y%m%d-%H%M%S")
        n = 1
        while previous.exists():
            previous = previous.with_name(f"{previous.name}-{n}")
            n += 1
        previous.parent.mkdir(parents=True, exist_ok=True)
        data.rename(previous)
        log.info("demo: moved the previous run's data to %s", previous)


def run_demo(out_dir: Path, seed: int = 0, preset: str = "small", *,
             on_progress: Callable[[str, float, str], None] | None = None,
             registration_options: dict[str, str] | None = None) -> DemoResult:
    """Run the whole flow; raises NavError when a step fails (the message says which)."""
    from navsvc.imaging import write_image
    from navsvc.server.app import create_server
    from navsvc.server.client import NavClient
    from navsvc.server.pb import navsvc_pb2 as pb
    from navsvc.streaming import IgtlClient
    from phantoms import make_case
    from planning import plan_automatic, save_plan

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    _keep_previous_run(out_dir)
    inputs = out_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)

    def lap(name: str, start: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - start, 3)
        return now

    # 1. the phantom and its plan (preoperative, on the MRI)
    case = make_case(seed, preset)
    if case.mri is None or case.labels is None or case.ct is None:
        raise PreconditionFailed(f"phantom preset {preset!r} made no MRI, segmentation or CT")
    mri_path, labels_path, ct_path = inputs / "mri.nii.gz", inputs / "labels.nii.gz", inputs / "ct.nii.gz"
    write_image(mri_path, case.mri)
    write_image(labels_path, case.labels)
    write_image(ct_path, case.ct)
    t = lap("phantom_s", t0)
    plan = plan_automatic(case.mri, case.labels, mri_path=str(mri_path), seg_path=str(labels_path),
                          case_id=f"demo-seed{seed}")
    plan_path = save_plan(plan, inputs / "plan.json")
    t = lap("plan_s", t)

    # 2. the service, embedded defaults, OS-chosen ports, fresh tokens
    tokens = {role: secrets.token_urlsafe(24) for role in ("technician", "surgeon")}
    config = config_from_dict({
        "server": {"host": "127.0.0.1", "port": 0, "grace_s": 2.0},
        "igtl": {"enabled": True, "host": "127.0.0.1", "port": 0, "refresh_hz": 10.0},
        "store": {"data_dir": str(out_dir / "data")},
        "paths": {"roots": [str(inputs)]},
        "auth": {"tokens": [{"token": tok, "role": role, "name": f"demo {role}"} for role, tok in tokens.items()]},
    }, "demo configuration")
    app, port = create_server(config)
    t = lap("service_start_s", t)
    try:
        address = f"127.0.0.1:{port}"
        with NavClient(address, tokens["technician"]) as tech, NavClient(address, tokens["surgeon"]) as surgeon, \
                IgtlClient("127.0.0.1", app.igtl_port) as robot:
            tech.wait_ready(10)
            status = _igtl_status(robot)
            if status["state"] != "no_target":
                raise PreconditionFailed(f"expected no target before approval, the stream says {status}")
            case_id = tech.call("CreateCase", pb.CreateCaseRequest(label=f"demo phantom seed {seed}")).case_id
            tech.call("LoadPlan", pb.LoadPlanRequest(
                case_id=case_id, plan=tech.file_ref(case_id, plan_path, server_side=False),
                mri=tech.file_ref(case_id, mri_path, server_side=False),
                labels=tech.file_ref(case_id, labels_path, server_side=False)))
            t = lap("upload_and_load_plan_s", t)
            reg = tech.call("StartRegistration", pb.StartRegistrationRequest(
                case_id=case_id, ct=pb.FileRef(server_path=str(ct_path)), options=registration_options or {}))
            for ev in tech.stream("WatchRegistration", pb.WatchRegistrationRequest(
                    registration_id=reg.registration_id), timeout_s=1800):
                if on_progress is not None:
                    on_progress(ev.stage, ev.fraction, ev.message)
            final = tech.call("GetRegistration", pb.GetRegistrationRequest(registration_id=reg.registration_id))
            t = lap("registration_s", t)
            if final.state != pb.SUCCEEDED:
                raise RegistrationFailed(f"registration {final.registration_id} ended "
                                         f"{pb.RegistrationState.Name(final.state)}: {final.error}")
            verdict = final.qa.verdict
            if verdict == "FAIL":
                raise RegistrationFailed(f"registration QA FAIL: {'; '.join(final.qa.reasons)} "
                                         f"(picture: {final.qa.picture_path})")
            surgeon.call("ApproveRegistration", pb.ApproveRegistrationRequest(
                registration_id=final.registration_id,
                override_reason="demo: reviewed on the QA picture" if verdict == "WARN" else ""))
            approved_at = time.perf_counter()
            status, targets = _igtl_approved(robot, final.registration_id)
            timings["approval_to_openigtlink_s"] = round(time.perf_counter() - approved_at, 4)
            lap("approve_and_receive_s", t)
        truth = {tr.name: case.map_mri_to_ct(np.array(tr.target_lps), "femur").tolist()
                 for tr in plan.trajectories}
        tre = {n: float(np.linalg.norm(np.array(targets[n]) - np.array(truth[n]))) for n in truth}
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        result = DemoResult(
            case_id=case_id, registration_id=final.registration_id, qa_verdict=verdict,
            qa_reasons=list(final.qa.reasons), qa_figures=dict(final.qa.figures),
            qa_picture=final.qa.picture_path, targets_ct_lps=targets, truth_ct_lps=truth, tre_mm=tre,
            timings_s=timings, registration_timings_s=dict(final.timings_s), out_dir=str(out_dir),
        )
        (out_dir / "demo_summary.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        return result
    finally:
        app.stop()


def _igtl_status(robot: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    msg, _ = robot.receive_until(lambda x: x.message_type == "STRING", timeout_s)
    return dict(json.loads(msg.string))


def _igtl_approved(robot: Any, registration_id: str,
                   timeout_s: float = 10.0) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Read until the STRING status says approved for ``registration_id``; return it and the
    targets of the TRAJ messages sent with it (name -> target, output frame, mm)."""
    deadline = time.monotonic() + timeout_s
    targets: dict[str, list[float]] = {}
    while time.monotonic() < deadline:
        msg = robot.receive(max(0.01, deadline - time.monotonic()))
        if msg.message_type == "TRAJ":
            targets.update({e.name: [float(v) for v in e.target] for e in msg.elements})
        elif msg.message_type == "STRING":
            status = json.loads(msg.string)
            if status.get("state") == "approved" and status.get("registration_id") == registration_id and targets:
                return status, targets
            targets = {}  # TRAJ messages belong to the status that follows them
    raise NavError(f"no approved targets for {registration_id} over OpenIGTLink within {timeout_s} s")
