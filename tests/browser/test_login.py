"""Logging in to the dashboard when the API wants tokens (its own `fleetlab up` stack)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from fleetlab_common.embedded import free_port
from fleetlab_common.testing.stack import Stack, start_stack, stop_stack, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("browser-auth") / "home"
    stack = start_stack(home, free_port(), FLEETLAB_AUTH__ENABLED="true")
    yield stack
    stop_stack(stack)


def test_login_with_a_token_then_pages_and_live_updates_work(
    page: Page, stack: Stack, screenshot: Callable[..., Path]
) -> None:
    token_file = stack.home / "api-token"
    token = wait_until(lambda: token_file.exists() and token_file.read_text().strip(), 10, "token")

    page.goto("/agents")
    expect(page).to_have_url(re.compile(r"/login\?next=/agents$"))
    page.get_by_label("API token").fill("flt_not-a-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#token-error")).to_have_text("That token is not valid.")
    screenshot(page, "login")

    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/agents$"))
    # The REST calls and the event stream carry the cookie.
    expect(page.locator('[data-agent="e2e-agent"] .dot.online')).to_be_attached()
    expect(page.locator("#live")).to_have_text("● live")

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))


def test_the_log_websocket_wants_credentials_too(stack: Stack) -> None:
    token = (stack.home / "api-token").read_text().strip()
    url = stack.url.replace("http://", "ws://") + "/api/v1/experiments/nope/logs/ws"

    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=10)
    assert refused.value.response.status_code == 403

    headers = {"Authorization": f"Bearer {token}"}
    with (
        connect(url, additional_headers=headers, open_timeout=10) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.recv(timeout=10)
    # Let in, then told the experiment does not exist.
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4404
