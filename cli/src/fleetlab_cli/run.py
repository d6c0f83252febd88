"""``fleetlab run [DIR]``: package a project folder, upload it, submit, and follow.

``DIR`` (default: the current folder) holds ``fleetlab.yaml`` (see docs/run.md) or a
MachineLabs ``ml.yaml``. The folder is packed as a .tar.gz — without what its ``.gitignore``
files (and the ``exclude`` list of ``fleetlab.yaml``) leave out, nor ``.git/`` — and uploaded
as a code snapshot with a progress bar; the project is created, or updated to match the file,
with the snapshot as its default code; one experiment is submitted with the options of the
file and of the command line, and its id printed. ``--follow`` prints its output until it
ends and exits with its outcome: 0 when it succeeded; the process's exit code when it failed
(128 + N when signal N killed it, 1 when it never started); 130 when it was stopped; 75 when
it was lost. Before the experiment exists, the usual codes: 1 refused by the API, 2 bad
usage (a bad fleetlab.yaml), 3 API unreachable, 4 not found.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shlex
import stat
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pathspec
import typer
import yaml
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from fleetlab_cli.client import ApiError, Client, plain
from fleetlab_cli.commands import (
    EXIT_USAGE,
    TERMINAL,
    ApiOpt,
    JsonOpt,
    TokenOpt,
    _call,
    _coerce,
    _fail,
    _print_json,
    err,
    out,
)

PROJECT_FILE = "fleetlab.yaml"
ML_YAML = "ml.yaml"
EXIT_STOPPED = 130
EXIT_LOST = 75
# Never packed, whatever .gitignore says.
ALWAYS_EXCLUDED = [".git/", ".fleetlab/"]
# fleetlab.yaml keys that are not the project's: what `fleetlab run` itself reads.
RUN_KEYS = {"options", "exclude"}
# Every run-spec field, with the value it has when the file does not name it: a field removed
# from fleetlab.yaml goes back to its default when the project is updated.
RUN_DEFAULTS: dict[str, Any] = {
    "schema": {},
    "option_style": "double-dash",
    "boolean": "mandatory",
    "parameters": [],
    "env": {},
    "timeout_s": None,
    "max_retries": 0,
    "labels": [],
    "resources": {"cpus": 1.0, "gpus": 0, "memory_mb": 0},
    "inputs": [],
    "capacity": None,
    "results": None,
    "workers": 1,
}
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class Plan:
    """What a project folder asks for."""

    root: Path
    kind: str  # "fleetlab.yaml" or "ml.yaml"
    project: dict[str, Any] = field(default_factory=dict)  # the project's JSON body
    options: dict[str, Any] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.project["name"])


def _usage(message: str) -> Exception:
    _fail(EXIT_USAGE, message)


def project_name(root: Path) -> str:
    """A project name from a folder's name."""
    return _NAME.sub("-", root.resolve().name).strip("-.") or "project"


def read_plan(root: Path, name: str | None = None) -> Plan:
    """Read ``fleetlab.yaml`` or ``ml.yaml`` of ``root``; exit 2 naming the file and key at
    fault."""
    if not root.is_dir():
        raise _usage(f"{root}: not a folder")
    spec_file = root / PROJECT_FILE
    if not spec_file.is_file():
        if (root / ML_YAML).is_file():
            return Plan(root, ML_YAML, {"name": name or project_name(root)})
        raise _usage(f"{root}: no {PROJECT_FILE} (nor {ML_YAML}) in this folder")
    try:
        data = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise _usage(f"{spec_file}: cannot read it: {exc}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise _usage(f"{spec_file}: a mapping of settings is expected")
    body: dict[str, Any] = {k: v for k, v in data.items() if k not in RUN_KEYS}
    body["name"] = name or body.get("name") or project_name(root)
    if not isinstance(body["name"], str):
        raise _usage(f"{spec_file}: name: a string is expected")
    command = body.get("command")
    if isinstance(command, str):
        body["command"] = shlex.split(command)
    elif command is None:
        raise _usage(f"{spec_file}: command: the program to run is needed, e.g. python3 train.py")
    schema = body.get("schema")
    if isinstance(schema, str):  # a path to an FGLab schema file, next to fleetlab.yaml
        try:
            body["schema"] = yaml.safe_load((root / schema).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise _usage(f"{spec_file}: schema: cannot read {schema}: {exc}") from None
    options = data.get("options") or {}
    exclude = data.get("exclude") or []
    if not isinstance(options, dict):
        raise _usage(f"{spec_file}: options: a mapping of option values is expected")
    if not isinstance(exclude, list) or not all(isinstance(p, str) for p in exclude):
        raise _usage(f"{spec_file}: exclude: a list of .gitignore-style patterns is expected")
    return Plan(root, PROJECT_FILE, {**RUN_DEFAULTS, **body}, options, exclude)


# -- packing ------------------------------------------------------------------------------


def _ignore_spec(directory: Path) -> pathspec.GitIgnoreSpec | None:
    gitignore = directory / ".gitignore"
    if not gitignore.is_file():
        return None
    try:
        lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def files_to_pack(root: Path, exclude: list[str] | None = None) -> tuple[list[str], list[str]]:
    """The files of ``root`` to pack (relative, sorted) and the links left out.

    Honours every ``.gitignore`` (each for the paths under its own folder, as git does),
    plus ``exclude`` and ``.git/``.
    """
    root = root.resolve()
    base = pathspec.GitIgnoreSpec.from_lines([*ALWAYS_EXCLUDED, *(exclude or [])])
    specs: list[tuple[str, pathspec.GitIgnoreSpec]] = [("", base)]
    kept: list[str] = []
    links: list[str] = []

    def ignored(relative: str, is_dir: bool) -> bool:
        result = False
        for prefix, spec in specs:
            if prefix and not relative.startswith(prefix):
                continue
            inner = relative[len(prefix) :] + ("/" if is_dir else "")
            # Later (deeper) files decide over earlier ones, as in git.
            outcome = spec.check_file(inner).include
            if outcome is not None:
                result = outcome
        return result

    def walk(directory: Path, relative: str) -> None:
        spec = _ignore_spec(directory)
        if spec is not None:
            specs.append((relative, spec))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise _usage(f"{directory}: cannot list it: {exc}") from None
        for entry in entries:
            path = f"{relative}{entry.name}"
            if entry.is_symlink():
                if not ignored(path, False):
                    links.append(path)
                continue
            if entry.is_dir():
                if not ignored(path, True):
                    walk(Path(entry.path), f"{path}/")
            elif entry.is_file() and not ignored(path, False):
                kept.append(path)
        if spec is not None:
            specs.pop()

    walk(root, "")
    return sorted(kept), links


def pack(root: Path, paths: list[str]) -> bytes:
    """A deterministic .tar.gz of ``paths`` under ``root`` (no owners, no times)."""
    raw = io.BytesIO()
    with (
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for relative in paths:
            path = root / relative
            info = tarfile.TarInfo(relative)
            st = path.stat()
            info.size = st.st_size
            info.mode = (
                0o755 if st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) else 0o644
            )
            info.mtime = 0
            with path.open("rb") as content:
                tar.addfile(info, content)
    return raw.getvalue()


# -- following ----------------------------------------------------------------------------


def exit_code_of(experiment: dict[str, Any]) -> int:
    """The exit code ``fleetlab run -f`` ends with for an ended experiment."""
    status = experiment.get("status")
    if status == "succeeded":
        return 0
    if status == "stopped":
        return EXIT_STOPPED
    if status == "lost":
        return EXIT_LOST
    code = experiment.get("exit_code")
    if isinstance(code, int) and code > 0:
        return min(code, 255)
    signal = experiment.get("signal")
    if isinstance(signal, int) and signal > 0:
        return min(128 + signal, 255)
    return 1


def follow(client: Client, experiment_id: str, to_stderr: bool, interval: float = 0.3) -> Any:
    """Print the output until the experiment ends; its final record."""
    sink = sys.stderr if to_stderr else sys.stdout
    seen = 0
    while True:
        experiment = client.experiment(experiment_id)
        text = client.logs(experiment_id, from_seq=seen + 1)
        if text:
            sink.write(text)
            sink.flush()
            seen += text.count("\n")
        if experiment.status in TERMINAL:
            # Lines written before the end are all stored once it has ended: read the rest.
            rest = client.logs(experiment_id, from_seq=seen + 1)
            sink.write(rest)
            sink.flush()
            return experiment
        time.sleep(interval)


# -- the command --------------------------------------------------------------------------


def _upload(client: Client, data: bytes, quiet: bool) -> dict[str, Any]:
    with Progress(
        TextColumn("uploading code"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        disable=quiet,
    ) as progress:
        task = progress.add_task("upload", total=len(data))
        snapshot: dict[str, Any] = client.upload_code(data, lambda n: progress.advance(task, n))
    return snapshot


def run(
    directory: Annotated[
        Path, typer.Argument(help="The project folder (fleetlab.yaml or ml.yaml).")
    ] = Path(),
    options: Annotated[
        list[str] | None, typer.Argument(help="key=value ..., over the file's options.")
    ] = None,
    follow_: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Print the output until it ends; exit with its code."),
    ] = False,
    name: Annotated[str | None, typer.Option(help="Experiment name.")] = None,
    project: Annotated[
        str | None, typer.Option(help="Project name (default: the file's, else the folder's).")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeatable).")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the project in DIR: pack its code (honouring .gitignore), upload it, create or
    update the project, submit one experiment and print its id; -f follows it to the end."""
    if "=" in str(directory) and not directory.exists():
        # `fleetlab run lr=0.5`: options for the project in the current folder.
        options = [str(directory), *(options or [])]
        directory = Path()
    pairs: dict[str, str] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(EXIT_USAGE, f"{item!r}: options are key=value")
        pairs[key] = value
    plan = read_plan(directory, project)
    paths, links = files_to_pack(directory, plan.exclude)
    for link in links:
        err.print(f"[yellow]skipped[/yellow] {link}: a symbolic link", highlight=False)
    if not paths:
        _fail(EXIT_USAGE, f"{directory}: no files to pack")
    data = pack(directory.resolve(), paths)

    def submit(client: Client) -> dict[str, Any]:
        snapshot = _upload(client, data, quiet=as_json)
        digest = snapshot["digest"]
        if plan.kind == ML_YAML:
            client.import_project(
                plan.root / ML_YAML, format="ml.yaml", name=plan.name, replace=True
            )
            schema: dict[str, Any] = plain(client.update_project(plan.name, code=digest))["schema"]
        else:
            body = {**plan.project, "code": digest}
            try:
                existing: dict[str, Any] | None = plain(client.project(plan.name))
            except ApiError as exc:
                if exc.status != 404:
                    raise
                existing = None
            if existing is None:
                schema = plain(client.create_project(**body))["schema"]
            else:
                changes = {k: v for k, v in body.items() if k != "name"}
                schema = plain(client.update_project(existing["id"], **changes))["schema"]
        given = {k: _coerce(schema.get(k), k, v) for k, v in pairs.items()}
        made = client.submit(
            plan.name, {**plan.options, **given}, name=name, tags=tag or [], code=digest
        )
        return plain(made)  # type: ignore[no-any-return]

    experiment: dict[str, Any] = _call(api, token, submit)
    if not follow_:
        if as_json:
            _print_json(experiment)
        else:
            out.print(f"{experiment['id']} {experiment['status']}", highlight=False)
        return
    if not as_json:
        err.print(f"{experiment['id']} submitted; following its output", highlight=False)
    try:
        final: dict[str, Any] = _call(
            api, token, lambda c: follow(c, experiment["id"], to_stderr=as_json)
        )
    except KeyboardInterrupt:
        err.print(
            f"\nstopped following; {experiment['id']} goes on "
            f"(fleetlab logs -f {experiment['id']}; fleetlab stop {experiment['id']})",
            highlight=False,
        )
        raise typer.Exit(EXIT_STOPPED) from None
    if as_json:
        _print_json(final)
    else:
        reason = f" ({final['status_reason']})" if final.get("status_reason") else ""
        err.print(f"{final['id']} {final['status']}{reason}", highlight=False)
    raise typer.Exit(exit_code_of(final))


def register(app: typer.Typer) -> None:
    """Add ``fleetlab run`` to the app."""
    app.command("run")(run)
