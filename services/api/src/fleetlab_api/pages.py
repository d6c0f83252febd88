"""``GET /``: a plain page listing the experiments; the dashboard grows from here."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from fleetlab_api.deps import ConnDep
from fleetlab_api.experiments import repository as repo

router = APIRouter(include_in_schema=False)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Fleetlab</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1a1a1a; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #ddd; }}
.status {{ font-weight: 600; }}
.succeeded {{ color: #116329; }} .failed, .lost {{ color: #a40e26; }}
.running {{ color: #0550ae; }} .queued, .stopped {{ color: #57606a; }}
</style></head>
<body>
<h1>Fleetlab</h1>
<p>API: <a href="/docs">reference</a> · <a href="/api/v1/asyncapi.json">event catalog</a> ·
<a href="/api/v1/health">health</a></p>
<h2>Experiments</h2>
{table}
</body></html>
"""


@router.get("/", response_class=HTMLResponse)
async def index(conn: ConnDep) -> HTMLResponse:
    experiments = await repo.page(conn, project_id=None, status=None, before=None, limit=100)
    if not experiments:
        table = "<p>No experiments yet.</p>"
    else:
        rows = "".join(
            f'<tr><td><a href="/api/v1/experiments/{e.id}">{escape(e.name or str(e.id))}</a>'
            f"</td><td>{escape(e.project)}</td>"
            f'<td class="status {e.status}">{e.status}</td>'
            f"<td>{escape(e.agent_id or '')}</td>"
            f"<td>{e.created_at:%Y-%m-%d %H:%M:%S}</td>"
            f'<td><a href="/api/v1/experiments/{e.id}/logs">log</a></td></tr>'
            for e in experiments
        )
        table = (
            "<table><thead><tr><th>Experiment</th><th>Project</th><th>Status</th>"
            f"<th>Agent</th><th>Created</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return HTMLResponse(_PAGE.format(table=table))
