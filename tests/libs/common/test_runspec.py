"""How an experiment's process is started: FGMachine's option styles and MachineLabs parameters.

The expected argv values are written out by hand from /work/shared/fixtures/README.md and
FGMachine's ``machine.js``, never computed by a second implementation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fleetlab_common.runspec import (
    BooleanStyle,
    OptionStyle,
    OptionValue,
    Parameter,
    RunSpec,
    build_argv,
    dumps_options,
    option_args,
)

FGMACHINE_PROJECTS = Path("/work/shared/fixtures/fgmachine/projects")
EXP_ID = "0190a3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b"
# The README's example; dict order is the order the options reach the program.
README_OPTIONS: dict[str, OptionValue] = {"seed": 123, "model": "cnn.v2", "L2": True}


def spec(
    command: list[str], style: OptionStyle, boolean: BooleanStyle = "mandatory", **kw: Any
) -> RunSpec:
    return RunSpec(command=command, option_style=style, boolean=boolean, **kw)


# --- the README's example, one style at a time ------------------------------------------------


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("plain", ["seed", "123", "model", "cnn.v2", "L2", "true", "_id", EXP_ID]),
        ("single-dash", ["-seed", "123", "-model", "cnn.v2", "-L2", "true", "-_id", EXP_ID]),
        ("double-dash", ["--seed=123", "--model=cnn.v2", "--L2=true", f"--_id={EXP_ID}"]),
    ],
)
def test_option_args_follow_the_fgmachine_style(style: OptionStyle, expected: list[str]) -> None:
    assert option_args(README_OPTIONS, EXP_ID, style) == expected


@pytest.mark.parametrize(
    ("style", "expected_tail"),
    [
        ("plain", ["seed", "123", "model", "cnn.v2", "L2", "true", "_id", EXP_ID]),
        ("single-dash", ["-seed", "123", "-model", "cnn.v2", "-L2", "true", "-_id", EXP_ID]),
        ("double-dash", ["--seed=123", "--model=cnn.v2", "--L2=true", f"--_id={EXP_ID}"]),
    ],
)
def test_build_argv_puts_the_command_first_then_the_options(
    style: OptionStyle, expected_tail: list[str]
) -> None:
    argv = build_argv(spec(["python", "train.py"], style), README_OPTIONS, EXP_ID)
    assert argv == ["python", "train.py", *expected_tail]


def test_function_style_calls_the_commands_last_word_with_key_value_pairs() -> None:
    argv = build_argv(
        spec(["matlab", "-nodisplay", "-r", "fn"], "function"), README_OPTIONS, EXP_ID
    )
    assert argv == [
        "matlab",
        "-nodisplay",
        "-r",
        f"fn('seed',123,'model','cnn.v2','L2',true,'_id','{EXP_ID}');",
    ]


def test_function_style_quotes_strings_and_keeps_numbers_and_booleans_bare() -> None:
    argv = build_argv(
        spec(["octave", "--eval", "train"], "function"),
        {"lr": 0.001, "name": "it's", "epochs": 3, "shuffle": False},
        "x",
    )
    # A quote inside a string is doubled, as MATLAB/Octave read it.
    assert argv[-1] == "train('lr',0.001,'name','it''s','epochs',3,'shuffle',false,'_id','x');"


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("plain", ["seed", "123", "L2", "_id", EXP_ID]),
        ("single-dash", ["-seed", "123", "-L2", "-_id", EXP_ID]),
        ("double-dash", ["--seed=123", "--L2", f"--_id={EXP_ID}"]),
    ],
)
def test_optional_booleans_drop_false_flags_and_pass_true_ones_bare(
    style: OptionStyle, expected: list[str]
) -> None:
    options: dict[str, OptionValue] = {"seed": 123, "L2": True, "dropout": False}
    assert option_args(options, EXP_ID, style, "optional") == expected
    argv = build_argv(spec(["prog"], style, "optional"), options, EXP_ID)
    assert argv == ["prog", *expected]


def test_optional_booleans_in_function_style_drop_false_and_pass_true_as_the_name_alone() -> None:
    # machine.js pushes only JSON.stringify(prop) for a true flag when boolean is optional.
    argv = build_argv(
        spec(["matlab", "-r", "fn"], "function", "optional"),
        {"seed": 123, "L2": True, "dropout": False},
        EXP_ID,
    )
    assert argv == ["matlab", "-r", f"fn('seed',123,'L2','_id','{EXP_ID}');"]


def test_mandatory_booleans_keep_false_flags_with_their_value() -> None:
    options: dict[str, OptionValue] = {"L2": True, "dropout": False}
    assert option_args(options, EXP_ID, "double-dash", "mandatory") == [
        "--L2=true",
        "--dropout=false",
        f"--_id={EXP_ID}",
    ]


@pytest.mark.parametrize("style", ["plain", "single-dash", "double-dash", "function"])
def test_experiment_id_comes_last_even_with_no_options(style: OptionStyle) -> None:
    argv = build_argv(spec(["prog", "main"], style), {}, EXP_ID)
    expected = {
        "plain": ["prog", "main", "_id", EXP_ID],
        "single-dash": ["prog", "main", "-_id", EXP_ID],
        "double-dash": ["prog", "main", f"--_id={EXP_ID}"],
        "function": ["prog", f"main('_id','{EXP_ID}');"],
    }[style]
    assert argv == expected


def test_floats_and_large_ints_are_written_as_numbers() -> None:
    assert option_args({"lr": 0.1, "steps": 10**12}, "i", "double-dash") == [
        "--lr=0.1",
        f"--steps={10**12}",
        "--_id=i",
    ]


# --- MachineLabs parameters --------------------------------------------------------------------


@pytest.mark.parametrize("style", ["plain", "single-dash", "double-dash", "function"])
def test_machinelabs_parameters_follow_the_options_in_order(style: OptionStyle) -> None:
    run = spec(
        ["python", "main.py"],
        style,
        parameters=[Parameter(**{"pass-as": "--epochs=5"}), Parameter(**{"pass-as": "b"})],
    )
    argv = build_argv(run, {"seed": 1}, EXP_ID)
    assert argv[-2:] == ["--epochs=5", "b"]
    # The options (with the id) come right before them.
    assert EXP_ID in argv[-3]


def test_parameters_are_read_with_the_ml_yaml_spelling() -> None:
    run = RunSpec.model_validate(
        {"command": ["python", "main.py"], "parameters": [{"pass-as": "--lr=0.1"}]}
    )
    assert run.parameters == [Parameter(pass_as="--lr=0.1")]
    with pytest.raises(ValidationError):
        RunSpec.model_validate({"command": ["x"], "parameters": [{"pass-as": ""}]})
    with pytest.raises(ValidationError):
        RunSpec.model_validate({"command": ["x"], "parameters": [{"pass-as": "a", "oops": 1}]})


def test_a_run_spec_needs_a_known_style() -> None:
    # An empty command is allowed: the agents that serve the project bring theirs.
    assert RunSpec().command == []
    with pytest.raises(ValidationError):
        RunSpec.model_validate({"command": ["x"], "option_style": "triple-dash"})
    with pytest.raises(ValidationError):
        RunSpec.model_validate({"command": ["x"], "boolean": "sometimes"})


# --- hostile values stay one argument ---------------------------------------------------------

HOSTILE = "; rm -rf / #"


@pytest.mark.parametrize(
    ("style", "expected_tail"),
    [
        ("plain", ["name", HOSTILE, "_id", "i"]),
        ("single-dash", ["-name", HOSTILE, "-_id", "i"]),
        ("double-dash", [f"--name={HOSTILE}", "--_id=i"]),
        ("function", [f"fn('name','{HOSTILE}','_id','i');"]),
    ],
)
def test_a_shell_metacharacter_value_stays_one_argv_element(
    style: OptionStyle, expected_tail: list[str]
) -> None:
    argv = build_argv(spec(["prog", "fn"], style), {"name": HOSTILE}, "i")
    # In function style "fn" is the function called; otherwise it is an ordinary argument.
    head = ["prog"] if style == "function" else ["prog", "fn"]
    assert argv == [*head, *expected_tail]


def test_a_hostile_value_reaches_the_program_verbatim(tmp_path: Path) -> None:
    marker = tmp_path / "must-survive"
    marker.write_text("x")
    value = f"; rm -f {marker}; echo pwned"
    argv = build_argv(
        spec([sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"], "plain"),
        {"name": value},
        "i",
    )
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout
    assert json.loads(out) == ["name", value, "_id", "i"]
    assert marker.exists()


# --- the real FGMachine project files ---------------------------------------------------------


def load_projects(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every project entry of a projects.json, keeping entries whose key is repeated."""
    top = json.loads(path.read_text(), object_pairs_hook=lambda pairs: pairs)
    return [(key, dict(value)) for key, value in top]


SAMPLE: dict[str, OptionValue] = {"seed": 123, "model": "cnn.v2", "L2": True, "debug": False}
# Expected option part for SAMPLE and id "E", by (options, boolean) as the files use them.
EXPECTED_TAIL: dict[tuple[str, str], list[str]] = {
    ("double-dash", "mandatory"): [
        "--seed=123",
        "--model=cnn.v2",
        "--L2=true",
        "--debug=false",
        "--_id=E",
    ],
    ("plain", "mandatory"): [
        "seed", "123", "model", "cnn.v2", "L2", "true", "debug", "false", "_id", "E",
    ],
    ("single-dash", "optional"): ["-seed", "123", "-model", "cnn.v2", "-L2", "-_id", "E"],
}  # fmt: skip
FUNCTION_CALL = "('seed',123,'model','cnn.v2','L2',true,'debug',false,'_id','E');"

FIXTURE_PROJECTS = [
    pytest.param(project, id=f"{path.name}[{i}]")
    for path in sorted(FGMACHINE_PROJECTS.glob("*.json"))
    for i, (_, project) in enumerate(load_projects(path))
]


def test_every_fixture_project_is_found() -> None:
    # The repeated key in recurrent-attention-model.project.json must not hide an entry.
    assert len(FIXTURE_PROJECTS) == 6


@pytest.mark.parametrize("project", FIXTURE_PROJECTS)
def test_fgmachine_fixture_projects_build_the_argv_machine_js_would(
    project: dict[str, Any],
) -> None:
    command = [project["command"], *project["args"]]
    run = RunSpec(command=command, option_style=project["options"], boolean=project["boolean"])
    argv = build_argv(run, SAMPLE, "E")
    # capacity is a number in some files and a string in others; both read as one.
    assert 0 < float(project["capacity"]) <= 1
    if project["options"] == "function":
        assert argv == [*command[:-1], command[-1] + FUNCTION_CALL]
    else:
        assert argv == [*command, *EXPECTED_TAIL[(project["options"], project["boolean"])]]


def test_dumps_options_is_canonical() -> None:
    assert dumps_options({"b": 1, "a": [1, 2]}) == dumps_options({"a": [1, 2], "b": 1})
    assert dumps_options({"b": 1, "a": True}) == '{"a":true,"b":1}'
