"""The service's orchestration, independent of gRPC: cases, files, plans, registrations in a
worker pool, decisions (the interlock), calibration, targets and audit.

Every public method takes the caller's :class:`Identity` (for the audit log) and returns
plain dicts from the store; the servicer only translates them to protobuf. Lock order:
``NavService._lock`` (interlock transitions) before the store's internal lock; no lock is
held while targets go out (the hub's sink thread sends them).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from navsvc.config import Config
from navsvc.errors import (
    Cancelled,
    InputError,
    NavError,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    ResourceExhausted,
    TransformError,
)
from navsvc.progress import CancelToken
from navsvc.server import parts
from navsvc.server.auth import Identity
from navsvc.server.paths import confine
from navsvc.server.targets import TargetHub, snapshot_from_store
from navsvc.store import Store, StoredFile

log = logging.getLogger(__name__)

SYSTEM = Identity("navsvc", "system")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
FINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")

FileRef = tuple[str, str]  # ("server_path" | "upload_id", value)
Runner = Callable[[parts.RegistrationInput, Path, Callable[[str, float, str], None], CancelToken],
                  parts.RegistrationOutput]
PlanReader = Callable[[Path, Path, Path], list[dict[str, Any]]]


@dataclass
class RunLog:
    """Progress events of one registration, for watchers (in memory, this process only)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)
    cancel: CancelToken = field(default_factory=CancelToken)

    def emit(self, event: dict[str, Any], final: bool = False) -> None:
        with self.cond:
            self.events.append(event)
            self.done = self.done or final
            self.cond.notify_all()


class NavService:
    def __init__(self, config: Config, store: Store, hub: TargetHub | None = None, *,
                 runner: Runner = parts.run_registration, plan_reader: PlanReader = parts.read_plan,
                 options_checker: Callable[[dict[str, Any]], None] = parts.check_options) -> None:
        self.config = config
        self.store = store
        self.hub = hub or TargetHub()
        self.runner = runner
        self.plan_reader = plan_reader
        self.options_checker = options_checker
        self._lock = threading.RLock()
        self._runs: dict[str, RunLog] = {}
        self._runs_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=config.registration.max_concurrent,
                                        thread_name_prefix="registration")
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Recover after a crash (interrupted registrations) and publish the targets that the
        store says are approved."""
        for reg_id in self.store.recover():
            log.warning("registration %s was running when the service stopped: marked interrupted", reg_id)
        self._republish()

    def stop(self) -> None:
        """Cancel running registrations (they end as interrupted) and stop the pool."""
        self._stopping.set()
        with self._runs_lock:
            runs = list(self._runs.values())
        for run in runs:
            run.cancel.cancel("the service is shutting down")
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.hub.close()

    @property
    def stopping(self) -> threading.Event:
        return self._stopping

    def _republish(self) -> None:
        with self._lock:
            self.hub.publish(snapshot_from_store(self.store))

    # -- cases ----------------------------------------------------------------------------
    def create_case(self, who: Identity, label: str) -> dict[str, Any]:
        label = label.strip()
        if len(label) > self.config.limits.max_label_chars:
            raise InputError(f"case label: expected at most {self.config.limits.max_label_chars} "
                             f"characters, got {len(label)}")
        case = self.store.create_case(label)
        self.store.audit(who.name, who.role, "case.create", case["case_id"], label=label)
        return case

    def list_cases(self) -> list[dict[str, Any]]:
        return self.store.list_cases()

    def get_case(self, case_id: str) -> dict[str, Any]:
        return self.store.get_case(case_id)

    # -- files ----------------------------------------------------------------------------
    def upload(self, who: Identity, header: dict[str, Any], chunks: Iterable[bytes]) -> StoredFile:
        """Receive a file: ``header`` has case_id, filename, size_bytes, sha256_hex; ``chunks``
        the content. The file is kept only if size and SHA-256 match the header."""
        case_id = header["case_id"]
        self.store.get_case(case_id)
        filename, size, sha = header["filename"], int(header["size_bytes"]), header["sha256_hex"].lower()
        if not _FILENAME.match(filename) or ".." in filename:
            raise InputError(f"upload: expected a plain file name such as mri.nii.gz, got {filename!r}")
        limit = self.config.limits.max_upload_bytes
        if size > limit:
            raise ResourceExhausted(f"upload {filename}: {size} bytes is over the limit of {limit} bytes")
        if size <= 0:
            raise InputError(f"upload {filename}: expected size_bytes > 0, got {size}")
        if not _SHA.match(sha):
            raise InputError(f"upload {filename}: expected sha256_hex as 64 hex digits, got {sha!r}")
        fh, tmp = self.store.new_temp_file()
        h = hashlib.sha256()
        received = 0
        try:
            with fh:
                for chunk in chunks:
                    received += len(chunk)
                    if received > size:
                        exc_cls = ResourceExhausted if received > limit else InputError
                        raise exc_cls(f"upload {filename}: received more than the declared {size} bytes")
                    h.update(chunk)
                    fh.write(chunk)
            if received != size:
                raise InputError(f"upload {filename}: expected {size} bytes, received {received}; send it again")
            if h.hexdigest() != sha:
                raise InputError(f"upload {filename}: SHA-256 mismatch (declared {sha}, received "
                                 f"{h.hexdigest()}); the file was corrupted in transit, send it again")
            stored = self.store.add_file(case_id, "upload", filename, tmp, sha)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.store.audit(who.name, who.role, "file.upload", case_id, stored.file_id,
                         filename=filename, size_bytes=size, sha256=sha)
        return stored

    def resolve_file(self, case_id: str, ref: FileRef | None, what: str, kind: str) -> StoredFile:
        """A stored copy of a server-side file (confined to the roots) or an uploaded file."""
        if ref is None or not ref[1]:
            raise InputError(f"{what}: expected a server path or an upload id, got nothing")
        source, value = ref
        if source == "upload_id":
            return self.store.get_file(value, case_id)
        path = confine(value, self.config.paths.roots, what)
        if path.is_dir():
            raise InputError(f"{what}: {value!r} is a folder; expected a single volume file (NIfTI, NRRD, MHA)")
        size = path.stat().st_size
        if size > self.config.limits.max_upload_bytes:
            raise ResourceExhausted(f"{what}: {path} has {size} bytes, over the limit of "
                                    f"{self.config.limits.max_upload_bytes} bytes")
        return self.store.copy_in(case_id, kind, path)

    # -- plans ----------------------------------------------------------------------------
    def load_plan(self, who: Identity, case_id: str, plan: FileRef | None, mri: FileRef | None,
                  labels: FileRef | None) -> dict[str, Any]:
        self.store.get_case(case_id)
        plan_f = self.resolve_file(case_id, plan, "plan", "plan")
        mri_f = self.resolve_file(case_id, mri, "MRI", "mri")
        labels_f = self.resolve_file(case_id, labels, "segmentation", "labels")
        trajectories = self.plan_reader(plan_f.path, mri_f.path, labels_f.path)
        if not trajectories:
            raise InputError(f"plan {plan_f.filename}: expected at least one trajectory, got none")
        with self._lock:
            record = self.store.add_plan(case_id, plan_f.file_id, mri_f.file_id, labels_f.file_id, trajectories)
            withdrawn = self.store.withdraw_case(case_id, f"a new plan {record['plan_id']} was loaded")
            if withdrawn:
                self._republish()
        self.store.audit(who.name, who.role, "plan.load", case_id, record["plan_id"],
                         plan_sha256=plan_f.sha256, mri_sha256=mri_f.sha256, labels_sha256=labels_f.sha256,
                         trajectories=[t["name"] for t in trajectories], withdrew_targets=withdrawn)
        return self.plan_view(record)

    def plan_view(self, plan: dict[str, Any]) -> dict[str, Any]:
        out = dict(plan)
        for key in ("plan_file", "mri_file", "labels_file"):
            out[key.replace("_file", "_sha256")] = self.store.get_file(plan[key]).sha256
        return out

    # -- registrations ----------------------------------------------------------------------
    def start_registration(self, who: Identity, case_id: str, ct: FileRef | None,
                           options: dict[str, str],
                           fluoro: list[tuple[FileRef | None, FileRef | None]] | None = None) -> dict[str, Any]:
        """Queue a registration of the case's plan to a CT (``ct``) or to fluoroscopy views (``fluoro``:
        (image, geometry or None) per view; the result's intraoperative frame is then the C-arm world)."""
        if self._stopping.is_set():
            raise PreconditionFailed("the service is shutting down; start the registration after restart")
        self.store.get_case(case_id)
        plan = self.store.latest_plan(case_id)
        if plan is None:
            raise PreconditionFailed(f"case {case_id} has no plan: load one first (navsvc case load-plan)")
        if fluoro:
            if ct is not None and ct[1]:
                raise InputError("expected either a CT or fluoroscopy views, got both")
            opts = parts.parse_options(options)
            parts.check_fluoro_options(opts)
            views = [(self.resolve_file(case_id, img, f"fluoroscopy view {k + 1} image", "fluoro"),
                      self.resolve_file(case_id, geo, f"fluoroscopy view {k + 1} geometry", "fluoro")
                      if geo is not None else None) for k, (img, geo) in enumerate(fluoro)]
            view_paths = tuple((i.path, g.path if g is not None else None) for i, g in views)
            parts.check_fluoro(view_paths)
            ct_f = views[0][0]
        else:
            opts = {**self.config.registration.options, **parts.parse_options(options)}
            self.options_checker(opts)
            ct_f = self.resolve_file(case_id, ct, "CT", "ct")
            parts.check_ct(ct_f.path)
            view_paths = ()
        with self._lock:
            reg = self.store.add_registration(case_id, plan["plan_id"], ct_f.file_id, opts)
            reg_id = reg["registration_id"]
            withdrawn = self.store.withdraw_case(case_id, f"a new registration {reg_id} was started")
            if withdrawn:
                self._republish()
            run = RunLog()
            with self._runs_lock:
                self._runs[reg_id] = run
            run.emit(_event(reg, "queued", 0.0, "waiting for a worker"))
        self.store.audit(who.name, who.role, "registration.start", case_id, reg_id,
                         ct_sha256=ct_f.sha256, options=opts, withdrew_targets=withdrawn,
                         **({"fluoro_views": len(view_paths)} if view_paths else {}))
        inp = parts.RegistrationInput(
            mri_path=self.store.get_file(plan["mri_file"]).path,
            labels_path=self.store.get_file(plan["labels_file"]).path,
            ct_path=ct_f.path, options=opts, trajectories=plan["trajectories"],
            plan_path=self.store.get_file(plan["plan_file"]).path, fluoro=view_paths,
        )
        self._pool.submit(self._work, reg_id, case_id, inp, run)
        return reg

    def _work(self, reg_id: str, case_id: str, inp: parts.RegistrationInput, run: RunLog) -> None:
        log.info("registration %s: started (case %s)", reg_id, case_id)
        tmp = self.store.temp_result_dir(case_id, reg_id)
        outcome: tuple[str, str] | None = None  # (state, error) unless succeeded
        try:
            run.cancel.check()
            self.store.set_registration_state(reg_id, "running")
            run.emit(_event(self.store.get_registration(reg_id), "start", 0.0, "registration started"))

            def progress(stage: str, fraction: float, message: str) -> None:
                run.emit({"registration_id": reg_id, "state": "running", "stage": stage,
                          "fraction": float(fraction), "message": message})

            out = self.runner(inp, tmp, progress, run.cancel)
            reg = self.store.finish_registration(reg_id, tmp, out.qa, out.T_ct_from_mri, out.targets_ct,
                                                 out.timings_s)
        except Cancelled as exc:
            outcome = ("interrupted" if self._stopping.is_set() else "cancelled", str(exc))
        except NavError as exc:
            outcome = ("failed", str(exc))
        except Exception as exc:  # the worker must always leave a final state
            log.exception("registration %s: internal error", reg_id)
            outcome = ("failed", f"internal error: {type(exc).__name__}: {exc}")
        try:
            if outcome is not None:
                shutil.rmtree(tmp, ignore_errors=True)  # before the final event: nothing partial left
                self._end(reg_id, case_id, run, *outcome)
            else:
                verdict = out.qa.get("verdict")
                log.info("registration %s: succeeded, QA %s", reg_id, verdict)
                self.store.audit(SYSTEM.name, SYSTEM.role, "registration.succeeded", case_id, reg_id,
                                 verdict=verdict, reasons=out.qa.get("reasons"))
                run.emit(_event(reg, "done", 1.0, f"QA {verdict}"), final=True)
        finally:
            with self._runs_lock:
                self._runs.pop(reg_id, None)

    def _end(self, reg_id: str, case_id: str, run: RunLog, state: str, error: str) -> None:
        log.warning("registration %s: %s: %s", reg_id, state, error)
        self.store.set_registration_state(reg_id, state, error)
        self.store.audit(SYSTEM.name, SYSTEM.role, f"registration.{state}", case_id, reg_id, error=error)
        run.emit(_event(self.store.get_registration(reg_id), "done", 1.0, error), final=True)

    def result_file(self, reg_id: str, name: str) -> tuple[Path | None, list[str], str]:
        """(path, available names, SHA-256) of a result file of a finished registration; path is
        None when ``name`` is empty (listing only). The file is checked against its hash."""
        reg = self.store.get_registration(reg_id)
        files: dict[str, str] = reg["result_files"] or {}
        if not files:
            raise PreconditionFailed(f"registration {reg_id} is {reg['state']} and has no result files")
        available = sorted(files)
        if not name:
            return None, available, ""
        if name not in files:
            raise NotFound(f"registration {reg_id} has no result file {name!r}; it has {available}")
        self.store.verify_result_files(reg_id)
        return self.store.data_dir / reg["result_relpath"] / name, available, files[name]

    def get_registration(self, reg_id: str) -> dict[str, Any]:
        return self.store.get_registration(reg_id)

    def cancel_registration(self, who: Identity, reg_id: str) -> dict[str, Any]:
        reg = self.store.get_registration(reg_id)
        with self._runs_lock:
            run = self._runs.get(reg_id)
        if run is None or reg["state"] in FINAL_STATES:
            raise PreconditionFailed(f"registration {reg_id} is {reg['state']}, not running; nothing to cancel")
        run.cancel.cancel(f"cancelled by {who.name}")
        self.store.audit(who.name, who.role, "registration.cancel", reg["case_id"], reg_id)
        return self.store.get_registration(reg_id)

    def watch(self, reg_id: str, is_active: Callable[[], bool], poll_s: float = 0.5) -> Iterator[dict[str, Any]]:
        """Every progress event of ``reg_id`` from the start, until its final event."""
        reg = self.store.get_registration(reg_id)
        with self._runs_lock:
            run = self._runs.get(reg_id)
        if run is None:  # finished (or from before a restart): one final event from the store
            yield _event(reg, "done" if reg["state"] in FINAL_STATES else reg["state"], 1.0,
                         reg["error"] or reg["state"])
            return
        sent = 0
        while True:
            with run.cond:
                if len(run.events) == sent and not self._stopping.is_set():
                    run.cond.wait(poll_s)
                new = run.events[sent:]
                done = run.done
            yield from new
            sent += len(new)
            if (done and sent == len(run.events)) or not is_active() or self._stopping.is_set():
                return

    # -- decisions (the interlock) ----------------------------------------------------------
    def approve(self, who: Identity, reg_id: str, override_reason: str) -> dict[str, Any]:
        if who.role != "surgeon":
            raise PermissionDenied(f"only a surgeon approves a registration; your role is {who.role}")
        with self._lock:
            reg = self.store.get_registration(reg_id)
            self._check_decidable(reg)
            verdict = (reg["qa"] or {}).get("verdict", "")
            if verdict == "FAIL":
                reasons = "; ".join((reg["qa"] or {}).get("reasons", [])) or "no reason given"
                raise PreconditionFailed(f"registration {reg_id} failed QA ({reasons}); a FAIL cannot be "
                                         "approved: fix the inputs and register again")
            if verdict == "WARN" and not override_reason.strip():
                raise InputError(f"registration {reg_id} has QA verdict WARN: approving it needs an "
                                 "override reason (--reason)")
            if verdict not in ("PASS", "WARN"):
                raise PreconditionFailed(f"registration {reg_id} has no QA verdict; it cannot be approved")
            self.store.approve(reg_id, who.name, override_reason.strip())
            self.store.audit(who.name, who.role, "registration.approve", reg["case_id"], reg_id,
                             verdict=verdict, override_reason=override_reason.strip())
            self._republish()
        return self.store.get_registration(reg_id)

    def reject(self, who: Identity, reg_id: str, reason: str) -> dict[str, Any]:
        if who.role != "surgeon":
            raise PermissionDenied(f"only a surgeon rejects a registration; your role is {who.role}")
        with self._lock:
            reg = self.store.get_registration(reg_id)
            if reg["state"] != "succeeded":
                raise PreconditionFailed(f"registration {reg_id} is {reg['state']}; only a finished "
                                         "registration can be rejected")
            withdrawn = self.store.reject(reg_id, who.name, reason.strip())
            self.store.audit(who.name, who.role, "registration.reject", reg["case_id"], reg_id,
                             reason=reason.strip(), withdrew_targets=withdrawn)
            if withdrawn:
                self._republish()
        return self.store.get_registration(reg_id)

    def _check_decidable(self, reg: dict[str, Any]) -> None:
        reg_id = reg["registration_id"]
        if reg["state"] != "succeeded":
            raise PreconditionFailed(f"registration {reg_id} is {reg['state']}; only a succeeded "
                                     "registration can be approved")
        if reg["decision"] == "rejected":
            raise PreconditionFailed(f"registration {reg_id} was rejected; register again")
        latest = self.store.latest_registration(reg["case_id"])
        if latest is not None and latest["registration_id"] != reg_id:
            raise PreconditionFailed(f"registration {reg_id} is superseded by {latest['registration_id']} "
                                     "of the same case; approve the latest one")
        plan = self.store.latest_plan(reg["case_id"])
        if plan is None or plan["plan_id"] != reg["plan_id"]:
            raise PreconditionFailed(f"registration {reg_id} was made for an older plan; register again")

    # -- calibration ------------------------------------------------------------------------
    def set_calibration(self, who: Identity, case_id: str, matrix: list[float] | None,
                        fiducials: list[tuple[str, list[float], list[float]]] | None) -> dict[str, Any]:
        """Record T_device_from_ct for a case, given as 16 row-major values or computed from
        paired fiducials (name, ct_lps, device); the FRE is reported."""
        self.store.get_case(case_id)
        if matrix is not None:
            T = _rigid_matrix(matrix)
            fre, n = 0.0, 0
        elif fiducials:
            if len(fiducials) < 3:
                raise InputError(f"calibration: expected at least 3 fiducial pairs, got {len(fiducials)}")
            names = [f[0] for f in fiducials]
            if len(set(names)) != len(names):
                raise InputError(f"calibration: fiducial names must be unique, got {names}")
            T, fre = parts.calibrate(np.array([f[1] for f in fiducials], float),
                                     np.array([f[2] for f in fiducials], float), names)
            n = len(fiducials)
        else:
            raise InputError("calibration: expected a 4x4 matrix or fiducial pairs, got neither")
        with self._lock:
            cal = self.store.add_calibration(case_id, T, fre, n)
            self.store.audit(who.name, who.role, "calibration.set", case_id, cal["calibration_id"],
                             fre_mm_rms=fre, fiducial_count=n)
            if self.store.active()["case_id"] == case_id:
                self._republish()
        return cal

    # -- audit ------------------------------------------------------------------------------
    def list_audit(self, case_id: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
        if limit < 0:
            raise InputError(f"limit: expected >= 0, got {limit}")
        return self.store.list_audit(case_id, after_seq, min(limit or 1000, 10000))


def _rigid_matrix(values: list[float]) -> list[list[float]]:
    if len(values) != 16:
        raise InputError(f"T_device_from_ct: expected 16 values (row-major 4x4), got {len(values)}")
    m = np.asarray(values, float).reshape(4, 4)
    if not np.all(np.isfinite(m)):
        raise InputError("T_device_from_ct: the matrix holds NaN or infinite values")
    from navsvc.transforms import RigidTransform

    try:
        RigidTransform(m, "device", "ct")
    except TransformError as exc:
        raise InputError(f"T_device_from_ct: expected a rigid transform: {exc}") from exc
    return m.tolist()


def _event(reg: dict[str, Any], stage: str, fraction: float, message: str) -> dict[str, Any]:
    ev: dict[str, Any] = {"registration_id": reg["registration_id"], "state": reg["state"], "stage": stage,
                          "fraction": fraction, "message": message, "error": reg.get("error") or ""}
    if reg.get("qa"):
        ev["qa"] = reg["qa"]
    return ev
