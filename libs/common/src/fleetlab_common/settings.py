"""Settings shared by every Fleetlab process.

Every value comes from the environment with the ``FLEETLAB_`` prefix; nested groups use ``__``
(``FLEETLAB_NATS__URL``, ``FLEETLAB_POSTGRES__DSN``, ``FLEETLAB_ARTIFACTS__S3__ENDPOINT``).
Each service subclasses :class:`CommonSettings` with what only it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class NatsSettings(BaseModel):
    """How to reach NATS (the one credential an agent holds)."""

    url: str = "nats://127.0.0.1:4222"
    # Seconds a JetStream stream remembers a Nats-Msg-Id to drop a republished duplicate.
    duplicate_window_s: float = 120.0
    # How many times a JetStream message is delivered before it is given up on.
    max_deliver: int = 20


class PostgresSettings(BaseModel):
    """The PostgreSQL server holding every service's schema (one schema per service)."""

    dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    min_size: int = 1
    max_size: int = 10


class S3Settings(BaseModel):
    """An S3/MinIO endpoint for artifacts (used when ``artifacts.backend`` is ``s3``)."""

    endpoint: str = ""  # host:port, or a URL; empty means not configured
    access_key: str = ""
    secret_key: SecretStr = SecretStr("")
    bucket: str = "fleetlab"
    region: str = "us-east-1"
    secure: bool = False


class ArtifactSettings(BaseModel):
    """Where artifacts live: a local directory (embedded default) or S3/MinIO."""

    backend: Literal["local", "s3"] = "local"
    # Local backend root; relative paths are taken from FLEETLAB_HOME.
    root: Path = Path("artifacts")
    s3: S3Settings = Field(default_factory=S3Settings)


class TelemetrySettings(BaseModel):
    """OpenTelemetry export. Spans are always made; they are exported only when asked."""

    otlp_endpoint: str = ""  # e.g. http://collector:4318/v1/traces
    console: bool = False


class CommonSettings(BaseSettings):
    """What every Fleetlab process reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="FLEETLAB_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    home: Path = Path(".fleetlab")
    host: str = "127.0.0.1"
    port: int = 0
    log_level: str = "INFO"
    # None: JSON when stderr is not a terminal, coloured console lines when it is.
    log_json: bool | None = None
    # Signs short-lived URLs (local artifacts) and tokens. `fleetlab up` makes one per home.
    secret_key: SecretStr = SecretStr("")
    nats: NatsSettings = Field(default_factory=NatsSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    def artifact_root(self) -> Path:
        """The local artifact directory, absolute."""
        root = self.artifacts.root
        return root if root.is_absolute() else (self.home / root).absolute()
