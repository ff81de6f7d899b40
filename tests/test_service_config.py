"""Service configuration: defaults, TOML parsing, strict keys, path resolution, path confinement."""

from __future__ import annotations

from pathlib import Path

import pytest

from navsvc.config import Config, load_config
from navsvc.errors import ConfigError, InputError, PermissionDenied
from navsvc.server.paths import confine


def test_embedded_defaults_are_local_and_safe() -> None:
    cfg = Config()
    assert cfg.server.host == "127.0.0.1" and cfg.server.port == 50051
    assert cfg.igtl.enabled and cfg.igtl.port == 18944 and cfg.igtl.allow == ("127.0.0.1", "::1")
    assert cfg.paths.roots == () and cfg.server.tls is None and cfg.auth.tokens == ()


def test_toml_relative_paths_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "navsvc.toml"
    f.write_text('[store]\ndata_dir = "d"\n[paths]\nroots = ["in"]\n[server]\nport = 0\n'
                 '[[auth.tokens]]\ntoken = "0123456789abcdef"\nrole = "surgeon"\n')
    cfg = load_config(f)
    assert cfg.store.data_dir == tmp_path / "d" and cfg.paths.roots == (tmp_path / "in",)
    assert cfg.auth.tokens[0].role == "surgeon"
    f.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_config(f)
    f.write_text('[[auth.tokens]]\ntoken = "short"\nrole = "admin"\n')
    with pytest.raises(ConfigError, match="auth.tokens.0"):
        load_config(f)
    f.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_confine(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.nii").write_text("x")
    (tmp_path / "outside.nii").write_text("x")
    (root / "link.nii").symlink_to(tmp_path / "outside.nii")
    (root / "inner_link.nii").symlink_to(root / "sub" / "a.nii")
    assert confine("sub/a.nii", [root], "MRI") == (root / "sub" / "a.nii").resolve()
    assert confine(str(root / "sub" / "a.nii"), [root], "MRI") == (root / "sub" / "a.nii").resolve()
    assert confine("inner_link.nii", [root], "MRI") == (root / "sub" / "a.nii").resolve()
    for bad in ("../outside.nii", "sub/../../outside.nii", str(tmp_path / "outside.nii"), "link.nii"):
        with pytest.raises(PermissionDenied):
            confine(bad, [root], "MRI")
    with pytest.raises(InputError, match="not found"):
        confine("sub/missing.nii", [root], "MRI")
    with pytest.raises(PermissionDenied, match="no \\[paths\\] roots"):
        confine("sub/a.nii", [], "MRI")
    with pytest.raises(InputError):
        confine("", [root], "MRI")


def test_ports_in_use_are_clear_errors(tmp_path: Path) -> None:
    import socket

    from service_support import start_service

    from navsvc.errors import StreamingError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            start_service(tmp_path / "a", server={"port": port})
        with pytest.raises(StreamingError, match="Address already in use"):
            start_service(tmp_path / "b", igtl={"enabled": True, "port": port})
