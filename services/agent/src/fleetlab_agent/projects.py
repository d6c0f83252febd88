"""Agent-local projects: FGMachine's ``projects.json``.

FGMachine machines knew how to run each project themselves: a working directory, a command
and its arguments, the options style, and a results folder. A Fleetlab agent started with
``--projects projects.json`` serves those projects: an experiment of a project whose run spec
has no command of its own goes only to agents that serve it, and runs with their command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleetlab_common.runspec import BooleanStyle, OptionStyle


class ProjectsFileError(ValueError):
    """A projects.json cannot be used; the message names the file, the project and the field."""


class LocalProject(BaseModel):
    """One FGMachine project entry."""

    model_config = ConfigDict(extra="forbid")

    cwd: str = "."
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    options: OptionStyle = "double-dash"
    boolean: BooleanStyle = "mandatory"
    # FGLab's fraction of the machine one experiment takes; FGMachine wrote it as a number
    # or as a string ("0.2").
    capacity: float = Field(default=1.0, gt=0, le=1)
    results: str | None = None
    gpu_capacity: float | None = Field(default=None, gt=0, le=1)
    gpu_command: str | None = None

    @field_validator("capacity", "gpu_capacity", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"not a number: {value!r}") from None
        return value

    def argv_prefix(self) -> list[str]:
        return [self.command, *self.args]

    def workdir(self, base: Path) -> Path:
        path = Path(self.cwd)
        return path if path.is_absolute() else (base / path).resolve()


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ProjectsFileError(f"project {key!r} is defined twice")
        seen[key] = value
    return seen


def load_projects(path: Path) -> dict[str, LocalProject]:
    """Read and check a projects.json; refuse it whole, with a clear message, if any entry is
    wrong (a half-loaded file would silently drop projects)."""
    try:
        raw = json.loads(path.read_text(), object_pairs_hook=_no_repeats)
    except OSError as exc:
        raise ProjectsFileError(f"{path}: cannot read it: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ProjectsFileError(f"{path}, line {exc.lineno}: not valid JSON: {exc.msg}") from None
    except ProjectsFileError as exc:
        raise ProjectsFileError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ProjectsFileError(f"{path}: expected an object of projects by id")
    projects: dict[str, LocalProject] = {}
    for name, entry in raw.items():
        try:
            projects[name] = LocalProject.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "entry"
            raise ProjectsFileError(
                f"{path}: project {name!r}, field {field!r}: {first['msg']}"
            ) from None
    return projects
