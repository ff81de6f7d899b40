"""The interlock's output: what may be streamed now, and the hub that fans it out.

:func:`snapshot_from_store` is the single rule deciding what targets exist: only the
approved registration of the active case, read back from the store (whose result files are
hash-checked), gives targets; everything else is an explicit ``no_target`` state with the
reason. :class:`TargetHub` holds the current snapshot and wakes gRPC subscribers; sinks such
as the OpenIGTLink server are called on every change (outside the hub's lock).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from navsvc.errors import NavError
from navsvc.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetCT:
    """One trajectory in the CT frame (LPS mm)."""

    name: str
    entry_lps: tuple[float, float, float]
    target_lps: tuple[float, float, float]
    diameter_mm: float


@dataclass(frozen=True)
class TargetSnapshot:
    """What may be streamed now. ``targets`` is empty unless ``state == "approved"``."""

    state: str  # "approved" | "no_target"
    case_id: str = ""
    registration_id: str = ""
    qa_verdict: str = ""
    targets: tuple[TargetCT, ...] = ()
    reason: str = ""
    T_device_from_ct: tuple[tuple[float, ...], ...] | None = None
    timestamp_s: float = field(default_factory=time.time)

    @classmethod
    def no_target(cls, reason: str, case_id: str = "") -> TargetSnapshot:
        return cls(state="no_target", case_id=case_id, reason=reason)

    def in_device(self, target: TargetCT) -> tuple[np.ndarray, np.ndarray] | None:
        """(entry, target) of ``target`` in the device frame (mm) via T_device_from_ct, or None
        without a calibration."""
        if self.T_device_from_ct is None:
            return None
        T = np.asarray(self.T_device_from_ct, dtype=float)
        pts = np.array([target.entry_lps, target.target_lps], dtype=float) @ T[:3, :3].T + T[:3, 3]
        return pts[0], pts[1]


def targets_ct_from_trajectories(trajectories: list[dict], T_ct_from_mri) -> list[dict]:  # type: ignore[type-arg,no-untyped-def]
    """Map plan trajectories (MRI frame, LPS mm) into the CT frame with ``T_ct_from_mri``
    (any navsvc transform with ``.apply(points_n3)``). Returns dicts with name, entry_lps,
    target_lps (CT frame, LPS mm) and diameter_mm."""
    if not trajectories:
        return []
    pts_mri = np.array([[*t["entry_lps"]] for t in trajectories] + [[*t["target_lps"]] for t in trajectories],
                       dtype=float)
    pts_ct = np.asarray(T_ct_from_mri.apply(pts_mri), dtype=float)
    n = len(trajectories)
    return [
        {"name": t["name"], "entry_lps": pts_ct[i].tolist(), "target_lps": pts_ct[n + i].tolist(),
         "diameter_mm": float(t["diameter_mm"])}
        for i, t in enumerate(trajectories)
    ]


def snapshot_from_store(store: Store) -> TargetSnapshot:
    """The interlock rule: targets of the approved registration of the active case, or why not."""
    active = store.active()
    case_id, reg_id = active["case_id"], active["registration_id"]
    if not case_id:
        return TargetSnapshot.no_target("no case is active: approve a registration to stream targets")
    if not reg_id:
        return TargetSnapshot(state="no_target", case_id=case_id,
                              reason=active["reason"] or "no approved registration",
                              timestamp_s=float(active["updated_s"]) or time.time())
    try:
        reg = store.get_registration(reg_id)
        store.verify_result_files(reg_id)
    except NavError as exc:
        log.error("withholding targets of %s: %s", reg_id, exc)
        return TargetSnapshot.no_target(str(exc), case_id)
    qa = reg["qa"] or {}
    if reg["state"] != "succeeded" or reg["decision"] != "approved" or qa.get("verdict") not in ("PASS", "WARN"):
        return TargetSnapshot.no_target(f"registration {reg_id} is not an approved PASS/WARN result", case_id)
    cal = store.latest_calibration(case_id)
    targets = tuple(
        TargetCT(t["name"], tuple(t["entry_lps"]), tuple(t["target_lps"]), float(t["diameter_mm"]))
        for t in (reg["targets_ct"] or [])
    )
    return TargetSnapshot(
        state="approved", case_id=case_id, registration_id=reg_id, qa_verdict=qa["verdict"],
        targets=targets, reason=reg["decision_reason"] if qa["verdict"] == "WARN" else "",
        T_device_from_ct=tuple(tuple(r) for r in cal["T_device_from_ct"]) if cal else None,
        timestamp_s=float(reg["finished_s"] or time.time()),
    )


Sink = Callable[[TargetSnapshot], None]


class TargetHub:
    """The current snapshot with a version counter; gRPC subscribers wait on it, and one
    sender thread hands every new snapshot to the sinks (OpenIGTLink) outside any lock, so a
    publisher never blocks on a socket. Sinks always get the latest snapshot (coalesced)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._snapshot = TargetSnapshot.no_target("the service is starting")
        self._version = 0
        self._closed = False
        self._sinks: list[Sink] = []
        self._thread: threading.Thread | None = None

    def add_sink(self, sink: Sink) -> None:
        """Register a sink; call before :meth:`start_sinks`."""
        self._sinks.append(sink)

    def start_sinks(self) -> None:
        self._thread = threading.Thread(target=self._send_loop, name="target-sinks", daemon=True)
        self._thread.start()

    def _send_loop(self) -> None:
        sent = -1
        while True:
            with self._cond:
                while self._version == sent and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                snapshot, sent = self._snapshot, self._version
            for sink in self._sinks:
                try:
                    sink(snapshot)
                except Exception:  # a failing sink must not stop the others
                    log.exception("target sink %r failed", sink)

    def publish(self, snapshot: TargetSnapshot) -> None:
        with self._cond:
            self._snapshot = snapshot
            self._version += 1
            self._cond.notify_all()
        log.info("targets: %s case=%s registration=%s n=%d %s", snapshot.state, snapshot.case_id,
                 snapshot.registration_id, len(snapshot.targets), snapshot.reason)

    def current(self) -> tuple[TargetSnapshot, int]:
        with self._cond:
            return self._snapshot, self._version

    def wait(self, after_version: int, timeout_s: float) -> tuple[TargetSnapshot, int]:
        """Wait until the version passes ``after_version``, the hub closes, or the timeout."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != after_version or self._closed, timeout_s)
            return self._snapshot, self._version

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def closed(self) -> bool:
        return self._closed
