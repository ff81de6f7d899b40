"""TLS and mutual TLS of the gRPC server (certificates made with the openssl command)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from service_support import TOKENS, ScriptedRunner, service_config

from navsvc.server.client import NavClient
from navsvc.server.pb import navsvc_pb2 as pb

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _pki(folder: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=navsvc test CA", cwd=folder)
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", "san.cnf", cwd=folder)
    return folder


def _start(tmp_path: Path, pki: Path, mutual: bool):
    from navsvc.server.app import create_server

    tls = {"cert": str(pki / "server.crt"), "key": str(pki / "server.key")}
    if mutual:
        tls["client_ca"] = str(pki / "ca.crt")
    runner = ScriptedRunner()
    return create_server(service_config(tmp_path, server={"tls": tls}), runner=runner,
                         options_checker=runner.check_options)


def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    pki = _pki(tmp_path / "pki")
    ca = (pki / "ca.crt").read_bytes()
    app, port = _start(tmp_path / "one", pki, mutual=False)
    try:
        with NavClient(f"127.0.0.1:{port}", TOKENS["viewer"], root_cert=ca) as c:
            c.wait_ready(10)
            assert c.call("ListCases", pb.ListCasesRequest()).cases == []
        with NavClient(f"127.0.0.1:{port}", TOKENS["viewer"]) as plain:  # plaintext client: refused
            with pytest.raises(grpc.FutureTimeoutError):
                plain.wait_ready(2)
    finally:
        app.stop(0)

    app, port = _start(tmp_path / "two", pki, mutual=True)
    try:
        key, cert = (pki / "client.key").read_bytes(), (pki / "client.crt").read_bytes()
        with NavClient(f"127.0.0.1:{port}", TOKENS["viewer"], root_cert=ca, client_key=key,
                       client_cert=cert) as c:
            c.wait_ready(10)
            assert c.call("GetTargets", pb.GetTargetsRequest()).state == "no_target"
        with NavClient(f"127.0.0.1:{port}", TOKENS["viewer"], root_cert=ca) as no_cert:
            with pytest.raises(grpc.RpcError) as info:
                no_cert.call("ListCases", pb.ListCasesRequest(), timeout_s=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        app.stop(0)
