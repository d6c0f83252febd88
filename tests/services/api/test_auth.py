"""Access: API tokens (hashed), FGLab's PASSWORD mode, health open, no open non-loopback bind."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from fleetlab_api.app import create_app
from fleetlab_api.auth import AuthSettings, UnsafeBindError, check_bind
from fleetlab_api.settings import ApiSettings
from fleetlab_cli.client import default_token
from fleetlab_common.testing.plugin import RestartableNats

PASSWORD = "s3cret-pw"


def _basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture
def auth_on(api: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Turn auth on in the running API (read per request); undone after the test."""

    def turn_on(*, password: str = "") -> None:
        settings = api.state.fleetlab.settings
        monkeypatch.setattr(
            settings, "auth", AuthSettings(enabled=True, password=SecretStr(password))
        )

    return turn_on


@pytest.fixture
async def token(client: httpx.AsyncClient, unique_name: Callable[[str], str]) -> AsyncIterator[str]:
    name = unique_name("tok")
    response = await client.post("/api/v1/tokens", json={"name": name})
    assert response.status_code == 201, response.text
    yield response.json()["token"]
    await client.delete(f"/api/v1/tokens/{name}")


async def test_off_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/projects")).status_code == 200


async def test_token_is_shown_once_and_stored_hashed(
    client: httpx.AsyncClient, unique_name: Callable[[str], str], api_dsn: str
) -> None:
    name = unique_name("tok")
    created = (await client.post("/api/v1/tokens", json={"name": name})).json()
    secret = created["token"]

    listed = (await client.get("/api/v1/tokens")).json()
    conn = await asyncpg.connect(api_dsn, server_settings={"search_path": "api"})
    try:
        stored = await conn.fetchval("SELECT hash FROM api_tokens WHERE name = $1", name)
        texts = await conn.fetchval(
            "SELECT row_to_json(t)::text FROM api_tokens t WHERE name = $1", name
        )
    finally:
        await conn.close()

    assert secret.startswith("flt_") and len(secret) > 40
    entry = next(t for t in listed if t["name"] == name)
    assert "token" not in entry
    assert entry["prefix"] == secret[:8]
    assert stored == hashlib.sha256(secret.encode()).digest()
    assert secret not in texts
    assert (await client.post("/api/v1/tokens", json={"name": name})).status_code == 409


async def test_bearer_token_required_when_on(
    client: httpx.AsyncClient, token: str, auth_on: Callable[..., None]
) -> None:
    auth_on()

    missing = await client.get("/api/v1/projects")
    wrong = await client.get("/api/v1/projects", headers={"Authorization": "Bearer flt_nope"})
    right = await client.get("/api/v1/projects", headers={"Authorization": f"Bearer {token}"})

    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "error" in missing.json()
    assert wrong.status_code == 401
    assert right.status_code == 200


async def test_revoked_token_stops_working(
    client: httpx.AsyncClient, unique_name: Callable[[str], str], auth_on: Callable[..., None]
) -> None:
    name = unique_name("tok")
    secret = (await client.post("/api/v1/tokens", json={"name": name})).json()["token"]
    auth_on()
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await client.get("/api/v1/tokens", headers=headers)).status_code == 200

    assert (await client.delete(f"/api/v1/tokens/{name}", headers=headers)).status_code == 204

    assert (await client.get("/api/v1/projects", headers=headers)).status_code == 401


async def test_password_mode_any_user_name(
    client: httpx.AsyncClient, auth_on: Callable[..., None]
) -> None:
    auth_on(password=PASSWORD)

    ok = await client.get("/api/v1/projects", headers=_basic("anyone", PASSWORD))
    bad = await client.get("/api/v1/projects", headers=_basic("anyone", "guess"))
    none = await client.get("/")

    assert ok.status_code == 200
    assert bad.status_code == 401
    assert none.status_code == 401
    assert none.headers["www-authenticate"].startswith("Basic")


async def test_health_stays_open(client: httpx.AsyncClient, auth_on: Callable[..., None]) -> None:
    auth_on(password=PASSWORD)

    assert (await client.get("/healthz")).status_code != 401
    assert (await client.get("/api/v1/health")).status_code != 401


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com"])
def test_open_non_loopback_bind_refuses_to_start(host: str) -> None:
    with pytest.raises(UnsafeBindError, match=r"refusing to start.*FLEETLAB_AUTH__"):
        create_app(ApiSettings(host=host, secret_key="x"))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_or_auth_may_start(host: str) -> None:
    check_bind(host, AuthSettings())
    check_bind("0.0.0.0", AuthSettings(enabled=True))
    check_bind("0.0.0.0", AuthSettings(password=SecretStr("pw")))


async def test_first_token_is_written_for_a_fresh_install_with_auth_on(
    own_nats: RestartableNats, fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    settings = ApiSettings(
        postgres={"dsn": fresh_dsn},
        nats={"url": own_nats.url},
        secret_key="test-secret",
        home=home,
        auth=AuthSettings(enabled=True),
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        token_file = home / "api-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        secret = token_file.read_text().strip()
        assert (await http.get("/api/v1/projects")).status_code == 401
        headers = {"Authorization": f"Bearer {secret}"}
        assert (await http.get("/api/v1/projects", headers=headers)).status_code == 200
        listed = (await http.get("/api/v1/tokens", headers=headers)).json()
        assert [t["name"] for t in listed] == ["admin"]

    # The command line finds it on this machine.
    monkeypatch.delenv("FLEETLAB_TOKEN", raising=False)
    monkeypatch.setenv("FLEETLAB_HOME", str(home))
    assert default_token() == secret

    # Once a token exists, a restart makes no other.
    token_file.unlink()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert not token_file.exists()
