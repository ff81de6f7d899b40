"""Service configuration: a TOML file over embedded defaults.

Every key is optional; ``navsvc serve`` with no file runs on localhost with an SQLite
store in ``./navsvc-data``. Unknown keys are errors (a typo must not silently fall back
to a default). Example::

    [server]
    host = "127.0.0.1"
    port = 50051              # 0: any free port (tests)
    [server.tls]              # optional; client_ca turns on mutual TLS
    cert = "server.crt"
    key = "server.key"
    client_ca = "ca.crt"
    [igtl]
    port = 18944
    allow = ["127.0.0.1"]
    [store]
    data_dir = "navsvc-data"
    [paths]
    roots = ["/data/cases"]   # server-side paths must lie under one of these
    [limits]
    max_upload_bytes = 1073741824
    [[auth.tokens]]
    token = "..."             # at least 16 characters
    role = "surgeon"          # viewer, technician or surgeon
    name = "Dr A"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from navsvc.errors import ConfigError

Role = Literal["viewer", "technician", "surgeon"]
MiB = 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate signed by it


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    max_message_bytes: int = Field(default=4 * MiB, ge=64 * 1024, le=64 * MiB)
    max_workers: int = Field(default=64, ge=4, le=1024)  # RPC threads; a stream holds one while open
    max_streams: int = Field(default=32, ge=1)  # open WatchRegistration + StreamTargets calls at once
    grace_s: float = Field(default=5.0, ge=0)
    tls: TlsConfig | None = None

    @model_validator(mode="after")
    def _streams_leave_room(self) -> ServerConfig:
        if self.max_streams > self.max_workers - 2:
            raise ValueError(f"max_streams ({self.max_streams}) must leave at least 2 of max_workers "
                             f"({self.max_workers}) for other calls")
        return self


class IgtlConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=18944, ge=0, le=65535)
    refresh_hz: float = Field(default=10.0, gt=0, le=1000)  # also the gRPC target stream's refresh
    allow: tuple[str, ...] = ("127.0.0.1", "::1")
    output_frame: Literal["lps", "ras", "device"] = "lps"


class StoreConfig(_Strict):
    data_dir: Path = Path("navsvc-data")


class PathsConfig(_Strict):
    roots: tuple[Path, ...] = ()


class LimitsConfig(_Strict):
    max_upload_bytes: int = Field(default=1024 * MiB, ge=1)
    max_label_chars: int = Field(default=200, ge=1)


class TokenConfig(_Strict):
    token: str = Field(min_length=16)
    role: Role
    name: str = ""


class AuthConfig(_Strict):
    tokens: tuple[TokenConfig, ...] = ()

    @field_validator("tokens")
    @classmethod
    def _unique(cls, tokens: tuple[TokenConfig, ...]) -> tuple[TokenConfig, ...]:
        seen = [t.token for t in tokens]
        if len(seen) != len(set(seen)):
            raise ValueError("each token must be unique")
        return tokens


class RegistrationConfig(_Strict):
    #: keyword arguments of navsvc.registration.RegistrationOptions
    options: dict[str, object] = Field(default_factory=dict)
    max_concurrent: int = Field(default=1, ge=1, le=16)  # registrations running at once (all cases)


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    igtl: IgtlConfig = IgtlConfig()
    store: StoreConfig = StoreConfig()
    paths: PathsConfig = PathsConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    registration: RegistrationConfig = RegistrationConfig()


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
    )


def config_from_dict(data: dict[str, object], source: str = "configuration") -> Config:
    """Validate a nested dict (as read from TOML); raise :class:`ConfigError` naming each bad key."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_errors(exc)}") from exc


def load_config(path: str | Path | None = None) -> Config:
    """Read a TOML config file (relative paths inside resolve against its folder), or defaults."""
    if path is None:
        return Config()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    cfg = config_from_dict(data, str(p))
    return resolve_paths(cfg, p.parent)


def resolve_paths(cfg: Config, base: Path) -> Config:
    """Make the config's relative paths absolute against ``base``."""

    def fix(x: Path) -> Path:
        return x if x.is_absolute() else (base / x)

    tls = cfg.server.tls
    if tls is not None:
        tls = tls.model_copy(
            update={"cert": fix(tls.cert), "key": fix(tls.key),
                    "client_ca": fix(tls.client_ca) if tls.client_ca else None}
        )
    return cfg.model_copy(
        update={
            "server": cfg.server.model_copy(update={"tls": tls}),
            "store": cfg.store.model_copy(update={"data_dir": fix(cfg.store.data_dir)}),
            "paths": cfg.paths.model_copy(update={"roots": tuple(fix(r) for r in cfg.paths.roots)}),
        }
    )
