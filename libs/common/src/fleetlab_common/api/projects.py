"""Project schemas: FGLab's flat options schema and the run spec, as the API reads them."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from fleetlab_common.runspec import (
    BooleanStyle,
    Input,
    OptionStyle,
    OptionValue,
    Parameter,
    Resources,
    RunSpec,
)

OptionType = Literal["int", "float", "bool", "string", "enum"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
NUL = "\x00"


def _without_nul(value: str) -> str:
    # Neither a PostgreSQL text nor an argv word can hold one: refuse it here, by name,
    # rather than fail in the database (a 500) or in the agent's exec.
    if NUL in value:
        raise ValueError("must not contain a NUL character")
    return value


Text = Annotated[str, AfterValidator(_without_nul)]


class OptionSpec(BaseModel):
    """One option of an FGLab schema: ``type``, ``default``, and ``values`` for enums."""

    model_config = ConfigDict(extra="forbid")

    type: OptionType
    default: Any = None
    values: list[OptionValue] | None = None

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # FGLab's format has no nulls: an option without values has no "values" key.
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}

    @model_validator(mode="after")
    def _consistent(self) -> OptionSpec:
        if self.type == "enum":
            if not self.values:
                raise ValueError("an enum needs a non-empty 'values' list")
            for value in self.values:
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"enum values must be finite numbers, not {value!r}")
                if isinstance(value, str) and NUL in value:
                    raise ValueError("enum values must not contain a NUL character")
        elif self.values is not None:
            raise ValueError(f"'values' is only for enums, not {self.type}")
        if self.default is not None:
            # A default is held to the same rules as a submitted value, so that the string
            # "false" given for a bool is refused here rather than at every submission.
            error = check_value(self, self.default)[1]
            if error:
                default = self.default
                raise ValueError(f"the default {default!r} is not a valid {self.type}: {error}")
        return self


def check_value(spec: OptionSpec, value: Any) -> tuple[OptionValue | None, str | None]:
    """FGLab's rules for one value: (the normalised value, None) or (None, why it is wrong)."""
    if spec.type == "bool":
        if isinstance(value, bool):
            return value, None
        return None, f"must be true or false, not {value!r}"
    if spec.type == "int":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"must be an integer, not {value!r}"
        if isinstance(value, float) and not value.is_integer():
            return None, f"must be an integer, not {value!r}"
        return int(value), None
    if spec.type == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"must be a number, not {value!r}"
        if not math.isfinite(value):
            return None, f"must be a finite number, not {value!r}"
        return float(value), None
    if spec.type == "string":
        if not isinstance(value, str) or not value:
            return None, f"must be a non-empty string, not {value!r}"
        if NUL in value:
            return None, "must not contain a NUL character"
        return value, None
    assert spec.values is not None
    # Same type and value: JSON's true must not match an enum value 1.
    if not any(type(v) is type(value) and v == value for v in spec.values):
        return None, f"must be one of {spec.values!r}, not {value!r}"
    return value, None


def validate_options(
    schema: dict[str, OptionSpec], given: dict[str, Any]
) -> tuple[dict[str, OptionValue], dict[str, str]]:
    """Defaults filled, unknown keys refused by name, every value checked by its type.

    Returns the complete option set and the errors by field (``options.<key>``).
    """
    errors: dict[str, str] = {}
    options: dict[str, OptionValue] = {}
    for key in given:
        if key not in schema:
            errors[f"options.{key}"] = "unknown option: the project's schema has no such key"
    for key, spec in schema.items():
        if key in given:
            value, error = check_value(spec, given[key])
            if error:
                errors[f"options.{key}"] = error
            elif value is not None:
                options[key] = value
        elif spec.default is not None:
            options[key] = check_value(spec, spec.default)[0]  # type: ignore[assignment]
        else:
            errors[f"options.{key}"] = "required: the option has no default"
    return options, errors


class RunFields(BaseModel):
    """A project's run spec, as JSON fields (the contract): how and where it runs."""

    command: list[str] = Field(
        default_factory=list,
        description="argv, run without a shell; empty when agents bring their own command "
        "(FGMachine projects.json): then only agents that serve the project run it",
    )
    option_style: OptionStyle = "double-dash"
    boolean: BooleanStyle = "mandatory"
    parameters: list[Parameter] = Field(default_factory=list)
    env: dict[Text, Text] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0)
    max_retries: int = Field(default=0, ge=0, le=100)
    labels: list[Annotated[str, Field(pattern=LABEL_PATTERN)]] = Field(
        default_factory=list, max_length=32, description="every one must be on the agent"
    )
    resources: Resources = Field(default_factory=Resources)
    inputs: list[Input] = Field(default_factory=list, max_length=100)
    capacity: float | None = Field(
        default=None, gt=0, le=1, description="FGLab/FGMachine: the fraction of a machine taken"
    )
    results: Text | None = Field(
        default=None, description="FGMachine's results folder, relative to the working directory"
    )
    cwd: Text | None = Field(default=None, description="FGMachine's working directory")
    code: Text | None = Field(
        default=None,
        description="The default code snapshot (a digest from POST /api/v1/code) that "
        "experiments run unless they name their own",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description="MLBench: processes per experiment, placed all or nothing, each with "
        "`resources`; they get RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT",
    )
    image: Text | None = Field(
        default=None, description="MachineLabs' dockerImageId (one of its known environments)"
    )
    printed_metrics: bool = Field(
        default=False,
        description="ML Experimenter: stdout lines `#<name> <step> <value>` (e.g. `#loss 3 "
        "0.21`) become metric points as well as log lines",
    )

    def run_spec(self) -> RunSpec:
        return RunSpec.model_validate(self.model_dump(include=set(RunSpec.model_fields)))


class ProjectCreate(RunFields):
    """``POST /api/v1/projects``."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "mnist",
                    "command": ["python3", "train.py"],
                    "option_style": "double-dash",
                    "schema": {
                        "lr": {"type": "float", "default": 0.1},
                        "epochs": {"type": "int", "default": 10},
                        "optimiser": {"type": "enum", "default": "sgd", "values": ["sgd", "adam"]},
                        "cuda": {"type": "bool", "default": False},
                    },
                    "resources": {"cpus": 1, "gpus": 0, "memory_mb": 2048},
                    "labels": ["cpu"],
                    "max_retries": 1,
                    "timeout_s": 3600,
                }
            ]
        },
    )

    name: str = Field(pattern=NAME_PATTERN, description="Unique; usable wherever an id is.")
    schema_: dict[Text, OptionSpec] = Field(default_factory=dict, alias="schema")

    @field_validator("command")
    @classmethod
    def _command_words(cls, command: list[str]) -> list[str]:
        # A field validator, so that the error names ``command``, not the whole body.
        if any(not word or NUL in word for word in command):
            raise ValueError("every word must be a non-empty string without NUL characters")
        return command

    @field_validator("schema_")
    @classmethod
    def _option_names(cls, schema: dict[str, OptionSpec]) -> dict[str, OptionSpec]:
        for key in schema:
            if key == "_id":
                raise ValueError("'_id' is reserved: the experiment id is passed under it")
            if not key or key.startswith("-") or any(c.isspace() for c in key):
                raise ValueError(
                    f"option name {key!r} must be non-empty, not start with '-', and hold no "
                    "whitespace (it becomes a command-line flag)"
                )
        return schema

    @field_validator("parameters")
    @classmethod
    def _parameter_words(cls, parameters: list[Parameter]) -> list[Parameter]:
        if any(NUL in p.pass_as for p in parameters):
            raise ValueError("'pass-as' must not contain a NUL character")
        return parameters


class Project(RunFields):
    """A project as the API returns it."""

    model_config = ConfigDict(populate_by_name=True)

    id: uuid.UUID
    name: str
    schema_: dict[str, OptionSpec] = Field(alias="schema", serialization_alias="schema")
    created_at: datetime
    updated_at: datetime


class ProjectUpdate(BaseModel):
    """``PATCH /api/v1/projects/{id}``: the fields given replace the project's; the result is
    checked as a whole, as on creation. Experiments already submitted keep the options and
    run spec they were submitted with."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={"examples": [{"timeout_s": 7200, "env": {"OMP_NUM_THREADS": "2"}}]},
    )

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    command: list[str] | None = None
    option_style: OptionStyle | None = None
    boolean: BooleanStyle | None = None
    parameters: list[dict[str, Any]] | None = None
    env: dict[str, Any] | None = None
    timeout_s: float | None = None
    max_retries: int | None = None
    labels: list[str] | None = None
    resources: dict[str, Any] | None = None
    inputs: list[dict[str, Any]] | None = None
    capacity: float | None = None
    results: str | None = None
    cwd: str | None = None
    code: str | None = None
    workers: int | None = None
    image: str | None = None
    printed_metrics: bool | None = None
