"""How an experiment's process is started: the run spec and FGMachine's option styles.

The argv is always a list handed to ``exec`` directly (never a shell), so an option value such
as ``"; rm -rf /"`` stays one harmless argument.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

OptionStyle = Literal["plain", "single-dash", "double-dash", "function"]
BooleanStyle = Literal["mandatory", "optional"]
OptionValue = bool | int | float | str

# An artifact of an earlier experiment as an input: artifact://<experiment-id>/<artifact name>.
ARTIFACT_SCHEME = "artifact://"


def artifact_ref(url: str) -> tuple[uuid.UUID, str] | None:
    """The (experiment id, artifact name) an ``artifact://`` URL names; None for any other
    URL. Raises ValueError for a malformed one."""
    if not url.startswith(ARTIFACT_SCHEME):
        return None
    experiment, _, name = url[len(ARTIFACT_SCHEME) :].partition("/")
    try:
        experiment_id = uuid.UUID(experiment)
    except ValueError:
        raise ValueError(
            f"{url!r}: write artifact://<experiment id>/<artifact name>; "
            f"{experiment!r} is not an experiment id"
        ) from None
    if not name or name.startswith("/"):
        raise ValueError(f"{url!r}: the artifact name after the experiment id is missing")
    return experiment_id, name


class Parameter(BaseModel):
    """A MachineLabs parameter: one argument passed as written, after the options."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    pass_as: str = Field(alias="pass-as", min_length=1)


class Input(BaseModel):
    """A MachineLabs input: fetched into ``inputs/<name>`` before the process starts."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    url: str = Field(min_length=1, max_length=4096)

    @field_validator("name")
    @classmethod
    def _inside_inputs(cls, name: str) -> str:
        # The name is a path under inputs/: it must not climb out of it or hide in it.
        parts = name.replace("\\", "/").split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in name:
            raise ValueError(f"{name!r} must be a relative path that stays inside inputs/")
        return name

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if artifact_ref(url) is not None:
            return url
        if not url.startswith(("http://", "https://")):
            raise ValueError(
                "only http://, https:// and artifact://<experiment id>/<artifact name> URLs "
                "can be fetched"
            )
        return url


class Resources(BaseModel):
    """What one experiment needs of an agent: CPU slots, GPUs, memory."""

    model_config = ConfigDict(extra="forbid")

    cpus: float = Field(default=1.0, ge=0, le=4096)
    gpus: int = Field(default=0, ge=0, le=64)
    memory_mb: int = Field(default=0, ge=0)


class RunSpec(BaseModel):
    """What the agent needs to start a process. Carried in the submission and assignment events."""

    model_config = ConfigDict(extra="ignore")

    # Empty: the command is the agent's own, from its FGMachine projects.json; only agents
    # that serve the project take it.
    command: list[str] = Field(default_factory=list)
    option_style: OptionStyle = "double-dash"
    boolean: BooleanStyle = "mandatory"
    parameters: list[Parameter] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float | None = None
    max_retries: int = 0
    # Placement: the agent must carry every label and have the resources free.
    labels: list[str] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    inputs: list[Input] = Field(default_factory=list)
    # FGLab/FGMachine: the fraction of a machine one experiment takes (0 < capacity <= 1).
    capacity: float | None = None
    # FGMachine's results folder, relative to the working directory: JSON files in it are
    # merged into the experiment's results, every file is uploaded at the end.
    results: str | None = None
    # The content digest of a code snapshot (POST /api/v1/code) unpacked into the working dir.
    code: str | None = None
    # MLBench: processes started together, all or nothing, each with ``resources``.
    workers: int = 1
    # ML Experimenter: stdout lines ``#<name> <step> <value>`` are metric points too.
    printed_metrics: bool = False


def _plain_value(value: OptionValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _function_value(value: OptionValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def option_args(
    options: dict[str, OptionValue],
    experiment_id: str,
    style: OptionStyle,
    boolean: BooleanStyle = "mandatory",
) -> list[str]:
    """The option arguments in FGMachine's style, with the experiment id appended as ``_id``.

    For ``{seed: 123, model: "cnn.v2", L2: true}``: plain ``seed 123 model cnn.v2 L2 true``;
    single-dash ``-seed 123 …``; double-dash ``--seed=123 …``. With ``boolean: optional``
    false flags are dropped and true ones passed bare. The function style is handled by
    :func:`build_argv`, since it rewrites the command's last word.
    """
    items: list[tuple[str, OptionValue]] = [*options.items(), ("_id", experiment_id)]
    args: list[str] = []
    for key, value in items:
        if boolean == "optional" and isinstance(value, bool):
            if not value:
                continue
            flag = {"plain": key, "single-dash": f"-{key}", "double-dash": f"--{key}"}
            args.append(flag.get(style, key))
            continue
        if style == "plain":
            args += [key, _plain_value(value)]
        elif style == "single-dash":
            args += [f"-{key}", _plain_value(value)]
        elif style == "double-dash":
            args.append(f"--{key}={_plain_value(value)}")
        else:  # pragma: no cover - build_argv handles the function style
            raise ValueError(style)
    return args


def build_argv(spec: RunSpec, options: dict[str, OptionValue], experiment_id: str) -> list[str]:
    """The full argv for one experiment: command, options in the project's style, parameters."""
    argv = list(spec.command)
    if spec.option_style == "function":
        # FGMachine: the command's last word is a function name called with 'key',value pairs,
        # e.g. matlab -nodisplay -r "clustering('seed',123,'_id','…');".
        fn = argv.pop() if len(argv) > 1 else "main"
        pairs: list[str] = []
        items: list[tuple[str, OptionValue]] = [*options.items(), ("_id", experiment_id)]
        for key, value in items:
            if spec.boolean == "optional" and isinstance(value, bool):
                # As in FGMachine: a false flag is dropped, a true one passed as its name alone.
                if value:
                    pairs.append(_function_value(key))
                continue
            pairs += [_function_value(key), _function_value(value)]
        argv.append(f"{fn}({','.join(pairs)});")
    else:
        argv += option_args(options, experiment_id, spec.option_style, spec.boolean)
    argv += [p.pass_as for p in spec.parameters]
    return argv


def dumps_options(options: dict[str, Any]) -> str:
    """Options as canonical JSON (sorted keys), for hashing and comparing."""
    return json.dumps(options, sort_keys=True, separators=(",", ":"))
