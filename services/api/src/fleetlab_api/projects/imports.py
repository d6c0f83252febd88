"""Projects from the files of the earlier systems: an FGLab schema, a MachineLabs ``ml.yaml``,
an FGMachine ``projects.json``.

Each file either becomes one or more :class:`ProjectCreate` bodies or is refused with an
:class:`InvalidError` naming the file, the line (where the file has one for it) and the field,
e.g. ``recurrent-attention-model.json, line 3: cuda: the default 'false' is not a valid bool``.
Lines come from PyYAML's composer, which reads JSON as well (JSON is YAML's flow style), so
the same lookup serves all three formats.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from fleetlab_api.errors import InvalidError
from fleetlab_common.api.projects import ProjectCreate

ImportFormat = Literal["fglab", "ml.yaml", "fgmachine"]
Path_ = tuple[str | int, ...]

# MachineLabs' execution environments (machinelabs/firebase-data/docker_images.json, "common"):
# an ml.yaml naming any other dockerImageId is refused, as MachineLabs refused it.
MACHINELABS_IMAGES: dict[str, str] = {
    "keras_v2-0-x_python_2-1": "Keras 2.0.4 and Python 2.1",
    "keras_v2-0-x_python_3-1": "Keras 2.0.4 and Python 3.1",
    "tensorflow_v1-4-x-gpu_python_2-1": "TensorFlow 1.4.x + Keras 2.0.x + Python 2.1 with GPU",
    "tensorflow_v1-4-x-gpu_python_3-1": "TensorFlow 1.4.x + Keras 2.0.x + Python 3.1 with GPU",
}
# What MachineLabs ran: main.py of the lab's code, parameters appended.
MACHINELABS_COMMAND = ["python3", "main.py"]
ML_YAML_KEYS = {"dockerImageId", "hardwareType", "inputs", "parameters", "cli", "mounts"}
FGMACHINE_KEYS = {"cwd", "command", "args", "options", "boolean", "capacity", "results"}
MAX_FILE_BYTES = 1 << 20


def _field(path: Path_) -> str:
    return ".".join(str(p) for p in path) or "(file)"


def _refuse(filename: str, lines: dict[Path_, int], path: Path_, why: str) -> InvalidError:
    line = None
    for end in range(len(path), 0, -1):  # the deepest part of the path the file has a line for
        line = lines.get(path[:end])
        if line is not None:
            break
    where = f"{filename}, line {line}" if line is not None else filename
    field = _field(path)
    return InvalidError(f"{where}: {field}: {why}", {field: f"{why} ({where})"})


def _lines(text: str) -> tuple[dict[Path_, int], tuple[Path_, int] | None]:
    """The line of every key and item, and the first repeated key (JSON keeps the last one
    silently: a file that says two things is refused rather than half read)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}, None
    lines: dict[Path_, int] = {}
    duplicate: list[tuple[Path_, int]] = []

    def walk(node: yaml.Node, path: Path_) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                here = (*path, key)
                if key in seen and not duplicate:
                    duplicate.append((here, key_node.start_mark.line + 1))
                seen.add(key)
                lines.setdefault(here, key_node.start_mark.line + 1)
                walk(value_node, here)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                walk(item, (*path, index))

    if root is not None:
        walk(root, ())
    return lines, duplicate[0] if duplicate else None


def _build(
    filename: str,
    lines: dict[Path_, int],
    body: dict[str, Any],
    to_file: Callable[[tuple[Any, ...]], Path_],
) -> ProjectCreate:
    try:
        return ProjectCreate.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        why = str(err.get("ctx", {}).get("error", err["msg"]))
        raise _refuse(filename, lines, to_file(tuple(err["loc"])), why) from None


def _name_from(filename: str, *suffixes: str) -> str:
    base = filename.rsplit("/", 1)[-1]
    for suffix in suffixes:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return sanitize_name(base)


def sanitize_name(text: str) -> str:
    """A project name from free text: what the name pattern refuses becomes ``-``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-._")[:100]
    return name or "project"


def guess_format(filename: str) -> ImportFormat:
    lower = filename.lower()
    if lower.endswith((".yaml", ".yml")):
        return "ml.yaml"
    if lower.endswith((".project.json", ".projects.json", "projects.json")):
        return "fgmachine"
    return "fglab"


def decode(filename: str, data: bytes) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise InvalidError(f"{filename}: the file is over {MAX_FILE_BYTES} bytes", {"file": ""})
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidError(
            f"{filename}: not UTF-8 text (byte {exc.start})", {"file": "not UTF-8 text"}
        ) from None


def _load_json(filename: str, text: str) -> tuple[Any, dict[Path_, int]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{filename}, line {exc.lineno}"
        raise InvalidError(
            f"{where}: malformed JSON: {exc.msg}", {"file": f"malformed JSON ({where})"}
        ) from None
    lines, duplicate = _lines(text)
    if duplicate:
        path, line = duplicate
        raise _refuse(filename, {path: line}, path, "the key is repeated; JSON keeps only the last")
    return data, lines


def from_fglab_schema(filename: str, text: str, name: str | None = None) -> ProjectCreate:
    """An FGLab schema file: the project is named after the file, as FGLab did. FGLab's
    machines brought the command (FGMachine), so the project has none until one is set."""
    data, lines = _load_json(filename, text)
    if not isinstance(data, dict):
        raise _refuse(filename, lines, (), "an FGLab schema is a JSON object of options")
    body = {"name": name or _name_from(filename, ".json"), "schema": data}

    def to_file(loc: tuple[Any, ...]) -> Path_:
        return tuple(loc[1:]) if loc[:1] == ("schema",) else tuple(loc)

    return _build(filename, lines, body, to_file)


def from_ml_yaml(filename: str, text: str, name: str | None = None) -> ProjectCreate:
    """A MachineLabs ``ml.yaml``: image, hardware type, inputs and parameters; MachineLabs ran
    ``main.py``, and so does the project (change ``command`` afterwards if need be)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}, line {mark.line + 1}" if mark is not None else filename
        problem = getattr(exc, "problem", None) or "malformed"
        raise InvalidError(
            f"{where}: malformed YAML: {problem}", {"file": f"malformed YAML ({where})"}
        ) from None
    lines, duplicate = _lines(text)
    if duplicate:
        path, line = duplicate
        raise _refuse(filename, {path: line}, path, "the key is repeated")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise _refuse(filename, lines, (), "an ml.yaml is a mapping of settings")
    for key in data:
        if key not in ML_YAML_KEYS:
            known = ", ".join(sorted(ML_YAML_KEYS))
            raise _refuse(filename, lines, (str(key),), f"unknown setting (known: {known})")
    if "mounts" in data:
        raise _refuse(
            filename,
            lines,
            ("mounts",),
            "mounts of MachineLabs' shared datasets are not available: list the files under "
            "'inputs' (name, url) instead",
        )
    body: dict[str, Any] = {
        "name": name or _name_from(filename, ".ml.yaml", ".yaml", ".yml"),
        "command": MACHINELABS_COMMAND,
    }
    image = data.get("dockerImageId")
    if image is not None:
        if image not in MACHINELABS_IMAGES:
            known = ", ".join(MACHINELABS_IMAGES)
            raise _refuse(
                filename, lines, ("dockerImageId",), f"unknown image {image!r} (known: {known})"
            )
        body["image"] = image
    hardware = data.get("hardwareType", "cpu")
    if hardware not in ("cpu", "gpu"):
        raise _refuse(filename, lines, ("hardwareType",), f"must be cpu or gpu, not {hardware!r}")
    if hardware == "gpu":
        body["labels"] = ["gpu"]
    parameters = data.get("parameters") or []
    if not isinstance(parameters, list):
        raise _refuse(filename, lines, ("parameters",), "must be a list of {pass-as: ...}")
    for index, item in enumerate(parameters):
        if not isinstance(item, dict) or "pass-as" not in item:
            raise _refuse(
                filename, lines, ("parameters", index), "each parameter needs a 'pass-as'"
            )
        value = item["pass-as"]
        if isinstance(value, int | float) and not isinstance(value, bool):
            item["pass-as"] = str(value)  # YAML read "5" as a number; it is passed as written
    body["parameters"] = parameters
    body["inputs"] = data.get("inputs") or []

    def to_file(loc: tuple[Any, ...]) -> Path_:
        head = {"image": "dockerImageId", "labels": "hardwareType"}.get(str(loc[0]), loc[0])
        return (head, *loc[1:])

    return _build(filename, lines, body, to_file)


def _fgmachine_entry(
    filename: str, lines: dict[Path_, int], key: str, entry: Any, name: str
) -> ProjectCreate:
    if not isinstance(entry, dict):
        raise _refuse(filename, lines, (key,), "a project entry is a JSON object")
    for field in entry:
        if field not in FGMACHINE_KEYS:
            known = ", ".join(sorted(FGMACHINE_KEYS))
            raise _refuse(filename, lines, (key, field), f"unknown field (known: {known})")
    command = entry.get("command")
    if not isinstance(command, str) or not command:
        raise _refuse(filename, lines, (key, "command"), "must be a non-empty string")
    args = entry.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise _refuse(filename, lines, (key, "args"), "must be a list of strings")
    body: dict[str, Any] = {"name": name, "command": [command, *args]}
    if "options" in entry:
        body["option_style"] = entry["options"]
    if "boolean" in entry:
        body["boolean"] = entry["boolean"]
    if "capacity" in entry:
        capacity = entry["capacity"]
        # FGMachine read capacity with Number(), and its own examples write "0.2": a numeric
        # string is taken as its number (a schema's default, passed on to programs, is not).
        if isinstance(capacity, str):
            try:
                capacity = float(capacity)
            except ValueError:
                raise _refuse(
                    filename, lines, (key, "capacity"), f"must be a number, not {capacity!r}"
                ) from None
        body["capacity"] = capacity
    for field in ("cwd", "results"):
        if field in entry:
            body[field] = entry[field]

    def to_file(loc: tuple[Any, ...]) -> Path_:
        return (key, "options" if loc[0] == "option_style" else loc[0], *loc[1:])

    return _build(filename, lines, body, to_file)


def from_fgmachine(filename: str, text: str, name: str | None = None) -> list[ProjectCreate]:
    """FGMachine's ``projects.json`` (or one entry of it): one project per entry, with the
    command, argument style, capacity and results folder of the entry. One entry takes the
    name given (or the file's); several are named ``<name>-<entry key>``."""
    data, lines = _load_json(filename, text)
    if not isinstance(data, dict) or not data:
        raise _refuse(filename, lines, (), "FGMachine's projects.json maps project ids to entries")
    base = name or _name_from(filename, ".projects.json", ".project.json", ".json")
    if len(data) == 1:
        key, entry = next(iter(data.items()))
        return [_fgmachine_entry(filename, lines, key, entry, base)]
    return [
        _fgmachine_entry(filename, lines, key, entry, sanitize_name(f"{base}-{key}"))
        for key, entry in data.items()
    ]


def parse(
    filename: str, data: bytes, fmt: ImportFormat | None, name: str | None
) -> list[ProjectCreate]:
    """Any of the three formats; ``fmt`` guessed from the file name when not given."""
    text = decode(filename, data)
    kind = fmt or guess_format(filename)
    if kind == "fglab":
        return [from_fglab_schema(filename, text, name)]
    if kind == "ml.yaml":
        return [from_ml_yaml(filename, text, name)]
    return from_fgmachine(filename, text, name)
