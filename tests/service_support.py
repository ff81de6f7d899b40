"""Shared helpers of the service tests: small volumes, an in-process service, and a
scripted registration runner.

The scripted runner is a test double for ``navsvc.registration`` (which the service calls
through :func:`navsvc.server.parts.run_registration`): it reports progress, honours
cancellation, optionally waits on a gate (to test concurrency), writes a real ITK transform
file into the result folder and returns a known ``T_ct_from_mri`` with a chosen QA verdict.
Tests of the real registration path use :mod:`phantoms` when that part is installed.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from navsvc.config import config_from_dict
from navsvc.imaging import make_image, read_image, read_label_map, write_image
from navsvc.server import parts
from navsvc.server.app import App, create_server
from navsvc.server.client import NavClient
from navsvc.server.targets import targets_ct_from_trajectories
from navsvc.transforms import RigidTransform, write_json_atomic, write_transform

TOKENS = {"viewer": "viewer-token-0123456789", "technician": "technician-token-0123456789",
          "surgeon": "surgeon-token-0123456789"}
T_CT_FROM_MRI = RigidTransform.from_euler_deg((10.0, -5.0, 20.0), (12.5, -30.0, 4.0), "ct", "mri")
TRAJECTORIES = [
    {"name": "Drill1", "entry_lps": [10.0, 20.0, -30.0], "target_lps": [18.0, 35.0, -10.0],
     "diameter_mm": 3.2, "depth_mm": 26.3},
    {"name": "Drill2", "entry_lps": [12.0, 18.0, -32.0], "target_lps": [22.0, 30.0, -14.0],
     "diameter_mm": 2.5, "depth_mm": 24.0},
]


def write_volumes(folder: Path) -> dict[str, Path]:
    """A tiny anisotropic, non-cubic MRI, segmentation (femur=1, necrosis=2) and CT."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (6, 9, 11)
    mri = rng.normal(100, 10, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 3:7, 3:8] = 1
    labels[3, 4:6, 4:6] = 2
    ct = rng.normal(0, 50, shape).astype(np.int16)
    geo = {"spacing_mm": (1.0, 1.2, 3.0), "origin_lps": (-20.0, 15.0, -40.0)}
    paths = {"mri": folder / "mri.nii.gz", "labels": folder / "labels.nii.gz", "ct": folder / "ct.nii.gz",
             "plan": folder / "plan.json"}
    write_image(paths["mri"], make_image(mri, **geo))
    write_image(paths["labels"], make_image(labels, **geo))
    write_image(paths["ct"], make_image(ct, **geo))
    write_json_atomic(paths["plan"], {"trajectories": TRAJECTORIES})
    return paths


def json_plan_reader(plan_path: Path, mri_path: Path, labels_path: Path) -> list[dict[str, Any]]:
    """Test double of the planning part: checks the volumes for real, reads trajectories from JSON."""
    read_image(mri_path, "MRI")
    read_label_map(labels_path, name="segmentation")
    return list(json.loads(plan_path.read_text())["trajectories"])


class ScriptedRunner:
    """Test double of the registration part (see module doc). ``verdict`` may be overridden
    per registration with the option ``{"test_verdict": "\\"WARN\\""}``."""

    def __init__(self, verdict: str = "PASS", gate: threading.Event | None = None) -> None:
        self.verdict = verdict
        self.gate = gate
        self.started = threading.Event()
        self.calls = 0

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        from navsvc.errors import InputError

        unknown = set(options) - {"test_verdict"}
        if unknown or options.get("test_verdict", "PASS") not in ("PASS", "WARN", "FAIL"):
            raise InputError(f"scripted runner: unknown options {sorted(options)}")

    def __call__(self, inp: parts.RegistrationInput, out_dir: Path, progress: Any,
                 cancel: Any) -> parts.RegistrationOutput:
        self.calls += 1
        self.started.set()
        progress("rigid", 0.25, "scripted: surface alignment")
        if self.gate is not None:
            while not self.gate.wait(0.02):
                cancel.check()
        cancel.check()
        progress("qa", 0.9, "scripted: QA")
        write_transform(out_dir / "T_ct_from_mri.h5", T_CT_FROM_MRI)
        verdict = inp.options.get("test_verdict", self.verdict)
        qa = {"verdict": verdict, "reasons": [] if verdict == "PASS" else [f"scripted {verdict}"],
              "figures": {"tre_mm_mean": 0.3}, "picture": ""}
        write_json_atomic(out_dir / "qa.json", qa)
        return parts.RegistrationOutput(
            qa=qa, T_ct_from_mri=T_CT_FROM_MRI.matrix.tolist(),
            targets_ct=targets_ct_from_trajectories(inp.trajectories, T_CT_FROM_MRI),
            timings_s={"total": 0.01},
        )


def service_config(tmp_path: Path, **over: Any) -> Any:
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "grace_s": 1.0},
        "igtl": {"enabled": False, "port": 0},
        "store": {"data_dir": str(tmp_path / "data")},
        "paths": {"roots": [str(tmp_path / "inputs")]},
        "limits": {"max_upload_bytes": 200_000},
        "auth": {"tokens": [{"token": t, "role": r, "name": f"{r} user"} for r, t in TOKENS.items()]},
    }
    for section, values in over.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


def start_service(tmp_path: Path, runner: Any = None, **over: Any) -> tuple[App, int]:
    runner = runner or ScriptedRunner()
    return create_server(service_config(tmp_path, **over), runner=runner, plan_reader=json_plan_reader,
                         options_checker=runner.check_options)


def client(port: int, role: str) -> NavClient:
    c = NavClient(f"127.0.0.1:{port}", TOKENS[role])
    c.wait_ready(10)
    return c


def seed_registration(tmp_path: Path, paths: dict[str, Path], verdict: str = "PASS") -> tuple[str, str]:
    """Create a case, load the plan and finish a registration (scripted runner) directly on the
    store in ``tmp_path/data``, as a running service would. Returns (case_id, registration_id)."""
    from navsvc.server.auth import Identity
    from navsvc.server.core import NavService
    from navsvc.store import Store

    cfg = service_config(tmp_path)
    store = Store(cfg.store.data_dir)
    runner = ScriptedRunner(verdict)
    svc = NavService(cfg, store, runner=runner, plan_reader=json_plan_reader, options_checker=runner.check_options)
    tech = Identity("seed technician", "technician")
    try:
        case_id = svc.create_case(tech, "seeded")["case_id"]
        svc.load_plan(tech, case_id, ("server_path", str(paths["plan"])), ("server_path", str(paths["mri"])),
                      ("server_path", str(paths["labels"])))
        reg_id = svc.start_registration(tech, case_id, ("server_path", str(paths["ct"])), {})["registration_id"]
        events = list(svc.watch(reg_id, lambda: True))
        assert events[-1]["state"] == "succeeded", events[-1]
    finally:
        svc.stop()
        store.close()
    return case_id, reg_id


def write_toml_config(tmp_path: Path, igtl: bool) -> Path:
    """A config file for a `navsvc serve` subprocess (ports 0, tokens of TOKENS)."""
    lines = [
        "[server]", 'host = "127.0.0.1"', "port = 0", "grace_s = 1.0",
        "[igtl]", f"enabled = {'true' if igtl else 'false'}", "port = 0", "refresh_hz = 20.0",
        "[store]", f'data_dir = "{tmp_path / "data"}"',
        "[paths]", f'roots = ["{tmp_path / "inputs"}"]',
    ]
    for role, token in TOKENS.items():
        lines += ["[[auth.tokens]]", f'token = "{token}"', f'role = "{role}"', f'name = "{role} user"']
    path = tmp_path / "navsvc.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
