"""``fleetlab sweep``: grid and random searches over a project's options.

    fleetlab sweep PROJECT --grid lr=0.1,0.01 --range epochs=1:5:3 [--parallelism 2]
    fleetlab sweep PROJECT --random 20 --seed 7 --range lr=0.0001:0.1:log
    fleetlab sweep show ID | fleetlab sweep stop ID | fleetlab sweep list

Exit codes as the other commands (see :mod:`fleetlab_cli.commands`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from fleetlab_cli.commands import (
    EXIT_USAGE,
    ApiOpt,
    JsonOpt,
    TokenOpt,
    _call,
    _fail,
    _print_json,
    _show,
    _table,
    out,
)


class _SweepGroup(TyperGroup):
    """``fleetlab sweep PROJECT …`` creates a sweep; ``show``, ``stop`` and ``list`` are
    subcommands (``fleetlab sweep create PROJECT …`` also works, for a project named so)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # ctx: Typer's click Context (Typer vendors its own click).
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


sweep_app = typer.Typer(
    cls=_SweepGroup,
    help="Sweeps: a grid or random search over a project's options. "
    "`fleetlab sweep PROJECT --grid k=v1,v2 …` creates one (as `sweep create`).",
    no_args_is_help=True,
)


def _number(text: str, what: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        _fail(EXIT_USAGE, f"{what}: {text!r} is not a number")


def _pair(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
        _fail(EXIT_USAGE, f"{flag} {item!r}: expected key=value")
    return key, value


def parameters_from(grid: list[str], ranges: list[str]) -> dict[str, Any]:
    """``--grid lr=0.1,0.01`` → values (typed by the API from the project's schema);
    ``--range epochs=1:5:3`` or ``lr=0.001:0.1:3:log`` → a range (steps optional for random)."""
    parameters: dict[str, Any] = {}
    for item in grid:
        key, value = _pair(item, "--grid")
        parameters[key] = {"values": value}
    for item in ranges:
        key, value = _pair(item, "--range")
        parts = value.split(":")
        scale = "linear"
        if parts[-1] in ("log", "linear"):
            scale = parts.pop()
        if len(parts) not in (2, 3):
            _fail(EXIT_USAGE, f"--range {item!r}: expected key=MIN:MAX[:STEPS][:log]")
        spec: dict[str, Any] = {
            "min": _number(parts[0], f"--range {key} min"),
            "max": _number(parts[1], f"--range {key} max"),
            "scale": scale,
        }
        if len(parts) == 3:
            steps = _number(parts[2], f"--range {key} steps")
            if not isinstance(steps, int):
                _fail(EXIT_USAGE, f"--range {item!r}: steps must be a whole number")
            spec["steps"] = steps
        parameters[key] = spec
    return parameters


def _summary(sweep: dict[str, Any]) -> None:
    counts = " ".join(f"{k}={v}" for k, v in sorted(sweep["counts"].items()))
    out.print(
        f"sweep {sweep['id']} {sweep['status']}: {sweep['done']}/{sweep['count']} trials done"
        f" ({counts})",
        highlight=False,
    )
    best = sweep.get("best")
    if best:
        out.print(
            f"best by {sweep['metric']} ({sweep['goal']}): {best['id']} "
            f"= {sweep['best_value']} with "
            + " ".join(f"{k}={v}" for k, v in best["options"].items()),
            highlight=False,
        )


@sweep_app.command("create")
def create(
    project: Annotated[str, typer.Argument(help="Project name or id.")],
    grid: Annotated[
        list[str] | None, typer.Option("--grid", help="key=v1,v2,… values (repeatable).")
    ] = None,
    range_: Annotated[
        list[str] | None,
        typer.Option("--range", help="key=MIN:MAX[:STEPS][:log] (repeatable)."),
    ] = None,
    random: Annotated[
        int | None, typer.Option("--random", help="A random sweep of this many trials.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the random draws.")] = None,
    parallelism: Annotated[
        int | None, typer.Option(help="At most this many trials run at once.")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="What ranks trials: accuracy, results._scores.x, …")
    ] = None,
    goal: Annotated[str, typer.Option(help="maximize or minimize.")] = "maximize",
    name: Annotated[str | None, typer.Option(help="Sweep name (trials: 'NAME #i').")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a sweep: every combination of the values (grid), or --random N draws."""
    parameters = parameters_from(grid or [], range_ or [])
    fields: dict[str, Any] = {
        "method": "random" if random is not None else "grid",
        "count": random,
        "seed": seed,
        "parallelism": parallelism,
        "metric": metric,
        "goal": goal,
        "name": name,
    }
    sweep: dict[str, Any] = _call(
        api, token, lambda c: c.create_sweep(project, parameters, **fields)
    )
    if as_json:
        _print_json(sweep)
    else:
        _summary(sweep)


@sweep_app.command("show")
def show(ref: str, api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """A sweep's status, progress and best trial."""
    sweep: dict[str, Any] = _call(api, token, lambda c: c.sweep(ref))
    if as_json:
        _print_json(sweep)
        return
    _summary(sweep)
    _show({k: sweep[k] for k in ("method", "parameters", "parallelism", "seed", "created_at")})


@sweep_app.command("stop")
def stop(
    ref: str,
    reason: Annotated[str | None, typer.Option(help="Why (kept in each trial).")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop a sweep: queued trials never run, running ones are stopped."""
    sweep: dict[str, Any] = _call(api, token, lambda c: c.stop_sweep(ref, reason))
    if as_json:
        _print_json(sweep)
    else:
        out.print(f"stopping sweep {sweep['id']}", highlight=False)


@sweep_app.command("list")
def list_(
    project: Annotated[str | None, typer.Option(help="Project name or id.")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sweeps, newest first."""
    page: dict[str, Any] = _call(api, token, lambda c: c.sweeps(project=project))
    if as_json:
        _print_json(page["items"])
        return
    _table(
        ["id", "project", "name", "method", "status", "done/trials", "best"],
        [
            [
                s["id"],
                s["project"],
                s["name"],
                s["method"],
                s["status"],
                f"{s['done']}/{s['count']}",
                s["best_value"],
            ]
            for s in page["items"]
        ],
    )


def register(app: typer.Typer) -> None:
    """Add ``fleetlab sweep`` to the app."""
    app.add_typer(sweep_app, name="sweep")
