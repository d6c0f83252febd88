"""The option sets of a sweep: parameter specs read and checked, then a grid or random draws.

Pure logic, no I/O. Per option, a sweep's ``parameters`` give one of:

- a list of values, ``[0.1, 0.01]``, or ``{"values": [0.1, 0.01]}``; for FGLab's form, a
  comma-separated string is also a list (``"sgd,adam"`` or ``{"values": "1,2,3"}``), each item
  read as the option's type;
- a range, ``{"min": 1, "max": 5, "steps": 3, "scale": "linear" | "log"}``: ``steps`` values
  from ``min`` to ``max``, both included, evenly spaced (``log``: evenly spaced exponents,
  ``min`` > 0). An int option gets ints (rounded, repeats dropped). A grid needs ``steps``; a
  random sweep without ``steps`` draws from the whole interval (log-uniformly for ``log``).

Options not named keep their defaults. Every value is checked with the same rules as a single
submission, and every option set is validated against the schema exactly as one is.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fleetlab_common.api.projects import OptionSpec, check_value, validate_options
from fleetlab_common.api.sweeps import MAX_TRIALS

# The most trials one sweep may create (grid: the product of the value counts).
RANGE_KEYS = frozenset({"min", "max", "steps", "scale"})
SHAPES = (
    'a list of values, {"values": [...]} (or a comma-separated string), '
    'or a range {"min", "max", "steps", "scale": "linear" | "log"}'
)


class SpecError(ValueError):
    """Bad parameter specs: the field paths at fault and why."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


@dataclass(frozen=True)
class Axis:
    """One swept option: its discrete ``values``, or a continuous interval (random only)."""

    name: str
    spec: OptionSpec
    values: tuple[Any, ...] | None = None
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    def draw(self, rng: random.Random) -> Any:
        if self.values is not None:
            return self.values[rng.randrange(len(self.values))]
        if self.spec.type == "int" and not self.log:
            return rng.randint(int(self.low), int(self.high))
        fraction = rng.random()
        if self.log:
            try:
                value = math.exp(_between(math.log(self.low), math.log(self.high), fraction))
            except OverflowError:
                value = self.high
        else:
            value = _between(self.low, self.high, fraction)
        value = min(max(value, self.low), self.high)
        return round(value) if self.spec.type == "int" else _tidy(value)


def _between(low: float, high: float, fraction: float) -> float:
    # Not low + (high - low) * fraction, which overflows for the widest float ranges.
    return low * (1 - fraction) + high * fraction


def _tidy(value: float) -> float:
    # 12 significant digits: 0.1 + 0.2 shows as 0.3, as a user would have typed it.
    return float(f"{value:.12g}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _from_text(spec: OptionSpec, text: str) -> Any:
    """One item of a comma-separated list, read as the option's type (else left as text,
    for the value check to refuse by name)."""
    item = text.strip()
    try:
        if spec.type == "int":
            return int(item)
        if spec.type == "float":
            return float(item)
    except ValueError:
        return item
    if spec.type == "bool":
        return {"true": True, "false": False}.get(item.lower(), item)
    if spec.type == "enum":
        for value in spec.values or []:
            if str(value) == item or (isinstance(value, bool) and str(value).lower() == item):
                return value
    return item


def _values(name: str, spec: OptionSpec, given: Any) -> tuple[Any, ...]:
    field = f"parameters.{name}"
    if isinstance(given, str):
        items: list[Any] = [_from_text(spec, t) for t in given.split(",")]
    elif isinstance(given, list):
        items = list(given)
    else:
        raise SpecError({field: "values must be a list or a comma-separated string"})
    if not items:
        raise SpecError({field: "give at least one value"})
    checked: list[Any] = []
    for value in items:
        normalised, error = check_value(spec, value)
        if error:
            raise SpecError({field: f"value {value!r} {error}"})
        if not any(type(c) is type(normalised) and c == normalised for c in checked):
            checked.append(normalised)
    return tuple(checked)


def _range(name: str, spec: OptionSpec, given: dict[str, Any], method: str) -> Axis:
    field = f"parameters.{name}"
    unknown = sorted(set(given) - RANGE_KEYS)
    if unknown:
        raise SpecError({field: f"unknown key {unknown[0]!r} in a range; {SHAPES}"})
    if spec.type not in ("int", "float"):
        raise SpecError({field: f"a range needs an int or float option, not {spec.type}"})
    for key in ("min", "max"):
        if key not in given:
            raise SpecError({field: f"a range needs both min and max ({key} is missing)"})
        value = given[key]
        if not _number(value) or not math.isfinite(value):
            raise SpecError({f"{field}.{key}": f"must be a finite number, not {value!r}"})
        if spec.type == "int" and not float(value).is_integer():
            raise SpecError({f"{field}.{key}": f"must be an integer for an int option: {value!r}"})
    low, high = float(given["min"]), float(given["max"])
    if low > high:
        raise SpecError({field: f"min ({given['min']!r}) is greater than max ({given['max']!r})"})
    scale = given.get("scale", "linear")
    if scale not in ("linear", "log"):
        raise SpecError({f"{field}.scale": f"must be 'linear' or 'log', not {scale!r}"})
    log = scale == "log"
    if log and low <= 0:
        raise SpecError({f"{field}.min": f"a log scale needs min > 0, not {given['min']!r}"})
    steps = given.get("steps")
    if steps is None:
        if method == "grid":
            raise SpecError({f"{field}.steps": "a grid needs the number of values (steps >= 1)"})
        return Axis(name, spec, None, low, high, log)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise SpecError({f"{field}.steps": f"must be an integer >= 1, not {steps!r}"})
    if steps > MAX_TRIALS:
        raise SpecError({f"{field}.steps": f"at most {MAX_TRIALS:,} values"})
    points: list[float] = []
    for i in range(steps):
        fraction = i / (steps - 1) if steps > 1 else 0.0
        if log:
            try:
                points.append(math.exp(_between(math.log(low), math.log(high), fraction)))
            except OverflowError:
                points.append(high)
        else:
            points.append(_between(low, high, fraction))
    if steps > 1:
        points[-1] = high  # exactly max, whatever the rounding on the way
    points = [min(max(p, low), high) for p in points]
    values: list[Any] = []
    for point in points:
        item: Any = round(point) if spec.type == "int" else _tidy(point)
        if item not in values:
            values.append(item)
    return Axis(name, spec, tuple(values))


def parse(schema: dict[str, OptionSpec], parameters: dict[str, Any], method: str) -> list[Axis]:
    """The axes of a sweep, in the order given; :class:`SpecError` naming every bad one."""
    errors: dict[str, str] = {}
    axes: list[Axis] = []
    for name, given in parameters.items():
        spec = schema.get(name)
        if spec is None:
            errors[f"parameters.{name}"] = "unknown option: the project's schema has no such key"
            continue
        try:
            if isinstance(given, dict):
                if "values" in given:
                    if len(given) != 1:
                        raise SpecError(
                            {f"parameters.{name}": f"give values alone, not with a range; {SHAPES}"}
                        )
                    axes.append(Axis(name, spec, _values(name, spec, given["values"])))
                elif set(given) & RANGE_KEYS or not given:
                    axes.append(_range(name, spec, given, method))
                else:
                    raise SpecError({f"parameters.{name}": f"expected {SHAPES}"})
            elif isinstance(given, list | str):
                axes.append(Axis(name, spec, _values(name, spec, given)))
            else:
                # One value: the option is fixed for every trial.
                axes.append(Axis(name, spec, _values(name, spec, [given])))
        except SpecError as exc:
            errors.update(exc.fields)
    if errors:
        raise SpecError(errors)
    return axes


def grid_size(axes: list[Axis]) -> int:
    return math.prod(len(a.values or ()) for a in axes)


def grid(axes: list[Axis]) -> Iterator[dict[str, Any]]:
    """The cartesian product, the last option varying fastest."""
    names = [a.name for a in axes]
    for combination in itertools.product(*(a.values or () for a in axes)):
        yield dict(zip(names, combination, strict=True))


def draws(axes: list[Axis], count: int, seed: int) -> Iterator[dict[str, Any]]:
    """``count`` points drawn independently (with repeats possible): the same seed, axes and
    count always give the same points."""
    rng = random.Random(seed)  # noqa: S311 (reproducible draws, not secrets)
    for _ in range(count):
        yield {a.name: a.draw(rng) for a in axes}


def option_sets(
    schema: dict[str, OptionSpec], points: Iterator[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each point completed with the defaults and validated as a single submission is; a
    failure names the parameter (or the option without a default that needs one)."""
    complete: list[dict[str, Any]] = []
    for point in points:
        options, errors = validate_options(schema, point)
        if errors:
            fields = {}
            for key, why in errors.items():
                option = key.removeprefix("options.")
                required = why.startswith("required")
                fields[f"parameters.{option}"] = (
                    "required: the option has no default, so the sweep must give it values"
                    if required
                    else why
                )
            raise SpecError(fields)
        complete.append(options)
    return complete
