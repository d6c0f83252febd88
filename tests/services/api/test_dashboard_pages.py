"""The dashboard's pages, static files and login, in process (the browser tests drive the
pages themselves in tests/browser/)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from fleetlab_api.auth import TOKEN_COOKIE, AuthSettings
from fleetlab_api.dashboard.events import agent_message, experiment_message

HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture
def auth_on(api: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    def turn_on(*, password: str = "") -> None:
        settings = api.state.fleetlab.settings
        monkeypatch.setattr(
            settings, "auth", AuthSettings(enabled=True, password=SecretStr(password))
        )

    return turn_on


@pytest.mark.parametrize(
    ("path", "module"),
    [
        ("/", "home"),
        ("/experiments", "experiments"),
        ("/projects/some-project", "project"),
        ("/experiments/01a2089d-d896-7353-85df-21f8265d7ff2", "experiment"),
        ("/compare?ids=a,b", "compare"),
        ("/agents", "agents"),
        ("/sweeps", "sweeps"),
        ("/sweeps/01a2089d-d896-7353-85df-21f8265d7ff2", "sweep"),
        ("/webhooks", "webhooks"),
        ("/login", "login"),
    ],
)
async def test_every_page_is_html_with_its_script(
    client: httpx.AsyncClient, path: str, module: str
) -> None:
    response = await client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert f'src="/static/js/{module}.js?v=' in response.text
    assert '<a class="skip" href="#main">' in response.text
    script = await client.get(f"/static/js/{module}.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")


async def test_a_name_in_a_page_is_text_never_markup(client: httpx.AsyncClient) -> None:
    page = (await client.get('/projects/<img src=x onerror="alert(1)">')).text

    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page


async def test_static_files_are_served_and_confined(client: httpx.AsyncClient) -> None:
    uplot = await client.get("/static/vendor/uplot/uPlot.iife.min.js")
    licence = await client.get("/static/vendor/uplot/LICENSE")
    outside = await client.get("/static/%2e%2e/routes.py")
    missing = await client.get("/static/js/nope.js")

    assert uplot.status_code == 200 and "uPlot" in uplot.text
    assert licence.status_code == 200 and "MIT" in licence.text
    assert outside.status_code == 404
    assert missing.status_code == 404
    assert missing.json()["error"]


async def test_home_counts_experiments_by_status(
    client: httpx.AsyncClient, make_project: Callable[..., Any]
) -> None:
    project = await make_project({})
    for _ in range(2):
        r = await client.post("/api/v1/experiments", json={"project": project["name"]})
        assert r.status_code == 201

    page = (await client.get("/")).text

    row = page[page.index(f'data-project="{project["name"]}"') :].split("</tr>")[0]
    assert '<td class="num" data-status="queued">2</td>' in row
    assert '<td class="num" data-status="running">0</td>' in row


async def test_token_mode_sends_a_browser_to_the_login_page(
    client: httpx.AsyncClient, auth_on: Callable[..., None]
) -> None:
    auth_on()

    page = await client.get("/experiments?status=failed", headers=HTML)
    api = await client.get("/api/v1/projects", headers=HTML)
    script = await client.get("/static/js/lib.js")

    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=/experiments"
    assert api.status_code == 401
    assert script.status_code == 200


async def test_login_with_a_token_sets_a_cookie_that_opens_pages_and_api(
    client: httpx.AsyncClient, unique_name: Callable[[str], str], auth_on: Callable[..., None]
) -> None:
    name = unique_name("dash")
    secret = (await client.post("/api/v1/tokens", json={"name": name})).json()["token"]
    auth_on()

    bad = await client.post("/login", data={"token": "nope", "next": "/agents"})
    assert bad.status_code == 401
    assert "not valid" in bad.text
    assert TOKEN_COOKIE not in bad.headers.get("set-cookie", "")

    good = await client.post("/login", data={"token": secret, "next": "/agents"})
    assert good.status_code == 303
    assert good.headers["location"] == "/agents"
    cookie = good.headers["set-cookie"]
    assert cookie.startswith(f"{TOKEN_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie

    jar = {TOKEN_COOKIE: secret}
    client.cookies.update(jar)
    try:
        assert (await client.get("/agents", headers=HTML)).status_code == 200
        assert (await client.get("/api/v1/projects")).status_code == 200
    finally:
        client.cookies.clear()
    assert (await client.get("/api/v1/projects")).status_code == 401


async def test_login_goes_back_only_to_this_site(
    client: httpx.AsyncClient, unique_name: Callable[[str], str], auth_on: Callable[..., None]
) -> None:
    secret = (await client.post("/api/v1/tokens", json={"name": unique_name("d")})).json()["token"]
    auth_on()

    for elsewhere in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        r = await client.post("/login", data={"token": secret, "next": elsewhere})
        assert r.headers["location"] == "/"


async def test_password_mode_keeps_the_browser_prompt(
    client: httpx.AsyncClient, auth_on: Callable[..., None]
) -> None:
    auth_on(password="s3cret")

    response = await client.get("/", headers=HTML)

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")


def test_events_carry_the_status_they_imply() -> None:
    eid = "01a2089d-d896-7353-85df-21f8265d7ff2"

    def status(kind: str, **extra: Any) -> Any:
        message = experiment_message({"type": kind, "experiment_id": eid, **extra})
        assert message is not None
        return message["status"]

    assert status("api.experiment.submitted") == "queued"
    assert status("agent.experiment.started", agent_id="a") == "running"
    assert status("agent.experiment.finished", status="failed") == "failed"
    assert status("scheduler.experiment.cancelled") == "stopped"
    assert status("scheduler.experiment.lost", requeued=True) == "queued"
    assert status("scheduler.experiment.lost", requeued=False) == "lost"
    assert status("api.experiment.stop_requested") is None
    assert experiment_message({"type": "something.else"}) is None
    beat = agent_message({"type": "agent.heartbeat", "agent_id": "a", "slots": 2, "running": ["x"]})
    assert beat == {
        "type": "agent.heartbeat",
        "agent_id": "a",
        "online": True,
        "slots": 2,
        "busy": 1,
        "running": ["x"],
    }
