"""The agent's runner on real processes: argv, environment, output, outcomes, stops."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from fleetlab_agent.runner import LogBatcher, Run, RunResult
from fleetlab_common.events import LogLine
from fleetlab_common.runspec import RunSpec


class Collected:
    def __init__(self) -> None:
        self.batches: list[list[LogLine]] = []

    async def __call__(self, lines: list[dict[str, object]]) -> None:
        # What the agent sends, read as the model reads it off the wire.
        self.batches.append([LogLine.model_validate(ln) for ln in lines])

    @property
    def lines(self) -> list[LogLine]:
        return [ln for batch in self.batches for ln in batch]


def make_run(tmp_path: Path, command: list[str], **spec: object) -> Run:
    return Run(
        experiment_id=uuid.uuid4(),
        attempt=1,
        spec=RunSpec(command=command, **spec),  # type: ignore[arg-type]
        options={},
        workdir=tmp_path / "work",
    )


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


async def run_to_end(
    run: Run, grace_s: float = 5.0, **batch: int | float
) -> tuple[RunResult, Collected]:
    assert await run.start() is None
    out = Collected()
    result = await asyncio.wait_for(run.wait(LogBatcher(out, **batch), grace_s), 30)  # type: ignore[arg-type]
    return result, out


async def test_success_streams_every_line_numbered_across_both_streams(tmp_path: Path) -> None:
    cmd = script(
        tmp_path,
        """
        import sys
        for i in range(3):
            print(f"out {i}", flush=True)
            print(f"err {i}", file=sys.stderr, flush=True)
        """,
    )
    result, out = await run_to_end(make_run(tmp_path, cmd))
    assert result.status == "succeeded" and result.exit_code == 0 and result.reason is None
    assert result.log_lines == 6
    assert [ln.seq for ln in out.lines] == [1, 2, 3, 4, 5, 6]
    assert [ln.line for ln in out.lines if ln.stream == "stdout"] == ["out 0", "out 1", "out 2"]
    assert [ln.line for ln in out.lines if ln.stream == "stderr"] == ["err 0", "err 1", "err 2"]


async def test_argv_is_never_a_shell(tmp_path: Path) -> None:
    run = make_run(tmp_path, script(tmp_path, "import sys, json; print(json.dumps(sys.argv[1:]))"))
    run.options = {"name": "; rm -rf / #", "n": 2}
    result, out = await run_to_end(run)
    assert result.status == "succeeded"
    assert out.lines[0].line == (f'["--name=; rm -rf / #", "--n=2", "--_id={run.experiment_id}"]')


async def test_fresh_workdir_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETLAB_NATS__URL", "nats://secret")
    cmd = script(
        tmp_path,
        """
        import json, os
        print(os.getcwd())
        print(json.dumps(sorted(os.listdir("."))))
        print(json.dumps({k: v for k, v in os.environ.items() if k.startswith("FLEETLAB_")}))
        print(os.environ["MY_VAR"])
        """,
    )
    run = make_run(tmp_path, cmd, env={"MY_VAR": "from the project"})
    run.workdir.mkdir()
    (run.workdir / "stale-file").write_text("left by an earlier attempt")
    result, out = await run_to_end(run)
    assert result.status == "succeeded"
    cwd, listing, env, my_var = (ln.line for ln in out.lines)
    assert Path(cwd) == run.workdir
    assert listing == '["inputs", "outputs"]'
    assert '"FLEETLAB_NATS__URL"' not in env
    assert f'"FLEETLAB_EXPERIMENT_ID": "{run.experiment_id}"' in env
    assert f'"FLEETLAB_OUTPUTS_DIR": "{run.workdir / "outputs"}"' in env
    assert my_var == "from the project"


async def test_nonzero_exit_fails_with_the_code(tmp_path: Path) -> None:
    result, _ = await run_to_end(make_run(tmp_path, script(tmp_path, "raise SystemExit(7)")))
    assert (result.status, result.exit_code, result.reason) == ("failed", 7, "exit code 7")


async def test_death_by_signal_is_named(tmp_path: Path) -> None:
    cmd = script(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    result, _ = await run_to_end(make_run(tmp_path, cmd))
    assert result.status == "failed" and result.signal == signal.SIGKILL
    assert result.reason == "killed by signal SIGKILL"


async def test_a_command_that_cannot_start_says_why(tmp_path: Path) -> None:
    missing = make_run(tmp_path, ["/no/such/program"])
    assert await missing.start() == "command not found: /no/such/program"
    text = tmp_path / "notes.txt"
    text.write_text("not a program")
    text.chmod(0o644)
    assert await make_run(tmp_path, [str(text)]).start() == f"command not executable: {text}"


async def test_timeout_fails_the_run_with_that_reason(tmp_path: Path) -> None:
    run = make_run(tmp_path, script(tmp_path, "import time; time.sleep(60)"), timeout_s=0.5)
    result, _ = await run_to_end(run, grace_s=1)
    assert result.status == "failed"
    assert result.reason == "timed out after 0.5 s"


async def test_stop_terms_then_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    cmd = script(
        tmp_path,
        f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # stubborn: only SIGKILL ends it
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        print("ready", flush=True)
        time.sleep(60)
        """,
    )
    run = make_run(tmp_path, cmd)
    assert await run.start() is None
    out = Collected()
    waiting = asyncio.create_task(run.wait(LogBatcher(out), 0.3))
    deadline = asyncio.get_running_loop().time() + 20
    while not pidfile.exists() or not pidfile.read_text():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    grandchild = int(pidfile.read_text())
    await run.stop("stopped by user", grace_s=0.3)
    result = await asyncio.wait_for(waiting, 10)
    assert (result.status, result.reason) == ("stopped", "stopped by user")
    assert result.signal == signal.SIGKILL
    deadline = asyncio.get_running_loop().time() + 5
    while Path(f"/proc/{grandchild}").exists() and _is_alive(grandchild):
        assert asyncio.get_running_loop().time() < deadline, "grandchild outlived the stop"
        await asyncio.sleep(0.02)


def _is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_output_edge_cases_never_break_the_run(tmp_path: Path) -> None:
    cmd = script(
        tmp_path,
        r"""
        import sys
        sys.stdout.buffer.write(b"windows line\r\n")
        sys.stdout.buffer.write(b"bad bytes \xff\xfe here\n")
        sys.stdout.buffer.write(b"no newline at the end")
        """,
    )
    result, out = await run_to_end(make_run(tmp_path, cmd))
    assert result.status == "succeeded"
    assert [ln.line for ln in out.lines] == [
        "windows line",
        "bad bytes \ufffd\ufffd here",
        "no newline at the end",
    ]


async def test_lines_go_in_bounded_batches(tmp_path: Path) -> None:
    cmd = script(tmp_path, "for i in range(2500): print(i)")
    result, out = await run_to_end(make_run(tmp_path, cmd), max_lines=500)
    assert result.log_lines == 2500
    assert [int(ln.line) for ln in out.lines] == list(range(2500))
    assert max(len(b) for b in out.batches) <= 500
    assert len(out.batches) < 2500 / 10  # batched, not one message per line


async def test_a_run_over_its_line_rate_waits_and_loses_nothing(tmp_path: Path) -> None:
    # 60,000 lines printed at once, read at 20,000 lines/s: the program waits on its prints
    # (the pipe fills), so its own clock says the last print came well after the first.
    cmd = script(
        tmp_path,
        """
        import sys, time
        for i in range(60000):
            sys.stdout.write(f"{time.monotonic():.6f} {i}\\n")
        """,
    )
    result, out = await run_to_end(make_run(tmp_path, cmd), max_lines_per_s=20_000)

    assert result.status == "succeeded" and result.log_lines == 60_000
    assert [int(ln.line.split()[1]) for ln in out.lines] == list(range(60_000))
    printed = [float(ln.line.split()[0]) for ln in out.lines]
    # The pipe and the reader's buffer hold about 200 KiB (some 11,000 of these lines): the
    # rest waited for the reader.
    assert printed[-1] - printed[0] >= 1.0
    unbounded, fast = await run_to_end(make_run(tmp_path, cmd))
    assert unbounded.log_lines == 60_000
    fast_printed = [float(ln.line.split()[0]) for ln in fast.lines]
    assert fast_printed[-1] - fast_printed[0] < 1.0


@pytest.mark.parametrize("setpriv", [True, False], ids=["setpriv", "preexec"])
def test_the_process_dies_with_the_agent(tmp_path: Path, setpriv: bool) -> None:
    """However the agent dies (here SIGKILL), its experiment's process goes with it: started
    through setpriv, or, on a machine without it, with the signal set by the agent."""
    pidfile = tmp_path / "exp.pid"
    host = tmp_path / "host.py"
    host.write_text(
        textwrap.dedent(
            f"""
            import asyncio, sys, uuid
            from pathlib import Path
            from fleetlab_agent import runner
            from fleetlab_agent.runner import Run
            from fleetlab_common.runspec import RunSpec

            if not {setpriv!r}:
                runner._SETPRIV = None

            async def main():
                run = Run(uuid.uuid4(), 1, RunSpec(command=[sys.executable, "-c",
                    "import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); "
                    "time.sleep(60)"]), {{}}, Path({str(tmp_path / "w")!r}))
                assert await run.start() is None
                await asyncio.sleep(60)

            asyncio.run(main())
            """
        )
    )
    agent = subprocess.Popen([sys.executable, str(host)])
    try:
        import time

        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text()):
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.02)
        pid = int(pidfile.read_text())
        assert _is_alive(pid)
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        deadline = time.monotonic() + 5
        while _is_alive(pid):
            assert time.monotonic() < deadline, "the experiment outlived its agent"
            time.sleep(0.02)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


async def test_a_runaway_line_is_cut_with_a_marker_and_batches_stay_small(tmp_path: Path) -> None:
    cmd = script(
        tmp_path,
        """
        import sys
        sys.stdout.write("x" * 100_000 + "\\n")
        sys.stdout.write("y" * 50_000)   # no newline at all
        sys.stdout.flush()
        print("\\nafter", flush=True)
        """,
    )
    result, out = await run_to_end(make_run(tmp_path, cmd), max_lines=500)
    from fleetlab_agent.runner import MAX_LINE_BYTES

    lines = [ln.line for ln in out.lines]
    assert lines[0] == "x" * MAX_LINE_BYTES + " … [line cut: 100000 bytes]"
    assert lines[1] == "y" * MAX_LINE_BYTES + " … [line cut: 50000 bytes]"
    assert lines[2] == "after"
    assert result.log_lines == 3


async def test_batches_are_bounded_by_bytes(tmp_path: Path) -> None:
    cmd = script(tmp_path, "for i in range(400): print(str(i) * 2000)")
    result, out = await run_to_end(make_run(tmp_path, cmd), max_lines=500)
    assert result.log_lines == 400
    sizes = [sum(len(ln.line) for ln in b) for b in out.batches]
    assert max(sizes) <= 256 * 1024
    assert [ln.seq for ln in out.lines] == list(range(1, 401))


def test_what_the_experiment_started_dies_with_the_agent_too(tmp_path: Path) -> None:
    """A grandchild (here started by the experiment and in its process group) is killed by
    the reaper when the agent is SIGKILLed."""
    import time

    pidfile = tmp_path / "grandchild.pid"
    host = tmp_path / "host.py"
    host.write_text(
        textwrap.dedent(
            f"""
            import asyncio, sys, uuid
            from pathlib import Path
            from fleetlab_agent.reaper import Reaper
            from fleetlab_agent.runner import Run
            from fleetlab_common.runspec import RunSpec

            CHILD = (
                "import subprocess, sys, time; "
                "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                "open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)"
            )

            async def main():
                reaper = Reaper()
                reaper.start()
                run = Run(uuid.uuid4(), 1, RunSpec(command=[sys.executable, "-c", CHILD]), {{}},
                          Path({str(tmp_path / "w")!r}))
                assert await run.start() is None
                reaper.watch(run.process.pid)
                await asyncio.sleep(60)

            asyncio.run(main())
            """
        )
    )
    agent = subprocess.Popen([sys.executable, str(host)])
    try:
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text()):
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.02)
        grandchild = int(pidfile.read_text())
        assert _is_alive(grandchild)
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        deadline = time.monotonic() + 5
        while _is_alive(grandchild):
            assert time.monotonic() < deadline, "the experiment's child outlived the agent"
            time.sleep(0.02)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
