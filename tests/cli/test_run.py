"""``fleetlab run``: what it packs (``.gitignore`` honoured), how it reads ``fleetlab.yaml``,
and the exit codes it ends with. The whole flow against a running stack is in
tests/e2e/test_examples.py."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fleetlab_cli.run import EXIT_LOST, EXIT_STOPPED, exit_code_of, files_to_pack, pack
from fleetlab_common.embedded import free_port

FLEETLAB = str(Path(sys.executable).parent / "fleetlab")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def fleetlab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETLAB_API_URL": f"http://127.0.0.1:{free_port()}", "COLUMNS": "200"}
    return subprocess.run(
        [FLEETLAB, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_gitignore_files_are_honoured_as_git_does(tmp_path: Path) -> None:
    root = write(
        tmp_path / "proj",
        {
            "fleetlab.yaml": "command: python3 train.py\n",
            "train.py": "print(1)\n",
            ".gitignore": "*.ckpt\nbuild/\n/data\n!keep.ckpt\n",
            "model.ckpt": "x",
            "keep.ckpt": "x",
            "build/out.txt": "x",
            "data/big.bin": "x",
            "src/data/small.txt": "kept: /data is anchored to the root",
            "src/.gitignore": "*.tmp\n",
            "src/a.tmp": "x",
            "a.tmp": "kept: the rule is src/'s",
            ".git/HEAD": "ref: refs/heads/main\n",
        },
    )
    (root / "link.py").symlink_to(root / "train.py")
    paths, links = files_to_pack(root, ["*.secret"])
    assert paths == [
        ".gitignore",
        "a.tmp",
        "fleetlab.yaml",
        "keep.ckpt",
        "src/.gitignore",
        "src/data/small.txt",
        "train.py",
    ]
    assert links == ["link.py"]


def test_packing_is_deterministic_and_keeps_the_executable_bit(tmp_path: Path) -> None:
    root = write(tmp_path / "p", {"run.sh": "#!/bin/sh\n", "b/c.py": "C = 1\n"})
    (root / "run.sh").chmod(0o755)
    first = pack(root, ["b/c.py", "run.sh"])
    os.utime(root / "b/c.py", (1, 1))  # times are not packed
    second = pack(root, ["b/c.py", "run.sh"])
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        assert tar.getnames() == ["b/c.py", "run.sh"]
        assert tar.getmember("run.sh").mode == 0o755
        assert tar.getmember("b/c.py").mode == 0o644
        assert tar.getmember("b/c.py").mtime == 0


def test_the_examples_pack_without_what_they_ignore(tmp_path: Path) -> None:
    paths, _ = files_to_pack(EXAMPLES / "toy-train")
    assert "train.py" in paths and "fleetlab.yaml" in paths
    assert not any(p.startswith(("outputs/", "__pycache__/")) for p in paths)


def test_exit_codes_follow_the_experiment_s_end() -> None:
    assert exit_code_of({"status": "succeeded", "exit_code": 0}) == 0
    assert exit_code_of({"status": "failed", "exit_code": 3}) == 3
    assert exit_code_of({"status": "failed", "exit_code": None, "signal": 9}) == 137
    assert exit_code_of({"status": "failed", "exit_code": None}) == 1  # it never started
    assert exit_code_of({"status": "stopped", "exit_code": None, "signal": 15}) == EXIT_STOPPED
    assert exit_code_of({"status": "lost"}) == EXIT_LOST


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({}, "no fleetlab.yaml"),
        ({"fleetlab.yaml": "name: x\n"}, "command:"),
        ({"fleetlab.yaml": "- a list\n"}, "a mapping"),
        ({"fleetlab.yaml": "command: [python3]\noptions: [1]\n"}, "options:"),
        ({"fleetlab.yaml": "command: [python3]\nschema: gone.json\n"}, "schema: cannot read"),
        ({"fleetlab.yaml": "command: [python3\n"}, "cannot read it"),
    ],
    ids=["no-file", "no-command", "not-a-mapping", "bad-options", "missing-schema", "bad-yaml"],
)
def test_a_bad_project_folder_exits_2_naming_the_key(
    tmp_path: Path, files: dict[str, str], words: str
) -> None:
    root = write(tmp_path / "p", files)
    root.mkdir(exist_ok=True)
    result = fleetlab("run", str(root))
    assert result.returncode == 2, result.stderr
    assert words in result.stderr


def test_bad_options_exit_2_and_an_unreachable_api_exits_3(tmp_path: Path) -> None:
    root = write(tmp_path / "p", {"fleetlab.yaml": "command: python3 t.py\n", "t.py": ""})
    assert fleetlab("run", str(root), "lr").returncode == 2
    result = fleetlab("run", str(root), "lr=1")
    assert result.returncode == 3 and "cannot reach the API" in result.stderr
    # Options alone: the project in the current folder.
    result = fleetlab("run", "lr=1", cwd=root)
    assert result.returncode == 3
