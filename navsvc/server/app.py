"""Assemble the service: store, core, gRPC server (auth, health, reflection, limits, TLS) and
the OpenIGTLink server fed by the target hub.

``create_server(config) -> (app, port)``; ``app.stop()`` shuts down gracefully: health goes
NOT_SERVING first, running registrations are cancelled and marked interrupted, then the
sockets close.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from navsvc.config import Config
from navsvc.errors import ConfigError
from navsvc.server.auth import Authenticator, AuthInterceptor
from navsvc.server.core import NavService
from navsvc.server.pb import navsvc_pb2, navsvc_pb2_grpc
from navsvc.server.servicer import NavigationServicer
from navsvc.server.targets import TargetHub, TargetSnapshot
from navsvc.store import Store

log = logging.getLogger(__name__)

SERVICE_NAME = navsvc_pb2.DESCRIPTOR.services_by_name["Navigation"].full_name


def igtl_sink(igtl: Any) -> Any:
    """A hub sink that hands each snapshot to a :class:`navsvc.streaming.IgtlServer`."""
    import numpy as np

    from navsvc.streaming import Target, TargetState
    from navsvc.transforms import RigidTransform

    def sink(s: TargetSnapshot) -> None:
        T = (RigidTransform(np.array(s.T_device_from_ct), "device", "ct")
             if s.T_device_from_ct is not None else None)
        if s.state == "approved" and s.targets:
            state = TargetState(s.registration_id, "approved", s.qa_verdict,
                                tuple(Target(t.name, np.array(t.entry_lps), np.array(t.target_lps), t.diameter_mm)
                                      for t in s.targets), s.timestamp_s, s.reason)
        else:
            reason = s.reason if s.state == "no_target" else "the approved registration has no targets"
            state = TargetState.no_target(reason, s.registration_id or None, s.timestamp_s)
        igtl.set_device_calibration(T)
        igtl.publish(state)

    return sink


class App:
    """A running service. ``grpc_port`` and ``igtl_port`` are the bound ports (0 = disabled)."""

    def __init__(self, config: Config, **service_kw: Any) -> None:
        self.config = config
        self.store = Store(config.store.data_dir)
        self.auth = Authenticator.from_config(config, self.store.data_dir)
        self.hub = TargetHub()
        self.service = NavService(config, self.store, self.hub, **service_kw)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.igtl: Any = None
        self.igtl_port = 0
        self.grpc_port = 0
        self._stopped = threading.Event()
        opts = [("grpc.max_receive_message_length", config.server.max_message_bytes),
                ("grpc.max_send_message_length", config.server.max_message_bytes),
                ("grpc.so_reuseport", 0)]
        self.server = grpc.server(ThreadPoolExecutor(max_workers=config.server.max_workers,
                                                     thread_name_prefix="grpc"),
                                  interceptors=[AuthInterceptor(self.auth, self._audit_denied)], options=opts,
                                  maximum_concurrent_rpcs=config.server.max_workers * 2)
        navsvc_pb2_grpc.add_NavigationServicer_to_server(
            NavigationServicer(self.service, self.auth, config.igtl.refresh_hz, config.server.max_streams,
                               config.server.max_message_bytes),
            self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.server)

    def _audit_denied(self, method: str, who: Any, exc: Exception) -> None:
        self.store.audit(who.name if who else "(unauthenticated)", who.role if who else "none",
                         "auth.denied", method=method, reason=str(exc))

    def _set_health(self, status: int) -> None:
        self.health.set("", status)
        self.health.set(SERVICE_NAME, status)

    def start(self) -> int:
        cfg = self.config
        address = f"{cfg.server.host}:{cfg.server.port}"
        if cfg.server.tls is not None:
            tls = cfg.server.tls
            try:
                key, cert = tls.key.read_bytes(), tls.cert.read_bytes()
                ca = tls.client_ca.read_bytes() if tls.client_ca else None
            except OSError as exc:
                raise ConfigError(f"[server.tls]: cannot read a certificate or key: {exc}") from exc
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                require_client_auth=ca is not None)
        try:
            self.grpc_port = (self.server.add_secure_port(address, creds) if cfg.server.tls is not None
                              else self.server.add_insecure_port(address))
        except RuntimeError:  # grpc >= 1.60 raises when the bind fails
            self.grpc_port = 0
        if not self.grpc_port:
            raise ConfigError(f"[server]: cannot listen on {address} (in use or not a local address)")
        if cfg.igtl.enabled:
            self._start_igtl()
        self.service.start()
        self.hub.start_sinks()
        self.server.start()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("navsvc serving gRPC on %s:%d (%s), OpenIGTLink on %s, data in %s", cfg.server.host,
                 self.grpc_port, "TLS" if cfg.server.tls else "plaintext",
                 f"{cfg.igtl.host}:{self.igtl_port}" if self.igtl_port else "off", self.store.data_dir)
        return self.grpc_port

    def _start_igtl(self) -> None:
        try:
            from navsvc.streaming import IgtlServer, StreamConfig
        except ImportError as exc:
            raise ConfigError(f"OpenIGTLink is enabled but the streaming part is missing ({exc}); "
                              "set [igtl] enabled = false") from exc
        c = self.config.igtl
        self.igtl = IgtlServer(StreamConfig(host=c.host, port=c.port, refresh_hz=c.refresh_hz, allow=c.allow,
                                            output_frame=c.output_frame))
        self.igtl_port = self.igtl.start()
        self.hub.add_sink(igtl_sink(self.igtl))

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown (idempotent): NOT_SERVING, cancel registrations, close sockets."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("navsvc shutting down")
        self.health.enter_graceful_shutdown()
        self.service.stop()
        self.server.stop(self.config.server.grace_s if grace_s is None else grace_s).wait()
        if self.igtl is not None:
            self.igtl.stop()
        self.store.close()
        log.info("navsvc stopped")

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._stopped.wait(timeout_s)


def create_server(config: Config, **service_kw: Any) -> tuple[App, int]:
    """Build and start the service; returns it and its bound gRPC port."""
    app = App(config, **service_kw)
    try:
        port = app.start()
    except BaseException:
        app.stop(0)
        raise
    return app, port
