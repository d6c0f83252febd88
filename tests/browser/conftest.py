"""Browser tests of the dashboard: one `fleetlab up` stack per module (fleetlab_common.testing.
helpers), driven by Playwright on Debian's Chromium."""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetlab_common.embedded import free_port
from fleetlab_common.testing.stack import TERMINAL, Stack, start_stack, stop_stack, wait_until

REPO = Path(__file__).resolve().parents[2]
# `make screenshots` refreshes the committed ones in docs/screenshots; a plain test run writes
# them beside its other temporary files, so that it leaves the checkout as it found it.
SCREENSHOTS = Path(
    os.environ.get("FLEETLAB_SCREENSHOTS_DIR")
    or Path(tempfile.gettempdir()) / "fleetlab-screenshots"
)
WIDTH = 1280


def chromium_path() -> str | None:
    for candidate in ("chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("browser") / "home", free_port())
    yield stack
    stop_stack(stack)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed (`make test` installs it)")
    from playwright.sync_api import sync_playwright

    args = ["--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to sandbox as root
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=args)
        yield browser
        browser.close()


@pytest.fixture
def dialog_answers() -> list[str]:
    """What the page's next prompt() dialogs are answered, in order (confirm() is accepted)."""
    return []


@pytest.fixture
def page(browser: Any, stack: Stack, dialog_answers: list[str]) -> Iterator[Any]:
    context = browser.new_context(
        base_url=stack.url, viewport={"width": WIDTH, "height": 900}, device_scale_factor=1
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "dialog",
        lambda dialog: dialog.accept(
            dialog_answers.pop(0) if dialog.type == "prompt" and dialog_answers else None
        ),
    )
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _screenshot(page: Any, name: str, *, full_page: bool = True) -> Path:
    """Save the page as <SCREENSHOTS>/<name>.png (docs/screenshots: the README shows them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


@pytest.fixture(scope="session")
def screenshot() -> Any:
    return _screenshot


def wait_terminal(client: httpx.Client, experiment_id: str, timeout: float = 30) -> Any:
    """The experiment's record once it has ended."""

    def ended() -> Any:
        body = client.get(f"/api/v1/experiments/{experiment_id}").json()
        return body if body["status"] in TERMINAL else None

    return wait_until(ended, timeout, f"experiment {experiment_id} to end")


@pytest.fixture(scope="session")
def ended() -> Any:
    return wait_terminal


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The experiments' program: modes that end at once, wait for a gate file, sleep, or
    print a long log; metrics and scores through the metrics file."""
    path = tmp_path_factory.mktemp("code") / "train.py"
    path.write_text(
        textwrap.dedent(
            """
            import argparse, json, os, sys, time
            p = argparse.ArgumentParser()
            p.add_argument("--mode", default="quick")
            p.add_argument("--lr", type=float, default=0.1)
            p.add_argument("--epochs", type=int, default=3)
            p.add_argument("--gate", default="")
            args, _ = p.parse_known_args()
            metrics = open(os.environ["FLEETLAB_METRICS_FILE"], "a")
            def metric(**values):
                metrics.write(json.dumps(values) + "\\n")
                metrics.flush()
            print(f"start mode={args.mode} lr={args.lr}", flush=True)
            print("a warning on stderr", file=sys.stderr, flush=True)
            if args.mode == "quick":
                for epoch in range(args.epochs):
                    loss = 1 / (1 + args.lr * (epoch + 1))
                    print(f"epoch {epoch} loss {loss:.4f}", flush=True)
                    metric(step=epoch, loss=loss, accuracy=1 - loss)
                metric(_scores={"accuracy": round(1 - loss, 4)})
            elif args.mode == "gate":
                i = 0
                while not os.path.exists(args.gate):
                    print(f"tick {i}", flush=True)
                    metric(step=i, loss=1 / (i + 1))
                    i += 1
                    time.sleep(0.1)
                print("gate opened", flush=True)
            elif args.mode == "sleep":
                print(f"pid {os.getpid()}", flush=True)
                time.sleep(300)
            elif args.mode == "long":
                for i in range(1, 12001):
                    print(f"line {i}")
                sys.stdout.flush()
            """
        )
    )
    return path
