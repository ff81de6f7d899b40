"""The CLI skeleton: help, version, error mapping, not-built commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from navsvc import __version__, cli
from navsvc.errors import InvalidImageError, NavError, PlanError, exit_code_for


def test_help_lists_command_groups(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "case", "plan", "register", "serve", "listen", "phantom", "validate", "bench"):
        assert command in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_exit_codes_are_specific_and_non_zero():
    assert exit_code_for(InvalidImageError("x")) == 4
    assert exit_code_for(PlanError("x")) == 6
    assert exit_code_for(NavError("x")) == 1


def test_nav_error_becomes_one_line_and_exit_code(tmp_path):
    missing = tmp_path / "none.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "navsvc.cli", "inspect", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("navsvc: error:")
    assert "Traceback" not in proc.stderr


def test_debug_shows_traceback(monkeypatch, capsys):
    def boom(args):
        raise InvalidImageError("mri.nii.gz: file not found")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser.set_defaults(func=boom)
    assert cli.main(["--debug"]) == 4
    err = capsys.readouterr().err
    assert "Traceback" in err and "navsvc: error: mri.nii.gz: file not found" in err


def test_inspect_describes_files(tmp_path, oblique_image, capsys):
    from navsvc import imaging
    from navsvc.markups import fiducials, write_markups
    from navsvc.transforms import RigidTransform, write_transform

    img = imaging.write_image(tmp_path / "mri.nii.gz", oblique_image)
    tfm = write_transform(tmp_path / "T_ct_from_mri.h5", RigidTransform.from_euler_deg((0, 0, 10), (1, 2, 3), "ct", "mri"))
    mrk = write_markups(tmp_path / "p.mrk.json", [fiducials("L", {"head_centre": (1.0, 2.0, 3.0)})], "RAS")
    assert cli.main(["inspect", str(img), str(tfm), str(mrk)]) == 0
    out = capsys.readouterr().out
    assert "23x17x11 voxels" in out and "T_ct_from_mri(angle=10.000 deg" in out and "head_centre" in out


def test_not_built_command_says_so(capsys):
    parser = cli.build_parser()
    from navsvc.commands import not_built

    parser.set_defaults(func=not_built("fluoro", 8, "fluoroscopy"))
    import argparse

    with pytest.raises(NavError, match="not built yet"):
        parser.get_default("func")(argparse.Namespace())
