"""The ``fleetlab`` commands that talk to the API: projects, experiments, agents, tokens.

Tables for people, ``--json`` for scripts. Exit codes scripts can trust:
0 done; 1 the API refused (4xx other than 404); 2 bad usage; 3 the API could not be reached
or failed (5xx); 4 not found (404); ``logs -f`` ends with 0 when the experiment succeeded and
5 when it ended otherwise.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

from fleetlab_cli.client import ApiError, Client, plain

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND, EXIT_RUN_FAILED = 1, 2, 3, 4, 5
TERMINAL = {"succeeded", "failed", "stopped", "lost"}

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ApiOpt = Annotated[
    str | None,
    typer.Option(
        "--api",
        envvar="FLEETLAB_API_URL",
        help="API URL (default: $FLEETLAB_HOME/stack.json, else http://127.0.0.1:5080).",
    ),
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="FLEETLAB_TOKEN", help="API token.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

project_app = typer.Typer(help="Projects: create, list, show.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)


def _fail(code: int, message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _call(api: str | None, token: str | None, action: Callable[[Client], Any]) -> Any:
    """Run ``action`` with a client; API errors become messages and exit codes."""
    try:
        with Client(api, token) as client:
            return plain(action(client))
    except ApiError as exc:
        detail = "".join(f"\n  {k}: {v}" for k, v in exc.fields.items())
        if exc.status == 404:
            _fail(EXIT_NOT_FOUND, exc.message)
        code = EXIT_UNREACHABLE if exc.status >= 500 else EXIT_REFUSED
        _fail(code, f"{exc.message}{detail}")
    except httpx.HTTPError as exc:
        _fail(EXIT_UNREACHABLE, f"cannot reach the API: {exc}")


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _table(columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(*columns, show_edge=False, pad_edge=False, highlight=False)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)


def _show(record: dict[str, Any]) -> None:
    table = Table(show_header=False, show_edge=False, pad_edge=False, highlight=False)
    for key, value in record.items():
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        table.add_row(f"[bold]{key}[/bold]", "" if value is None else text)
    out.print(table)


# -- projects ----------------------------------------------------------------------------


@project_app.command("create")
def project_create(
    name: Annotated[str | None, typer.Argument(help="Name (default: the file's).")] = None,
    command: Annotated[
        str | None, typer.Option(help="The command, split on spaces: 'python3 train.py'.")
    ] = None,
    schema: Annotated[
        Path | None, typer.Option(help="FGLab schema file (JSON) of the options.", exists=True)
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Import ml.yaml, FGMachine projects.json or an FGLab schema.",
            exists=True,
        ),
    ] = None,
    option_style: Annotated[
        str | None, typer.Option(help="plain, single-dash, double-dash, function.")
    ] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a project from options, or import one from a file."""
    if from_file is not None:
        made: list[dict[str, Any]] = _call(
            api, token, lambda c: c.import_project(from_file, name=name)
        )
        if command:
            argv = shlex.split(command)

            def set_command(client: Client) -> list[dict[str, Any]]:
                return [plain(client.update_project(p["id"], command=argv)) for p in made]

            made = _call(api, token, set_command)
    else:
        if not name:
            _fail(EXIT_USAGE, "a name is needed (or --from FILE)")
        body: dict[str, Any] = {"name": name, "command": shlex.split(command or "")}
        if schema is not None:
            try:
                body["schema"] = json.loads(schema.read_text())
            except ValueError as exc:
                _fail(EXIT_USAGE, f"{schema}: not JSON: {exc}")
        if option_style:
            body["option_style"] = option_style
        made = [_call(api, token, lambda c: c.create_project(**body))]
    if as_json:
        _print_json(made if len(made) > 1 else made[0])
        return
    for project in made:
        out.print(f"created project [bold]{project['name']}[/bold] ({project['id']})")


@project_app.command("list")
def project_list(api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every project."""
    projects: list[dict[str, Any]] = _call(api, token, lambda c: c.projects())
    if as_json:
        _print_json(projects)
        return
    _table(
        ["name", "id", "command", "options"],
        [[p["name"], p["id"], " ".join(p["command"]), ", ".join(p["schema"])] for p in projects],
    )


@project_app.command("show")
def project_show(
    ref: str, api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """One project, by name or id."""
    project: dict[str, Any] = _call(api, token, lambda c: c.project(ref))
    if as_json:
        _print_json(project)
    else:
        _show(project)


# -- experiments -------------------------------------------------------------------------


def _coerce(spec: dict[str, Any] | None, key: str, text: str) -> Any:
    """A command-line value as the option's type says (unknown keys: JSON, else text)."""
    kind = (spec or {}).get("type")
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        return text  # the API names the option and says why
    if kind == "bool":
        return {"true": True, "false": False}.get(text.lower(), text)
    if kind == "string":
        return text
    if kind == "enum":
        for value in spec.get("values", []) if spec else []:
            if str(value) == text or (isinstance(value, bool) and str(value).lower() == text):
                return value
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def submit(
    project: Annotated[str, typer.Argument(help="Project name or id.")],
    options: Annotated[list[str] | None, typer.Argument(help="key=value ...")] = None,
    name: Annotated[str | None, typer.Option(help="Experiment name.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeatable).")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit one experiment: options as key=value, typed by the project's schema."""
    pairs: dict[str, str] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(EXIT_USAGE, f"{item!r}: options are key=value")
        pairs[key] = value

    def run(client: Client) -> dict[str, Any]:
        schema = plain(client.project(project))["schema"]
        typed = {k: _coerce(schema.get(k), k, v) for k, v in pairs.items()}
        return plain(client.submit(project, typed, name=name, tags=tag or []))  # type: ignore[no-any-return]

    experiment: dict[str, Any] = _call(api, token, run)
    if as_json:
        _print_json(experiment)
    else:
        out.print(f"{experiment['id']} {experiment['status']}")


def ls(
    project: Annotated[str | None, typer.Option(help="Project name or id.")] = None,
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, …")] = None,
    tag: Annotated[str | None, typer.Option(help="Only experiments with this tag.")] = None,
    sweep: Annotated[str | None, typer.Option(help="Only the trials of this sweep.")] = None,
    sort: Annotated[
        str | None, typer.Option(help="created_at, options.lr, -results._scores.acc, …")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List experiments, newest first unless --sort says otherwise."""
    filters = {"project": project, "status": status, "tag": tag, "sweep": sweep, "sort": sort}

    def run(client: Client) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for item in client.iter_experiments(**filters, limit=min(limit, 1000)):
            items.append(plain(item))
            if len(items) >= limit:
                break
        return items

    items: list[dict[str, Any]] = _call(api, token, run)
    if as_json:
        _print_json(items)
        return
    rows = []
    for e in items:
        scores = e.get("results", {}).get("_scores") or {}
        rows.append(
            [
                e["id"],
                e["project"],
                e["name"],
                e["status"],
                " ".join(f"{k}={v}" for k, v in e["options"].items()),
                " ".join(f"{k}={v}" for k, v in scores.items()),
                e["created_at"][:19].replace("T", " "),
            ]
        )
    _table(["id", "project", "name", "status", "options", "scores", "created"], rows)


def show(ref: str, api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One experiment."""
    experiment: dict[str, Any] = _call(api, token, lambda c: c.experiment(ref))
    if as_json:
        _print_json(experiment)
    else:
        _show(experiment)


def logs(
    ref: str,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Follow until it ends.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with -f.")] = 0.5,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print an experiment's output. With -f, follow it until the experiment ends, then exit
    0 if it succeeded and 5 if not."""

    def run(client: Client) -> str | None:
        seen = 0
        while True:
            status = client.experiment(ref).status if follow else None
            text = client.logs(ref, from_seq=seen + 1)
            if text:
                typer.echo(text, nl=False)
                seen += text.count("\n")
            if not follow:
                return None
            if status in TERMINAL:
                # Lines written before the end are all stored once it is ended: read the rest.
                rest = client.logs(ref, from_seq=seen + 1)
                typer.echo(rest, nl=False)
                return str(status)
            time.sleep(interval)

    final = _call(api, token, run)
    if final is not None and final != "succeeded":
        raise typer.Exit(EXIT_RUN_FAILED)


def stop(
    ref: str,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the record).")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop an experiment (a queued one never runs)."""
    experiment: dict[str, Any] = _call(api, token, lambda c: c.stop(ref, reason))
    if as_json:
        _print_json(experiment)
    else:
        out.print(f"stopping {experiment['id']}")


def restart(ref: str, api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Run an experiment again as a new one with the same options."""
    experiment: dict[str, Any] = _call(api, token, lambda c: c.restart(ref))
    if as_json:
        _print_json(experiment)
    else:
        out.print(f"{experiment['id']} {experiment['status']}")


def rm(ref: str, api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Delete an ended experiment's record."""
    _call(api, token, lambda c: c.delete_experiment(ref))
    if as_json:
        _print_json({"deleted": ref})
    else:
        out.print(f"deleted {ref}")


def agents(api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """The agents the scheduler knows."""
    found: list[dict[str, Any]] = _call(api, token, lambda c: c.agents())
    if as_json:
        _print_json(found)
        return

    def use(agent: dict[str, Any]) -> tuple[str, str]:
        # The machine's latest resource sample (MLBench's CPU/memory per worker).
        u = agent.get("usage")
        if not u:
            return "-", "-"
        gib = 1024
        memory = f"{u['memory_used_mb'] / gib:.1f}/{u['memory_total_mb'] / gib:.1f} GiB"
        return f"{u['cpu_percent']:.0f}%", memory

    _table(
        ["id", "host", "status", "busy/slots", "cpu", "memory", "labels", "last seen"],
        [
            [
                a["id"],
                a["hostname"],
                a["status"],
                f"{a['busy']}/{a['slots']}",
                *use(a),
                ",".join(a["labels"]),
                a["last_seen"],
            ]
            for a in found
        ],
    )


# -- tokens ------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    name: str, api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """A new API token; its secret is printed this once."""
    made: dict[str, Any] = _call(api, token, lambda c: c.create_token(name))
    if as_json:
        _print_json(made)
    else:
        typer.echo(made["token"])
        err.print(f"token {made['name']!r} created: keep it, it is not shown again")


@token_app.command("list")
def token_list(api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every token (never the secrets)."""
    tokens: list[dict[str, Any]] = _call(api, token, lambda c: c.tokens())
    if as_json:
        _print_json(tokens)
        return
    _table(
        ["name", "id", "prefix", "created", "last used"],
        [[t["name"], t["id"], t["prefix"], t["created_at"], t["last_used_at"]] for t in tokens],
    )


@token_app.command("revoke")
def token_revoke(
    ref: str, api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Revoke a token by name or id."""
    _call(api, token, lambda c: c.revoke_token(ref))
    if as_json:
        _print_json({"revoked": ref})
    else:
        out.print(f"revoked {ref}")


def register(app: typer.Typer) -> None:
    """Add these commands to the ``fleetlab`` app."""
    app.add_typer(project_app, name="project")
    app.add_typer(token_app, name="token")
    for command in (submit, ls, show, logs, stop, restart, rm, agents):
        app.command()(command)
