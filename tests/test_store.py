"""The SQLite store: records, atomic files with hashes, recovery, the active-case interlock rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from navsvc.errors import NotFound, PreconditionFailed
from navsvc.store import Store, sha256_file

TRAJ = [{"name": "Drill1", "entry_lps": [0, 0, 0], "target_lps": [1, 2, 3], "diameter_mm": 3.0, "depth_mm": 3.7}]


def _file(store: Store, case_id: str, content: bytes, name: str = "x.nii.gz"):
    fh, tmp = store.new_temp_file()
    with fh:
        fh.write(content)
    return store.add_file(case_id, "upload", name, tmp)


def _plan(store: Store, case_id: str) -> str:
    f = _file(store, case_id, b"content")
    return store.add_plan(case_id, f.file_id, f.file_id, f.file_id, TRAJ)["plan_id"]


def test_wal_and_full_sync(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_files_are_hashed_after_rename_and_survive_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path)
    case_id = store.create_case("a")["case_id"]
    f = _file(store, case_id, b"hello volume")
    assert f.path.read_bytes() == b"hello volume" and f.size_bytes == 12
    import hashlib

    assert f.sha256 == sha256_file(f.path) == hashlib.sha256(b"hello volume").hexdigest()
    assert not list(store.tmp_dir.iterdir())
    with pytest.raises(NotFound):
        store.get_file(f.file_id, case_id="case-other")
    store.close()
    again = Store(tmp_path)
    assert again.get_file(f.file_id).sha256 == f.sha256
    assert again.get_case(case_id)["label"] == "a"
    again.close()


def test_partial_upload_is_discarded_on_restart(tmp_path: Path) -> None:
    store = Store(tmp_path)
    fh, tmp = store.new_temp_file()
    fh.write(b"half")
    fh.close()
    store.close()
    Store(tmp_path).close()
    assert not tmp.exists()


def test_one_registration_per_case_and_recovery(tmp_path: Path) -> None:
    store = Store(tmp_path)
    case_id = store.create_case("a")["case_id"]
    plan_id = _plan(store, case_id)
    ct = _file(store, case_id, b"ct")
    reg = store.add_registration(case_id, plan_id, ct.file_id, {})
    with pytest.raises(PreconditionFailed, match="already has registration"):
        store.add_registration(case_id, plan_id, ct.file_id, {})
    store.set_registration_state(reg["registration_id"], "running")
    partial = store.temp_result_dir(case_id, reg["registration_id"])
    (partial / "T_ct_from_mri.h5").write_bytes(b"half written")
    store.close()
    store = Store(tmp_path)
    assert store.recover() == [reg["registration_id"]]
    got = store.get_registration(reg["registration_id"])
    assert got["state"] == "interrupted" and "start it again" in got["error"] and got["finished_s"]
    assert not partial.exists()
    assert store.list_audit(case_id)[-1]["action"] == "registration.interrupted"
    # a new registration is allowed again
    store.add_registration(case_id, plan_id, ct.file_id, {})
    store.close()


def test_finish_approve_reject_and_withdraw(tmp_path: Path) -> None:
    store = Store(tmp_path)
    case_id = store.create_case("a")["case_id"]
    plan_id = _plan(store, case_id)
    ct = _file(store, case_id, b"ct")
    reg_id = store.add_registration(case_id, plan_id, ct.file_id, {})["registration_id"]
    tmp = store.temp_result_dir(case_id, reg_id)
    (tmp / "qa.json").write_text("{}")
    reg = store.finish_registration(reg_id, tmp, {"verdict": "PASS"}, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                                      [0, 0, 0, 1]], TRAJ, {"total": 1.0})
    assert reg["state"] == "succeeded" and reg["result_files"] == {"qa.json": sha256_file(
        store.result_dir(case_id, reg_id) / "qa.json")}
    store.verify_result_files(reg_id)
    store.approve(reg_id, "dr a", "")
    assert store.active() | {"updated_s": 0} == {"case_id": case_id, "registration_id": reg_id, "reason": "",
                                                 "updated_s": 0}
    assert store.get_case(case_id)["approved_registration_id"] == reg_id
    assert store.withdraw_case("case-other", "x") is False
    assert store.withdraw_case(case_id, "new plan") is True
    assert store.active()["registration_id"] == "" and store.active()["reason"] == "new plan"
    store.approve(reg_id, "dr a", "")
    assert store.reject(reg_id, "dr b", "wrong side") is True
    assert "wrong side" in store.active()["reason"]
    assert store.get_registration(reg_id)["decision"] == "rejected"
    (store.result_dir(case_id, reg_id) / "qa.json").write_text('{"tampered": 1}')
    with pytest.raises(PreconditionFailed, match="SHA-256"):
        store.verify_result_files(reg_id)
    store.close()


def test_audit_filter_and_paging(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for i in range(5):
        store.audit("u", "technician", "x", "case-a" if i % 2 else "case-b", f"s{i}", i=i)
    everything = store.list_audit()
    assert [e["subject_id"] for e in everything] == ["s0", "s1", "s2", "s3", "s4"]
    assert [e["subject_id"] for e in store.list_audit("case-a")] == ["s1", "s3"]
    assert [e["subject_id"] for e in store.list_audit(after_seq=everything[2]["seq"], limit=1)] == ["s3"]
    store.close()
    # the audit log is append-only through the API; the file is a plain SQLite database
    db = sqlite3.connect(tmp_path / "navsvc.sqlite3")
    assert db.execute("SELECT count(*) FROM audit").fetchone()[0] == 5
    db.close()
