"""SQLite persistence of cases, files, plans, registrations, approvals, calibrations, audit.

Layout of the data directory::

    navsvc.sqlite3                      the database (WAL journal, synchronous=FULL)
    tmp/                                partial files (uploads in progress); emptied at start
    cases/<case_id>/files/<file_id>/<filename>
    cases/<case_id>/registrations/<registration_id>/   result files (transform, QA, picture)

Every file is written to a temporary name, fsynced and renamed into place; its row (with
SHA-256 and size) is inserted only after the rename, so a file a row points to is always
complete. A crash leaves at most an orphan file with no row, never a row with half a file.

Thread safety: one connection shared under one lock; every public method is one
transaction. Registration states: queued, running, succeeded, failed, cancelled,
interrupted. Decisions: pending, approved, rejected. The single ``active`` row names the
case whose approved registration may stream targets (``registration_id`` empty = withdrawn).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from navsvc.errors import NotFound, PreconditionFailed
from navsvc.fileio import sha256_file

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY, label TEXT NOT NULL, created_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    file_id TEXT PRIMARY KEY, case_id TEXT NOT NULL REFERENCES cases(case_id),
    kind TEXT NOT NULL, filename TEXT NOT NULL, relpath TEXT NOT NULL,
    size_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, created_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS plans (
    plan_id TEXT PRIMARY KEY, case_id TEXT NOT NULL REFERENCES cases(case_id),
    plan_file TEXT NOT NULL REFERENCES files(file_id),
    mri_file TEXT NOT NULL REFERENCES files(file_id),
    labels_file TEXT NOT NULL REFERENCES files(file_id),
    trajectories TEXT NOT NULL, created_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS registrations (
    registration_id TEXT PRIMARY KEY, case_id TEXT NOT NULL REFERENCES cases(case_id),
    plan_id TEXT NOT NULL REFERENCES plans(plan_id), ct_file TEXT NOT NULL REFERENCES files(file_id),
    options TEXT NOT NULL, state TEXT NOT NULL, decision TEXT NOT NULL DEFAULT 'pending',
    qa TEXT, T_ct_from_mri TEXT, targets_ct TEXT, result_relpath TEXT, result_files TEXT, error TEXT NOT NULL DEFAULT '',
    timings_s TEXT, created_s REAL NOT NULL, finished_s REAL,
    decided_by TEXT NOT NULL DEFAULT '', decision_reason TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS calibrations (
    calibration_id TEXT PRIMARY KEY, case_id TEXT NOT NULL REFERENCES cases(case_id),
    T_device_from_ct TEXT NOT NULL, fre_mm_rms REAL NOT NULL, fiducial_count INTEGER NOT NULL,
    created_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS active (
    id INTEGER PRIMARY KEY CHECK (id = 1), case_id TEXT NOT NULL DEFAULT '',
    registration_id TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
    updated_s REAL NOT NULL DEFAULT 0);
INSERT OR IGNORE INTO active (id) VALUES (1);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, timestamp_s REAL NOT NULL, actor TEXT NOT NULL,
    role TEXT NOT NULL, action TEXT NOT NULL, case_id TEXT NOT NULL DEFAULT '',
    subject_id TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS registrations_case ON registrations(case_id, created_s);
CREATE INDEX IF NOT EXISTS audit_case ON audit(case_id, seq);
"""

CHUNK = 1024 * 1024


def new_id(prefix: str) -> str:
    """A fresh identifier such as ``case-3f2a9c1d0b7e``."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class StoredFile:
    file_id: str
    case_id: str
    kind: str
    filename: str
    path: Path
    size_bytes: int
    sha256: str


class Store:
    """The persistent state of one service instance, in ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = self.data_dir / "tmp"
        shutil.rmtree(self.tmp_dir, ignore_errors=True)  # partial uploads of a previous run
        self.tmp_dir.mkdir()
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.data_dir / "navsvc.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)  # idempotent; executescript commits on its own
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # -- recovery -------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Mark registrations that were queued or running when the process died as
        ``interrupted``; remove their partial result folders. Returns their ids."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT registration_id, case_id FROM registrations WHERE state IN ('queued','running')"
            ).fetchall()
            for row in rows:
                db.execute(
                    "UPDATE registrations SET state='interrupted', finished_s=?, "
                    "error='the service stopped while this registration ran; start it again' "
                    "WHERE registration_id=?",
                    (time.time(), row["registration_id"]),
                )
                db.execute(
                    "INSERT INTO audit (timestamp_s, actor, role, action, case_id, subject_id, detail) "
                    "VALUES (?, 'navsvc', 'system', 'registration.interrupted', ?, ?, '{}')",
                    (time.time(), row["case_id"], row["registration_id"]),
                )
        for case_dir in (self.data_dir / "cases").glob("*/registrations"):
            for partial in case_dir.glob(".tmp-*"):
                shutil.rmtree(partial, ignore_errors=True)
        return [r["registration_id"] for r in rows]

    # -- cases ------------------------------------------------------------------------
    def create_case(self, label: str) -> dict[str, Any]:
        case_id = new_id("case")
        with self._tx() as db:
            db.execute("INSERT INTO cases VALUES (?, ?, ?)", (case_id, label, time.time()))
        return self.get_case(case_id)

    def get_case(self, case_id: str) -> dict[str, Any]:
        row = self._one("SELECT * FROM cases WHERE case_id=?", (case_id,))
        if row is None:
            raise NotFound(f"unknown case id {case_id!r}; list cases with `navsvc case status`")
        case = dict(row)
        plan = self._one(
            "SELECT plan_id FROM plans WHERE case_id=? ORDER BY created_s DESC, rowid DESC LIMIT 1", (case_id,)
        )
        reg = self.latest_registration(case_id)
        cal = self.latest_calibration(case_id)
        active = self.active()
        case["plan_id"] = plan["plan_id"] if plan else ""
        case["registration_id"] = reg["registration_id"] if reg else ""
        case["calibration_id"] = cal["calibration_id"] if cal else ""
        case["active"] = active["case_id"] == case_id
        case["approved_registration_id"] = active["registration_id"] if case["active"] else ""
        return case

    def list_cases(self) -> list[dict[str, Any]]:
        return [self.get_case(r["case_id"]) for r in self._all("SELECT case_id FROM cases ORDER BY created_s, rowid")]

    # -- files ------------------------------------------------------------------------
    def new_temp_file(self) -> tuple[BinaryIO, Path]:
        """An open temporary file in the data directory (for streaming uploads)."""
        path = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        return open(path, "wb"), path  # noqa: SIM115 -- caller closes

    def add_file(self, case_id: str, kind: str, filename: str, temp_path: Path,
                 sha256: str | None = None) -> StoredFile:
        """Move a complete temporary file into the case folder and record it.

        ``filename`` must be a bare name (checked by the caller). The SHA-256 is computed
        here unless given (the upload already hashed it while receiving).
        """
        self.get_case(case_id)
        file_id = new_id("file")
        rel = Path("cases") / case_id / "files" / file_id / filename
        dst = self.data_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(temp_path, "rb") as fh:
            os.fsync(fh.fileno())
        digest = sha256 or sha256_file(temp_path)
        size = temp_path.stat().st_size
        os.replace(temp_path, dst)
        _fsync_dir(dst.parent)
        with self._tx() as db:
            db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (file_id, case_id, kind, filename, str(rel), size, digest, time.time()),
            )
        return self.get_file(file_id)

    def copy_in(self, case_id: str, kind: str, src: Path) -> StoredFile:
        """Copy a server-side file (already confined to the roots) into the case."""
        fh, tmp = self.new_temp_file()
        h = hashlib.sha256()
        with fh, open(src, "rb") as inp:
            for block in iter(lambda: inp.read(CHUNK), b""):
                h.update(block)
                fh.write(block)
        return self.add_file(case_id, kind, src.name, tmp, h.hexdigest())

    def get_file(self, file_id: str, case_id: str | None = None) -> StoredFile:
        row = self._one("SELECT * FROM files WHERE file_id=?", (file_id,))
        if row is None or (case_id is not None and row["case_id"] != case_id):
            raise NotFound(f"unknown upload id {file_id!r}" + (f" in case {case_id}" if case_id else ""))
        return StoredFile(row["file_id"], row["case_id"], row["kind"], row["filename"],
                          self.data_dir / row["relpath"], row["size_bytes"], row["sha256"])

    # -- plans ------------------------------------------------------------------------
    def add_plan(self, case_id: str, plan_file: str, mri_file: str, labels_file: str,
                 trajectories: list[dict[str, Any]]) -> dict[str, Any]:
        """Record a validated plan. ``trajectories``: dicts with name, entry_lps, target_lps
        (MRI frame, LPS mm), diameter_mm, depth_mm."""
        plan_id = new_id("plan")
        with self._tx() as db:
            db.execute("INSERT INTO plans VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (plan_id, case_id, plan_file, mri_file, labels_file, json.dumps(trajectories), time.time()))
        return self.get_plan(plan_id)

    def get_plan(self, plan_id: str) -> dict[str, Any]:
        row = self._one("SELECT * FROM plans WHERE plan_id=?", (plan_id,))
        if row is None:
            raise NotFound(f"unknown plan id {plan_id!r}")
        plan = dict(row)
        plan["trajectories"] = json.loads(row["trajectories"])
        return plan

    def latest_plan(self, case_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT plan_id FROM plans WHERE case_id=? ORDER BY created_s DESC, rowid DESC LIMIT 1",
                        (case_id,))
        return self.get_plan(row["plan_id"]) if row else None

    # -- registrations ----------------------------------------------------------------
    def add_registration(self, case_id: str, plan_id: str, ct_file: str, options: dict[str, Any]) -> dict[str, Any]:
        """Record a new queued registration, refusing if the case already has one queued or running."""
        reg_id = new_id("reg")
        with self._tx() as db:
            busy = db.execute(
                "SELECT registration_id FROM registrations WHERE case_id=? AND state IN ('queued','running')",
                (case_id,),
            ).fetchone()
            if busy:
                raise PreconditionFailed(
                    f"case {case_id} already has registration {busy['registration_id']} running; "
                    "wait for it or cancel it first"
                )
            db.execute(
                "INSERT INTO registrations (registration_id, case_id, plan_id, ct_file, options, state, created_s) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                (reg_id, case_id, plan_id, ct_file, json.dumps(options), time.time()),
            )
        return self.get_registration(reg_id)

    def get_registration(self, registration_id: str) -> dict[str, Any]:
        row = self._one("SELECT * FROM registrations WHERE registration_id=?", (registration_id,))
        if row is None:
            raise NotFound(f"unknown registration id {registration_id!r}")
        reg = dict(row)
        for key in ("qa", "T_ct_from_mri", "targets_ct", "timings_s", "options", "result_files"):
            reg[key] = json.loads(row[key]) if row[key] else None
        return reg

    def latest_registration(self, case_id: str) -> dict[str, Any] | None:
        row = self._one(
            "SELECT registration_id FROM registrations WHERE case_id=? ORDER BY created_s DESC, rowid DESC LIMIT 1",
            (case_id,),
        )
        return self.get_registration(row["registration_id"]) if row else None

    def set_registration_state(self, registration_id: str, state: str, error: str = "") -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE registrations SET state=?, error=?, finished_s=CASE WHEN ? IN "
                "('failed','cancelled','interrupted') THEN ? ELSE finished_s END WHERE registration_id=?",
                (state, error, state, time.time(), registration_id),
            )

    def result_dir(self, case_id: str, registration_id: str) -> Path:
        return self.data_dir / "cases" / case_id / "registrations" / registration_id

    def temp_result_dir(self, case_id: str, registration_id: str) -> Path:
        """A fresh folder to write results into before :meth:`finish_registration` renames it."""
        d = self.data_dir / "cases" / case_id / "registrations" / f".tmp-{registration_id}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def finish_registration(self, registration_id: str, temp_dir: Path, qa: dict[str, Any],
                            T_ct_from_mri: list[list[float]] | None, targets_ct: list[dict[str, Any]],
                            timings_s: dict[str, float]) -> dict[str, Any]:
        """Rename the complete result folder into place, hash its files, mark the row succeeded.

        ``T_ct_from_mri``: the 4x4 matrix when the result is rigid, else None (the transform
        file in the folder is the reference); ``targets_ct``: the plan's trajectories mapped
        into the CT frame (LPS mm) by the full transform."""
        reg = self.get_registration(registration_id)
        final = self.result_dir(reg["case_id"], registration_id)
        for f in temp_dir.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        os.replace(temp_dir, final)
        _fsync_dir(final.parent)
        hashes = {str(f.relative_to(final)): sha256_file(f) for f in sorted(final.rglob("*")) if f.is_file()}
        with self._tx() as db:
            db.execute(
                "UPDATE registrations SET state='succeeded', qa=?, T_ct_from_mri=?, targets_ct=?, "
                "result_relpath=?, result_files=?, timings_s=?, finished_s=? WHERE registration_id=?",
                (json.dumps(qa), json.dumps(T_ct_from_mri) if T_ct_from_mri is not None else None,
                 json.dumps(targets_ct), str(final.relative_to(self.data_dir)),
                 json.dumps(hashes), json.dumps(timings_s), time.time(), registration_id),
            )
        return self.get_registration(registration_id)

    def verify_result_files(self, registration_id: str) -> None:
        """Raise :class:`PreconditionFailed` if a result file is missing or its hash changed."""
        reg = self.get_registration(registration_id)
        if not reg["result_relpath"]:
            raise PreconditionFailed(f"registration {registration_id} has no stored result")
        base = self.data_dir / reg["result_relpath"]
        for rel, digest in (reg["result_files"] or {}).items():
            f = base / rel
            if not f.is_file() or sha256_file(f) != digest:
                raise PreconditionFailed(
                    f"result file {f} of registration {registration_id} is missing or was modified "
                    "(SHA-256 mismatch); run the registration again"
                )

    # -- decisions and the active case --------------------------------------------------
    def approve(self, registration_id: str, actor: str, reason: str) -> None:
        """Mark approved and make this case active with this registration, in one transaction."""
        reg = self.get_registration(registration_id)
        with self._tx() as db:
            db.execute(
                "UPDATE registrations SET decision='approved', decided_by=?, decision_reason=? WHERE registration_id=?",
                (actor, reason, registration_id),
            )
            db.execute("UPDATE active SET case_id=?, registration_id=?, reason='', updated_s=? WHERE id=1",
                       (reg["case_id"], registration_id, time.time()))

    def reject(self, registration_id: str, actor: str, reason: str) -> bool:
        """Mark rejected; withdraw it if it was the streaming one. Returns whether it was withdrawn."""
        with self._tx() as db:
            db.execute(
                "UPDATE registrations SET decision='rejected', decided_by=?, decision_reason=? WHERE registration_id=?",
                (actor, reason, registration_id),
            )
            cur = db.execute(
                "UPDATE active SET registration_id='', reason=?, updated_s=? WHERE id=1 AND registration_id=?",
                (f"registration {registration_id} rejected: {reason}", time.time(), registration_id),
            )
            return cur.rowcount > 0

    def withdraw_case(self, case_id: str, reason: str) -> bool:
        """Withdraw the targets if ``case_id`` is the active case. Returns whether anything changed."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE active SET registration_id='', reason=?, updated_s=? "
                "WHERE id=1 AND case_id=? AND registration_id<>''",
                (reason, time.time(), case_id),
            )
            return cur.rowcount > 0

    def active(self) -> dict[str, Any]:
        row = self._one("SELECT case_id, registration_id, reason, updated_s FROM active WHERE id=1", ())
        assert row is not None  # inserted with the schema
        return dict(row)

    # -- calibrations -----------------------------------------------------------------
    def add_calibration(self, case_id: str, T_device_from_ct: list[list[float]], fre_mm_rms: float,
                        fiducial_count: int) -> dict[str, Any]:
        cal_id = new_id("cal")
        with self._tx() as db:
            db.execute("INSERT INTO calibrations VALUES (?, ?, ?, ?, ?, ?)",
                       (cal_id, case_id, json.dumps(T_device_from_ct), fre_mm_rms, fiducial_count, time.time()))
        return self.get_calibration(cal_id)

    def get_calibration(self, calibration_id: str) -> dict[str, Any]:
        row = self._one("SELECT * FROM calibrations WHERE calibration_id=?", (calibration_id,))
        if row is None:
            raise NotFound(f"unknown calibration id {calibration_id!r}")
        cal = dict(row)
        cal["T_device_from_ct"] = json.loads(row["T_device_from_ct"])
        return cal

    def latest_calibration(self, case_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT calibration_id FROM calibrations WHERE case_id=? "
                        "ORDER BY created_s DESC, rowid DESC LIMIT 1", (case_id,))
        return self.get_calibration(row["calibration_id"]) if row else None

    # -- audit ------------------------------------------------------------------------
    def audit(self, actor: str, role: str, action: str, case_id: str = "", subject_id: str = "",
              **detail: Any) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO audit (timestamp_s, actor, role, action, case_id, subject_id, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), actor, role, action, case_id, subject_id, json.dumps(detail, default=str)),
            )

    def list_audit(self, case_id: str = "", after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        sql = "SELECT * FROM audit WHERE seq > ?"
        args: list[Any] = [after_seq]
        if case_id:
            sql += " AND case_id = ?"
            args.append(case_id)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        return [dict(r) for r in self._all(sql, tuple(args))]
