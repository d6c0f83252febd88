"""The dashboard's pages and static files.

Pages are jinja2 templates rendered by the server; the home page carries its data, the
others a shell that a plain ES module fills from the REST API and keeps live from
``/api/v1/events`` and the log stream. Nothing is built at run time: the served scripts are
the files under ``static/`` (third-party ones under ``static/vendor/``, see ``make vendor``).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from fleetlab_api.auth import TOKEN_COOKIE
from fleetlab_api.deps import ConnDep
from fleetlab_api.errors import NotFoundError
from fleetlab_api.experiments import repository as experiments
from fleetlab_api.experiments import service as experiment_service
from fleetlab_api.projects import repository as projects
from fleetlab_api.tokens import repository as tokens

router = APIRouter(include_in_schema=False)

HERE = Path(__file__).parent
STATIC = (HERE / "static").resolve()
env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
STATUSES = ("queued", "running", "succeeded", "failed", "stopped", "lost")
NAV = (
    ("/", "Home"),
    ("/experiments", "Experiments"),
    ("/agents", "Agents"),
    ("/sweeps", "Sweeps"),
    ("/webhooks", "Webhooks"),
)


def _static_version() -> str:
    # Changes whenever a served file does, so browsers never run a stale script.
    newest = max((p.stat().st_mtime_ns for p in STATIC.rglob("*") if p.is_file()), default=0)
    return format(newest, "x")[-8:]


VERSION = _static_version()


def render(request: Request, template: str, active: str, **context: Any) -> HTMLResponse:
    state = request.app.state.fleetlab
    body = env.get_template(template).render(
        nav=NAV,
        active=active,
        v=VERSION,
        auth_on=state.settings.auth.on,
        token_mode=state.settings.auth.on and not state.settings.auth.password.get_secret_value(),
        statuses=STATUSES,
        **context,
    )
    return HTMLResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/static/{path:path}")
async def static(path: str) -> Response:
    """A file under static/ (never outside it)."""
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise NotFoundError("file", path)
    media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if target.suffix in (".js", ".mjs"):
        media = "text/javascript"
    return FileResponse(target, media_type=media, headers={"Cache-Control": "max-age=3600"})


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, conn: ConnDep) -> HTMLResponse:
    """Projects with their experiments by status, agents, the latest experiments."""
    counts: dict[str, dict[str, int]] = {}
    for row in await conn.fetch(
        "SELECT project_id, status, count(*) AS n FROM experiments GROUP BY project_id, status"
    ):
        counts.setdefault(str(row["project_id"]), {})[row["status"]] = row["n"]
    rows = await projects.list_all(conn)
    latest = await experiments.page(conn, project_id=None, status=None, before=None, limit=20)
    return render(
        request,
        "home.html",
        "/",
        projects=[(p, counts.get(str(p.id), {})) for p in rows],
        latest=latest,
    )


@router.get("/projects/{ref}", response_class=HTMLResponse)
async def project_page(request: Request, ref: str) -> HTMLResponse:
    return render(request, "project.html", "/", ref=ref)


@router.get("/experiments", response_class=HTMLResponse)
async def experiments_page(request: Request) -> HTMLResponse:
    return render(request, "experiments.html", "/experiments")


@router.get("/experiments/{ref}", response_class=HTMLResponse)
async def experiment_page(request: Request, ref: str, conn: ConnDep) -> HTMLResponse:
    # The notes come with the page: what the user types before the script runs is kept.
    try:
        notes = (await experiment_service.get(conn, ref)).notes
    except NotFoundError:
        notes = ""
    return render(request, "experiment.html", "/experiments", ref=ref, notes=notes)


@router.get("/compare", response_class=HTMLResponse)
async def compare_page(request: Request) -> HTMLResponse:
    return render(request, "compare.html", "/experiments")


@router.get("/agents", response_class=HTMLResponse)
async def agents_page(request: Request) -> HTMLResponse:
    return render(request, "agents.html", "/agents")


@router.get("/sweeps", response_class=HTMLResponse)
async def sweeps_page(request: Request) -> HTMLResponse:
    return render(request, "sweeps.html", "/sweeps")


@router.get("/sweeps/{ref}", response_class=HTMLResponse)
async def sweep_page(request: Request, ref: str) -> HTMLResponse:
    return render(request, "sweep.html", "/sweeps", ref=ref)


@router.get("/webhooks", response_class=HTMLResponse)
async def webhooks_page(request: Request) -> HTMLResponse:
    return render(request, "webhooks.html", "/webhooks")


def _local(next_path: str) -> str:
    """Where to go after logging in: a path on this server only, never another site."""
    if not next_path.startswith("/") or next_path.startswith("//") or "\\" in next_path:
        return "/"
    return next_path


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "/") -> HTMLResponse:
    """Log in with an API token (``fleetlab token create``); the password mode uses the
    browser's own HTTP basic prompt instead."""
    return render(request, "login.html", "", next=_local(next), error=None)


@router.post("/login", response_model=None)
async def login(
    request: Request,
    conn: ConnDep,
    token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    if not token or not await tokens.check(conn, token.strip()):
        page = render(
            request, "login.html", "", next=_local(next), error="That token is not valid."
        )
        page.status_code = 401
        return page
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(
        TOKEN_COOKIE,
        token.strip(),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=30 * 24 * 3600,
    )
    return response


@router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(TOKEN_COOKIE)
    return response
