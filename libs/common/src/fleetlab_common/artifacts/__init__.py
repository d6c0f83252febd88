"""Artifact storage: experiment inputs and outputs, behind one async interface.

Two backends: :class:`LocalArtifactStore` (a directory; the embedded default) and
:class:`S3ArtifactStore` (MinIO or any S3). The S3 backend imports ``minio`` only when a store
is made, so a process without the ``s3`` extra can import this package and use the local
store. :func:`make_store` picks one from settings.
"""

from __future__ import annotations

from fleetlab_common.artifacts.base import (
    DEFAULT_CONTENT_TYPE,
    ArtifactConfigError,
    ArtifactError,
    ArtifactInfo,
    ArtifactKeyError,
    ArtifactNotFoundError,
    ArtifactSignatureError,
    ArtifactStore,
    validate_key,
    validate_prefix,
)
from fleetlab_common.artifacts.factory import make_store
from fleetlab_common.artifacts.local import (
    LocalArtifactStore,
    compute_signature,
    verify_signature,
)
from fleetlab_common.artifacts.s3 import S3ArtifactStore

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "ArtifactConfigError",
    "ArtifactError",
    "ArtifactInfo",
    "ArtifactKeyError",
    "ArtifactNotFoundError",
    "ArtifactSignatureError",
    "ArtifactStore",
    "LocalArtifactStore",
    "S3ArtifactStore",
    "compute_signature",
    "make_store",
    "validate_key",
    "validate_prefix",
    "verify_signature",
]
