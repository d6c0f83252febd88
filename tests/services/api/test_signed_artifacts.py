"""``/api/v1/artifacts/signed/{key}``: where the local store's presigned URLs lead.

An agent holds no storage credential: it is handed these URLs, and the route lets through
exactly the operation, key and lifetime that were signed.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from fleetlab_common.artifacts import ArtifactStore, compute_signature
from fleetlab_common.ids import uuid7


@pytest.fixture
def store(api: FastAPI) -> ArtifactStore:
    artifact_store: ArtifactStore = api.state.fleetlab.store
    return artifact_store


def local(url: str) -> str:
    """The path and query of a presigned URL: what the in-process client requests."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def key_of(name: str) -> str:
    return f"experiments/{uuid7()}/outputs/{name}"


def with_params(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return f"{parts.path}?{urlencode({**query, **changes})}"


async def test_get_url_downloads(
    client: httpx.AsyncClient, store: ArtifactStore, api_home: Path
) -> None:
    key = key_of("model.bin")
    data = bytes(range(256)) * 4
    await store.put_bytes(key, data)

    response = await client.get(local(await store.presigned_get_url(key)))

    assert response.status_code == 200
    assert response.content == data
    assert (api_home / "artifacts" / "objects" / key).read_bytes() == data


async def test_key_with_spaces_and_unicode(client: httpx.AsyncClient, store: ArtifactStore) -> None:
    key = key_of("résumé final #1.txt")
    await store.put_bytes(key, b"hello")

    response = await client.get(local(await store.presigned_get_url(key)))

    assert response.status_code == 200
    assert response.content == b"hello"


async def test_put_url_uploads(client: httpx.AsyncClient, store: ArtifactStore) -> None:
    key = key_of("metrics.json")

    response = await client.put(local(await store.presigned_put_url(key)), content=b'{"loss": 0.1}')

    assert response.status_code == 204, response.text
    assert await store.get_bytes(key) == b'{"loss": 0.1}'


async def test_tampered_signature_is_403(client: httpx.AsyncClient, store: ArtifactStore) -> None:
    key = key_of("model.bin")
    await store.put_bytes(key, b"secret weights")
    url = await store.presigned_get_url(key)
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    tampered = ("0" if sig[0] != "0" else "1") + sig[1:]

    response = await client.get(with_params(url, sig=tampered))

    assert response.status_code == 403
    assert "signature" in response.json()["error"]
    assert b"secret weights" not in response.content


async def test_signature_is_for_one_key(client: httpx.AsyncClient, store: ArtifactStore) -> None:
    mine, theirs = key_of("a.bin"), key_of("b.bin")
    await store.put_bytes(theirs, b"not yours")
    url = await store.presigned_get_url(mine)
    query = urlsplit(url).query

    response = await client.get(f"/api/v1/artifacts/signed/{theirs}?{query}")

    assert response.status_code == 403
    assert b"not yours" not in response.content


async def test_expired_url_is_403(client: httpx.AsyncClient, store: ArtifactStore) -> None:
    key = key_of("old.bin")
    await store.put_bytes(key, b"old")
    expires = int(time.time()) - 10
    sig = compute_signature(b"test-secret", "get", key, expires)

    response = await client.get(
        f"/api/v1/artifacts/signed/{key}?op=get&expires={expires}&sig={sig}"
    )

    assert response.status_code == 403
    assert "expired" in response.json()["error"]


async def test_get_url_cannot_upload(client: httpx.AsyncClient, store: ArtifactStore) -> None:
    key = key_of("model.bin")
    await store.put_bytes(key, b"original")
    url = await store.presigned_get_url(key)

    as_is = await client.put(local(url), content=b"overwritten")
    relabelled = await client.put(with_params(url, op="put"), content=b"overwritten")

    assert as_is.status_code == 403
    assert relabelled.status_code == 403
    assert as_is.json()["error"]
    assert await store.get_bytes(key) == b"original"


async def test_put_url_cannot_download(client: httpx.AsyncClient, store: ArtifactStore) -> None:
    key = key_of("model.bin")
    await store.put_bytes(key, b"weights")

    response = await client.get(local(await store.presigned_put_url(key)))

    assert response.status_code == 403
    assert b"weights" not in response.content


async def test_missing_artifact_is_404(client: httpx.AsyncClient, store: ArtifactStore) -> None:
    response = await client.get(local(await store.presigned_get_url(key_of("never.bin"))))

    assert response.status_code == 404
    assert "never.bin" in response.json()["error"]


async def test_missing_signature_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/artifacts/signed/some/key")

    assert response.status_code == 422
    assert {"expires", "sig"} <= set(response.json()["fields"])
