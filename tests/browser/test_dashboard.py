"""The dashboard in a real browser (Chromium through Playwright) against `fleetlab up`: what a
user does and sees. The tests save screenshots of the pages into docs/screenshots/."""

from __future__ import annotations

import json
import re
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from fleetlab_common.testing.stack import wait_until

pytestmark = pytest.mark.e2e

Shot = Callable[..., Path]
Ended = Callable[..., dict[str, Any]]

SCHEMA: dict[str, dict[str, Any]] = {
    "epochs": {"type": "int", "default": 3},
    "lr": {"type": "float", "default": 0.1},
    "augment": {"type": "bool", "default": False},
    "label": {"type": "string", "default": "base"},
    "optimiser": {"type": "enum", "values": ["sgd", "adam"], "default": "sgd"},
    "mode": {"type": "enum", "values": ["quick", "gate", "sleep", "long"], "default": "quick"},
    "gate": {"type": "string", "default": "-"},
}


@pytest.fixture(scope="module")
def project(client: httpx.Client, program: Path) -> str:
    body = {"name": "dash", "command": ["python3", str(program)], "schema": SCHEMA}
    r = client.post("/api/v1/projects", json=body)
    assert r.status_code == 201, r.text
    return "dash"


def submit(client: httpx.Client, options: dict[str, Any], **extra: Any) -> dict[str, Any]:
    body = {"project": "dash", "options": options, **extra}
    r = client.post("/api/v1/experiments", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def scores_of(client: httpx.Client, experiment_id: str) -> dict[str, Any]:
    record = client.get(f"/api/v1/experiments/{experiment_id}").json()
    return record["results"].get("_scores") or {}  # type: ignore[no-any-return]


def status_badge(page: Page) -> Any:
    return page.locator("#status [data-field=status]")


def test_create_project_and_submit_from_the_generated_form(
    page: Page, client: httpx.Client, program: Path, screenshot: Shot
) -> None:
    page.goto("/")
    page.get_by_text("New project").click()
    page.fill("#np-name", "form-demo")
    page.fill("#np-command", f"python3\n{program}")
    page.fill("#np-schema", json.dumps(SCHEMA))
    page.get_by_role("button", name="Create project").click()
    expect(page).to_have_url(re.compile(r"/projects/form-demo$"))

    # One labelled input per option, typed by the schema, defaults filled.
    for key in SCHEMA:
        expect(page.locator(f"label[for=opt-{key}]")).to_contain_text(key)
    expect(page.get_by_label("epochs (int")).to_have_attribute("type", "number")
    expect(page.locator("#opt-epochs")).to_have_value("3")
    expect(page.locator("#opt-lr")).to_have_value("0.1")
    expect(page.locator("#opt-augment")).to_have_attribute("type", "checkbox")
    expect(page.locator("#opt-augment")).not_to_be_checked()
    expect(page.locator("#opt-label")).to_have_value("base")
    expect(page.locator("#opt-optimiser option:checked")).to_have_text("sgd")
    screenshot(page, "project")

    # Checked in the browser: no request goes out.
    page.fill("#opt-epochs", "2.5")
    page.get_by_role("button", name="Submit experiment").click()
    expect(page.locator("#opt-epochs-error")).to_have_text("must be an integer")
    assert client.get("/api/v1/experiments?project=form-demo").json()["items"] == []

    # Checked by the server: its message shows next to the field.
    page.locator("#opt-epochs").evaluate("el => el.setAttribute('step', 'any')")
    page.get_by_role("button", name="Submit experiment").click()
    expect(page.locator("#opt-epochs-error")).to_contain_text("not 2.5")
    expect(page.locator("#opt-epochs")).to_have_attribute("aria-invalid", "true")
    assert client.get("/api/v1/experiments?project=form-demo").json()["items"] == []

    page.fill("#opt-epochs", "2")
    page.fill("#opt-lr", "0.5")
    page.locator("label[for=opt-augment]").click()
    page.select_option("#opt-optimiser", label="adam")
    page.fill("#opt-label", "from-form")
    page.fill("#f-name", "first from the form")
    page.get_by_role("button", name="Submit experiment").click()
    expect(page.locator("#run-ok")).to_contain_text("Submitted")
    expect(page.locator("#opt-epochs-error")).to_be_empty()

    items = client.get("/api/v1/experiments?project=form-demo").json()["items"]
    assert len(items) == 1
    experiment = items[0]
    assert experiment["name"] == "first from the form"
    assert experiment["options"] == {
        "epochs": 2,
        "lr": 0.5,
        "augment": True,
        "label": "from-form",
        "optimiser": "adam",
        "mode": "quick",
        "gate": "-",
    }
    # The table shows it, and its status follows the events to the end.
    row = page.locator(f'#experiments tr[data-id="{experiment["id"]}"]')
    expect(row.locator("[data-field=status]")).to_have_text("succeeded", timeout=30_000)
    expect(row).to_contain_text("first from the form")


def test_live_log_lines_arrive(
    page: Page, client: httpx.Client, project: str, tmp_path: Path, screenshot: Shot
) -> None:
    gate = tmp_path / "gate"
    experiment = submit(client, {"mode": "gate", "gate": str(gate)})
    page.goto(f"/experiments/{experiment['id']}")
    log = page.locator("#log")

    expect(log.locator(".ln").nth(4)).to_be_attached()
    expect(status_badge(page)).to_have_text("running")
    seen = log.locator(".ln").count()
    # More lines keep coming while it runs: pushed, with the page left alone.
    expect(log.locator(".ln").nth(seen + 3)).to_be_attached()
    expect(status_badge(page)).to_have_text("running")
    # stderr is set apart from stdout.
    expect(log.locator(".ln.stderr")).to_contain_text("a warning on stderr")
    assert "stderr" not in (log.locator(".ln").first.get_attribute("class") or "")
    page.fill("#log-search", "tick 1")
    expect(page.locator("#log-hits")).to_contain_text("matching lines")
    page.fill("#log-search", "")

    # Follow off: the view stays where the reader put it while lines keep coming.
    expect(log.locator(".ln").nth(40)).to_be_attached()  # more than the box shows
    assert log.evaluate("el => el.scrollHeight > el.clientHeight + 100")
    page.uncheck("#follow")
    log.evaluate("el => { el.scrollTop = 0; }")
    count = log.locator(".ln").count()
    expect(log.locator(".ln").nth(count + 2)).to_be_attached()
    assert log.evaluate("el => el.scrollTop") == 0
    # Follow on: back to the newest line.
    page.check("#follow")
    page.wait_for_function(
        "el => el.scrollHeight - el.scrollTop - el.clientHeight < 40", arg=log.element_handle()
    )

    gate.touch()
    expect(log.locator(".ln", has_text="gate opened")).to_be_attached()
    expect(log.locator(".end-marker")).to_contain_text("ended: succeeded")
    expect(status_badge(page)).to_have_text("succeeded")


def test_rename_restart_and_delete_from_the_experiment_page(
    page: Page, client: httpx.Client, project: str, ended: Ended, dialog_answers: list[str]
) -> None:
    first = submit(client, {"lr": 0.3})
    ended(client, first["id"])
    page.goto(f"/experiments/{first['id']}")
    expect(status_badge(page)).to_have_text("succeeded")

    dialog_answers.append("renamed run")
    page.get_by_role("button", name="Rename").click()
    expect(page.locator("#title")).to_have_text("renamed run")
    assert client.get(f"/api/v1/experiments/{first['id']}").json()["name"] == "renamed run"

    page.get_by_role("button", name="Restart").click()
    expect(page).not_to_have_url(re.compile(first["id"]))
    again_id = page.url.rsplit("/", 1)[1]
    again = client.get(f"/api/v1/experiments/{again_id}").json()
    assert again["options"] == first["options"]
    assert again["name"] == "renamed run"
    ended(client, again_id)

    page.goto(f"/experiments/{first['id']}")
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(r"/projects/dash$"))
    assert client.get(f"/api/v1/experiments/{first['id']}").status_code == 404


def test_notes_typed_then_reload_keeps_them(
    page: Page, client: httpx.Client, project: str, ended: Ended
) -> None:
    experiment = submit(client, {})
    ended(client, experiment["id"])
    page.goto(f"/experiments/{experiment['id']}")
    notes = page.locator("#notes")
    text = "lr too high: try 0.01 next"

    def is_save(request: Any) -> bool:
        return request.method == "PATCH" and experiment["id"] in request.url

    with page.expect_request(is_save, timeout=5_000):
        notes.press_sequentially(text)
        typed = time.monotonic()
    sent_after = time.monotonic() - typed
    assert sent_after < 0.5, f"notes were sent {sent_after:.2f} s after the last key"
    expect(page.locator("#notes-state")).to_contain_text("Saved")

    page.reload()
    expect(page.locator("#notes")).to_have_value(text)
    assert client.get(f"/api/v1/experiments/{experiment['id']}").json()["notes"] == text


def test_metric_chart_draws_points(
    page: Page, client: httpx.Client, project: str, tmp_path: Path, screenshot: Shot
) -> None:
    gate = tmp_path / "gate"
    experiment = submit(client, {"mode": "gate", "gate": str(gate)}, name="live metrics")
    page.goto(f"/experiments/{experiment['id']}")
    chart = page.locator('figure[data-chart="loss"]')
    expect(chart).to_be_visible()
    expect(chart).to_have_attribute("data-points", re.compile(r"^([3-9]|\d\d+)$"))
    drawn = int(chart.get_attribute("data-points") or 0)
    # New points join the chart live.
    page.wait_for_function(
        "n => Number(document.querySelector('figure[data-chart=loss]').dataset.points) > n",
        arg=drawn,
    )
    # The canvas holds the drawn line: some pixels are the series' colour.
    coloured = chart.locator("canvas").evaluate(
        """canvas => {
            const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < px.length; i += 4) {
                if (px[i + 3] > 0 && px[i + 2] > 120 && px[i] < 60) n++;
            }
            return n;
        }"""
    )
    assert coloured > 50
    gate.touch()
    expect(status_badge(page)).to_have_text("succeeded")
    expect(page.locator("#log .end-marker")).to_be_attached()
    screenshot(page, "experiment")


def test_compare_two_experiments(
    page: Page, client: httpx.Client, project: str, ended: Ended, screenshot: Shot
) -> None:
    a = submit(client, {"lr": 0.1, "epochs": 4}, name="slow lr")
    b = submit(client, {"lr": 0.9, "epochs": 4}, name="fast lr")
    for e in (a, b):
        ended(client, e["id"])
        # Scores come in their own event, a moment after the end.
        wait_until(lambda e=e: scores_of(client, e["id"]), 10, "the scores")
    page.goto("/projects/dash")
    for e in (a, b):
        page.get_by_label(f"Select {e['name']}").check()
    page.get_by_role("button", name="Compare selected (2)").click()
    expect(page).to_have_url(re.compile(r"/compare\?ids="))

    side = page.locator("#side")
    expect(side.locator('tr[data-key="lr"]')).to_have_class("diff")
    expect(side.locator('tr[data-key="lr"]')).to_contain_text("0.9")
    expect(side.locator('tr[data-key="epochs"]')).not_to_have_class("diff")
    loss = page.locator('#curves figure[data-chart="loss"]')
    expect(loss).to_have_attribute("data-points", "8")
    expect(loss.locator(".u-legend")).to_contain_text("slow lr")
    expect(loss.locator(".u-legend")).to_contain_text("fast lr")
    expect(page.locator("#parallel svg polyline")).to_have_count(2)
    screenshot(page, "compare")

    page.goto("/experiments?sort=-results._scores.accuracy")
    expect(page.locator("#experiments tbody tr").first).to_contain_text("fast lr")
    expect(page.locator('th[aria-sort="descending"]')).to_contain_text("accuracy")
    expect(page.locator('#experiments td[data-col="metrics.loss"]').first).not_to_be_empty()
    screenshot(page, "experiments")

    # A metric is a column too, and sorts by its last value.
    page.goto("/projects/dash")
    page.locator('th button[data-sort="metrics.loss"]').click()
    expect(page).to_have_url(re.compile(r"sort=metrics\.loss"))
    expect(page.locator('th[aria-sort="ascending"]')).to_contain_text("loss")
    cells = page.locator('#experiments td[data-col="metrics.loss"]')
    expect(cells.first).not_to_be_empty()
    values = [float(v) for v in cells.all_inner_texts() if v.strip()]
    assert len(values) >= 2
    assert values == sorted(values)


def test_stop_a_running_experiment_from_its_page(
    page: Page, client: httpx.Client, project: str
) -> None:
    experiment = submit(client, {"mode": "sleep"})
    page.goto(f"/experiments/{experiment['id']}")
    expect(status_badge(page)).to_have_text("running")
    expect(page.locator("#log .ln", has_text="pid")).to_be_attached()

    page.get_by_role("button", name="Stop").click()

    expect(status_badge(page)).to_have_text("stopped")
    expect(page.locator("#log .end-marker")).to_contain_text("stopped")
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    # The page hears the end from the event stream; the record follows a moment later.
    wait_until(
        lambda: client.get(f"/api/v1/experiments/{experiment['id']}").json()["status"] == "stopped",
        10,
        "the record to say stopped",
    )

    # The table filters by status, and exports what it shows.
    page.goto("/experiments")
    page.get_by_label("Status").select_option("stopped")
    expect(page).to_have_url(re.compile(r"/experiments\?status=stopped$"))
    rows = page.locator("#experiments tbody tr")
    expect(rows.locator("[data-field=status]").first).to_have_text("stopped")
    expect(page.locator(f'#experiments tr[data-id="{experiment["id"]}"]')).to_be_visible()
    assert set(rows.locator("[data-field=status]").all_inner_texts()) == {"stopped"}
    href = page.get_by_role("link", name="Export CSV").get_attribute("href") or ""
    assert "status=stopped" in href and "format=csv" in href
    csv = client.get(href)
    assert csv.headers["content-type"].startswith("text/csv")
    assert experiment["id"] in csv.text


def test_late_open_of_a_12000_line_log_shows_the_skip_marker(
    page: Page, client: httpx.Client, project: str, ended: Ended
) -> None:
    experiment = submit(client, {"mode": "long"})
    done = ended(client, experiment["id"], timeout=60)
    assert done["log_lines"] >= 12_000
    page.goto(f"/experiments/{experiment['id']}")

    skipped = done["log_lines"] - 2000
    marker = page.locator("#log .skip-marker")
    expect(marker).to_contain_text(f"{skipped:,} lines skipped")
    lines = page.locator("#log .ln")
    expect(lines).to_have_count(2000)
    expect(lines.last).to_contain_text("line 12000")
    assert lines.first.get_attribute("data-seq") == "1"
    expect(page.locator("#log .end-marker")).to_contain_text("succeeded")


def test_event_stream_pushes_status_changes(client: httpx.Client, project: str) -> None:
    bad = client.get("/api/v1/events", params={"experiment": "nope"})
    assert bad.status_code == 422
    assert "experiment" in bad.json()["fields"]

    statuses: list[str] = []
    with client.stream("GET", "/api/v1/events", timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        for line in lines:
            if line.startswith("event: ready"):
                break
        experiment = submit(client, {})
        event = ""
        for line in lines:
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "experiment":
                data = json.loads(line.removeprefix("data: "))
                if data["experiment_id"] == experiment["id"] and data["status"]:
                    statuses.append(data["status"])
                    if data["status"] == "succeeded":
                        break
    assert statuses[0] == "queued"
    assert "running" in statuses
    assert statuses[-1] == "succeeded"


def test_sweep_started_from_the_project_page_shows_progress_and_best(
    page: Page, client: httpx.Client, project: str, screenshot: Shot
) -> None:
    page.goto("/projects/dash")
    page.get_by_text("Sweep (search over the options)").click()
    page.get_by_label("lr: values, comma-separated").fill("0.2, 0.8")
    page.locator("#sweep-form input[name=metric]").fill("accuracy")
    page.get_by_role("button", name="Start sweep").click()
    expect(page).to_have_url(re.compile(r"/sweeps/[0-9a-f-]{36}$"))
    sweep_id = page.url.rsplit("/", 1)[1]

    summary = page.locator("#summary")
    expect(summary).to_contain_text("2 of 2 trials ended", timeout=40_000)

    def best_known() -> Any:
        sweep = client.get(f"/api/v1/sweeps/{sweep_id}").json()
        return sweep["best"] if sweep["best"] and sweep["best"]["options"]["lr"] == 0.8 else None

    best = wait_until(best_known, 10, "the best trial to be lr 0.8")
    # The page follows: the last score to arrive may change the best trial.
    expect(summary).to_contain_text(f"accuracy = {best['results']['_scores']['accuracy']}")
    best_link = summary.get_by_role("link", name=best["name"] or best["id"][:8])
    expect(best_link).to_have_attribute("href", f"/experiments/{best['id']}")
    expect(page.locator("#experiments tbody tr")).to_have_count(2)
    expect(page.locator("#trial-chart figure")).to_have_attribute("data-points", "2")
    screenshot(page, "sweep")

    page.goto("/sweeps")
    row = page.locator(f'#sweeps tr[data-id="{sweep_id}"]')
    expect(row).to_contain_text("finished")
    expect(row).to_contain_text("2 of 2 trials ended")


def test_webhook_endpoint_added_from_the_page(page: Page, client: httpx.Client) -> None:
    page.goto("/webhooks")
    page.get_by_text("New endpoint").click()
    page.fill("#wh-url", "https://hooks.example.org/fleetlab")
    page.get_by_role("button", name="Add endpoint").click()

    row = page.locator("#webhooks tbody tr", has_text="https://hooks.example.org/fleetlab")
    expect(row).to_contain_text("experiment.finished")
    expect(page.locator("#toast")).to_contain_text("whsec_")
    hooks = client.get("/api/v1/webhooks").json()["items"]
    assert [h["url"] for h in hooks] == ["https://hooks.example.org/fleetlab"]
    row.get_by_role("button", name="Deliveries").click()
    expect(page.locator("#deliveries-box")).to_be_visible()
    row.get_by_role("button", name="Pause").click()
    expect(page.locator("#webhooks tbody tr", has_text="hooks.example.org")).to_contain_text(
        "paused"
    )


MAIN_PY = """
import os, struct, zlib

def png(width, height):
    row = b"\\x00" + bytes([5, 80, 174]) * width
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))

out = os.environ["FLEETLAB_OUTPUTS_DIR"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "plot.png"), "wb") as f:
    f.write(png(40, 30))
with open(os.path.join(out, "model.txt"), "w") as f:
    f.write("weights")
print("outputs written")
"""


def test_code_snapshot_and_output_files_with_image_preview(
    page: Page, client: httpx.Client, tmp_path: Path, ended: Ended
) -> None:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "main.py").write_text(MAIN_PY)
    archive = tmp_path / "code.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "main.py", arcname="main.py")
    upload = client.post(
        "/api/v1/code",
        content=archive.read_bytes(),
        headers={"content-type": "application/gzip"},
    )
    assert upload.status_code == 201, upload.text
    digest = upload.json()["digest"]
    body = {"name": "coded", "command": ["python3", "main.py"], "code": digest}
    assert client.post("/api/v1/projects", json=body).status_code == 201
    experiment = client.post("/api/v1/experiments", json={"project": "coded"}).json()
    assert ended(client, experiment["id"])["status"] == "succeeded"

    page.goto(f"/experiments/{experiment['id']}")
    files = page.locator("#files")
    expect(files.get_by_role("link", name="model.txt")).to_be_visible()
    preview = files.get_by_role("img", name="Preview of plot.png")
    expect(preview).to_be_visible()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth === 40", arg=preview.element_handle()
    )
    code = page.locator("#code-box")
    expect(code).to_contain_text(digest)
    code.get_by_role("button", name="main.py").click()
    expect(code.locator("pre.code")).to_contain_text("FLEETLAB_OUTPUTS_DIR")


FGLAB_RESULTS = {
    "_scores": {"acc": 0.9},
    "_charts": [
        {
            "title": {"text": "learning curve"},
            "data": {"x": "epoch", "columns": [["epoch", 1, 2, 3], ["loss", 1.0, 0.5, 0.25]]},
        }
    ],
    "comment": "converged early",
}


def test_fglab_results_folder_scores_charts_and_custom_fields(
    page: Page, client: httpx.Client, ended: Ended
) -> None:
    write = (
        "import json, os; os.makedirs('results', exist_ok=True); "
        f"json.dump({FGLAB_RESULTS!r}, open('results/r.json', 'w'))"
    )
    body = {"name": "fglab-results", "command": ["python3", "-c", write], "results": "results"}
    assert client.post("/api/v1/projects", json=body).status_code == 201
    experiment = client.post("/api/v1/experiments", json={"project": "fglab-results"}).json()
    assert ended(client, experiment["id"])["status"] == "succeeded"
    wait_until(lambda: scores_of(client, experiment["id"]), 10, "the results")

    page.goto(f"/experiments/{experiment['id']}")
    expect(page.locator("#scores")).to_contain_text("acc")
    expect(page.locator("#scores")).to_contain_text("0.9")
    expect(page.locator("#results")).to_contain_text("converged early")
    chart = page.locator('figure[data-chart="learning curve"]')
    expect(chart).to_have_attribute("data-points", "3")
    expect(chart.locator(".u-legend")).to_contain_text("loss")


def test_a_long_table_pages_with_load_more(page: Page, client: httpx.Client) -> None:
    # An agent label no agent has: the experiments stay queued, nothing runs.
    body = {"name": "many", "command": ["true"], "labels": ["nowhere"]}
    assert client.post("/api/v1/projects", json=body).status_code == 201
    ids = {
        client.post("/api/v1/experiments", json={"project": "many"}).json()["id"] for _ in range(55)
    }
    page.goto("/projects/many")
    rows = page.locator("#experiments tbody tr")
    expect(rows).to_have_count(50)
    expect(page.locator("#count")).to_have_text("50 shown, more to load")
    page.get_by_role("button", name="Load more").click()
    expect(rows).to_have_count(55)
    expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    shown = set(rows.evaluate_all("rows => rows.map(r => r.dataset.id)"))
    assert shown == ids
    href = page.get_by_role("link", name="Export CSV").get_attribute("href") or ""
    assert len(client.get(href).text.strip().splitlines()) == 1 + 55


def test_agents_page_and_drain(page: Page, screenshot: Shot) -> None:
    page.goto("/agents")
    card = page.locator('[data-agent="e2e-agent"]')
    expect(card).to_contain_text("online")
    expect(card.locator(".dot.online")).to_be_attached()
    expect(card).to_contain_text("slots in use")
    # The machine's CPU and memory over time, as the agent samples them.
    expect(card.locator('figure[data-chart="CPU %"]')).to_be_visible(timeout=15_000)
    memory = card.locator('figure[data-chart="memory used (MB)"]')
    expect(memory).to_be_visible()
    # New samples join the charts as the agent sends them.
    before = int(memory.get_attribute("data-points") or 0)
    grown = """n => {
        const el = document.querySelector(
            '[data-agent="e2e-agent"] figure[data-chart="memory used (MB)"]');
        return el !== null && Number(el.dataset.points) > n;
    }"""
    page.wait_for_function(
        grown,
        arg=before,
        timeout=15_000,
    )
    screenshot(page, "agents")
    card.get_by_role("button", name="Drain").click()
    expect(card).to_contain_text("draining")
    card.get_by_role("button", name="Resume (undrain)").click()
    expect(card.get_by_role("button", name="Drain")).to_be_visible()


def test_pages_screenshots_and_narrow_screen(
    page: Page,
    browser: Any,
    stack: Any,
    client: httpx.Client,
    project: str,
    screenshot: Shot,
    ended: Ended,
) -> None:
    done = ended(client, submit(client, {"epochs": 5}, name="narrow view")["id"])
    page.goto("/")
    expect(page.locator("#agents .dot.online")).to_be_attached()
    expect(page.locator("#live")).to_have_text("● live")
    screenshot(page, "home")
    for path, name in (("/sweeps", "sweeps"), ("/webhooks", "webhooks")):
        page.goto(path)
        expect(page.locator("main .muted", has_text="Loading")).to_have_count(0)
        screenshot(page, name)

    narrow = browser.new_context(base_url=stack.url, viewport={"width": 390, "height": 844})
    try:
        small = narrow.new_page()
        small.goto(f"/experiments/{done['id']}")
        expect(small.locator("#status [data-field=status]")).to_have_text("succeeded")
        # Nothing wider than the screen: no sideways scrolling of the page.
        width = small.evaluate("document.documentElement.scrollWidth")
        assert width <= 390
        screenshot(small, "narrow")
    finally:
        narrow.close()


def keyboard_reaches(page: Page, target: str, presses: int = 60) -> bool:
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate(f"document.activeElement && document.activeElement.matches({target!r})"):
            return True
    return False


def test_keyboard_only_submit(page: Page, client: httpx.Client, project: str) -> None:
    page.goto("/projects/dash")
    expect(page.locator("#opt-epochs")).to_be_visible()
    assert keyboard_reaches(page, "#opt-epochs")
    page.keyboard.press("Control+a")
    page.keyboard.type("1")
    assert keyboard_reaches(page, "#run-form button[type=submit]")
    page.keyboard.press("Enter")
    expect(page.locator("#run-ok")).to_contain_text("Submitted")
