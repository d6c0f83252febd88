"""Choosing the artifact backend from settings."""

from __future__ import annotations

from fleetlab_common.artifacts.base import ArtifactConfigError, ArtifactStore
from fleetlab_common.artifacts.local import LocalArtifactStore
from fleetlab_common.artifacts.s3 import S3ArtifactStore
from fleetlab_common.settings import CommonSettings


def make_store(settings: CommonSettings, base_url: str, secret: bytes) -> ArtifactStore:
    """The artifact store ``settings.artifacts`` asks for.

    ``"local"``: a :class:`LocalArtifactStore` at ``settings.artifact_root()`` whose presigned
    URLs point at ``base_url`` and are signed with ``secret``. ``"s3"``: an
    :class:`~fleetlab_common.artifacts.s3.S3ArtifactStore` from ``settings.artifacts.s3``
    (``base_url`` and ``secret`` are unused: S3 signs its own URLs). Raises
    :class:`ArtifactConfigError` when S3 is chosen but has no endpoint. Only the S3 choice
    imports ``minio`` (the ``s3`` extra).
    """
    artifacts = settings.artifacts
    if artifacts.backend == "local":
        return LocalArtifactStore(settings.artifact_root(), base_url=base_url, secret=secret)
    if artifacts.backend == "s3":
        s3 = artifacts.s3
        if not s3.endpoint.strip():
            raise ArtifactConfigError(
                "artifacts.backend is 's3' but artifacts.s3.endpoint is empty: set "
                "FLEETLAB_ARTIFACTS__S3__ENDPOINT (host:port or http(s)://host:port), or use "
                "the 'local' backend"
            )
        return S3ArtifactStore(
            endpoint=s3.endpoint,
            access_key=s3.access_key,
            secret_key=s3.secret_key.get_secret_value(),
            bucket=s3.bucket,
            region=s3.region,
            secure=s3.secure,
        )
    raise ArtifactConfigError(f"unknown artifacts.backend {artifacts.backend!r}")
