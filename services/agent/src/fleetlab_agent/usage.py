"""Resource use (MLBench's CPU and memory per worker), sampled every few seconds.

Every ``usage_interval_s`` seconds (5 by default) the agent measures the machine (CPU %,
memory used and total, each GPU's utilisation and memory through NVML; no GPU is fine) and,
for each running experiment, its whole process tree: the process group the run started in,
with every descendant of its leader (a child that made a session of its own still counts).
For a tree, CPU % is summed over its processes (100 is one core busy) from the CPU time used
since the previous sample (a process seen for the first time counts its whole life), and RSS
is summed too (shared pages count once per process). GPU memory is what NVML says the tree's
processes hold; GPU % the mean utilisation of the GPUs given to the run.

Each rank of a multi-worker experiment is a tree of its own and makes a sample of its own,
with its ``rank`` (None for a single process), also when several ranks run on one agent.

One ``agent.usage.sampled`` event per interval carries the machine sample and every
experiment's, written to the agent's spool like metrics: nothing is lost while NATS is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from fleetlab_common.events import (
    Event,
    ExperimentUsage,
    GpuUsage,
    MachineUsage,
    UsageSampled,
    utcnow,
)
from fleetlab_common.log import get_logger

log = get_logger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class Tracked:
    """A running experiment (or one rank of it) as the sampler sees it: its group leader, its
    GPUs and its rank (None for a single process)."""

    experiment_id: uuid.UUID
    attempt: int
    pid: int
    gpus: tuple[int, ...] = ()
    rank: int | None = None


class _Nvml:
    """NVML for the sampler's life, when there is an NVIDIA driver; otherwise nothing."""

    def __init__(self) -> None:
        self.mod: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no nvidia-ml-py, no driver, no GPU: no GPU sample
            return
        self.mod = pynvml

    def sample(self) -> tuple[list[GpuUsage], dict[int, float]]:
        """Each GPU's use, and the GPU memory (MB) each process holds, over every GPU."""
        nv = self.mod
        if nv is None:
            return [], {}
        gpus: list[GpuUsage] = []
        per_pid: dict[int, float] = {}
        try:
            for index in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                memory = nv.nvmlDeviceGetMemoryInfo(handle)
                try:
                    util = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
                except nv.NVMLError:
                    util = 0.0
                gpus.append(
                    GpuUsage(
                        index=index,
                        utilization=util,
                        memory_used_mb=round(int(memory.used) / MB, 1),
                        memory_total_mb=round(int(memory.total) / MB, 1),
                    )
                )
                with contextlib.suppress(nv.NVMLError):
                    for proc in nv.nvmlDeviceGetComputeRunningProcesses(handle):
                        used = getattr(proc, "usedGpuMemory", None) or 0
                        per_pid[proc.pid] = per_pid.get(proc.pid, 0.0) + int(used) / MB
        except nv.NVMLError as exc:
            log.warning("agent.gpu_usage_failed", error=str(exc))
        return gpus, per_pid

    def close(self) -> None:
        if self.mod is not None:
            with contextlib.suppress(Exception):
                self.mod.nvmlShutdown()
            self.mod = None


@dataclass
class UsageSampler:
    """Measures the machine and the process trees of the runs ``tracked`` returns."""

    agent_id: str
    tracked: Callable[[], Iterable[Tracked]]
    # Per process: (create time, CPU seconds used) at the previous sample.
    _cpu: dict[int, tuple[float, float]] = field(default_factory=dict)
    _last: float = 0.0
    _nvml: _Nvml | None = None
    latest: MachineUsage | None = None

    def __post_init__(self) -> None:
        psutil.cpu_percent(None)  # the first call only starts psutil's clock
        self._last = time.monotonic()

    def _trees(self, leaders: set[int]) -> dict[int, set[int]]:
        """Each leader's tree: its process group and every descendant of the leader."""
        children: dict[int, list[int]] = {}
        trees: dict[int, set[int]] = {pid: set() for pid in leaders}
        for proc in psutil.process_iter(["pid", "ppid"]):
            pid, ppid = proc.info["pid"], proc.info["ppid"]
            children.setdefault(ppid, []).append(pid)
            try:
                group = os.getpgid(pid)
            except OSError:
                continue
            if group in trees:
                trees[group].add(pid)
        for leader, members in trees.items():
            stack = [leader]
            while stack:
                pid = stack.pop()
                for child in children.get(pid, ()):
                    if child not in members:
                        members.add(child)
                        stack.append(child)
            if psutil.pid_exists(leader):
                members.add(leader)
        return trees

    def _process(self, pid: int, elapsed: float, now: float) -> tuple[float, float] | None:
        """(CPU %, RSS bytes) of one process; None when it is gone."""
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                created = proc.create_time()
                times = proc.cpu_times()
                rss = proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        used = times.user + times.system + times.children_user + times.children_system
        before = self._cpu.get(pid)
        self._cpu[pid] = (created, used)
        if before is not None and before[0] == created and elapsed > 0:
            percent = (used - before[1]) / elapsed * 100
        else:
            # First seen (or the pid was reused): its average over its life so far.
            life = max(now - created, 1e-3)
            percent = used / life * 100
        return max(percent, 0.0), float(rss)

    def sample(self, runs: list[Tracked] | None = None) -> UsageSampled:
        """One sample of the machine and of ``runs`` (by default, what ``tracked`` gives);
        blocking: run it in a thread."""
        if self._nvml is None:
            self._nvml = _Nvml()
        now_mono = time.monotonic()
        elapsed, self._last = now_mono - self._last, now_mono
        now = time.time()
        ts = utcnow()
        gpus, gpu_by_pid = self._nvml.sample()
        memory = psutil.virtual_memory()
        machine = MachineUsage(
            ts=ts,
            cpu_percent=psutil.cpu_percent(None),
            memory_used_mb=round((memory.total - memory.available) / MB, 1),
            memory_total_mb=round(memory.total / MB, 1),
            gpus=gpus,
        )
        if runs is None:
            runs = list(self.tracked())
        trees = self._trees({r.pid for r in runs}) if runs else {}
        seen: set[int] = set()
        experiments: list[ExperimentUsage] = []
        util = {g.index: g.utilization for g in gpus}
        # One sample per experiment, or per rank of a multi-worker one (ranks on one agent are
        # told apart too). The same run tracked twice is one.
        groups: dict[tuple[uuid.UUID, int, int | None], list[Tracked]] = {}
        for run in runs:
            groups.setdefault((run.experiment_id, run.attempt, run.rank), []).append(run)
        for (experiment_id, attempt, rank), members in groups.items():
            cpu = rss = 0.0
            count = 0
            gpu_memory = 0.0
            for pid in {pid for run in members for pid in trees.get(run.pid, ())}:
                got = self._process(pid, elapsed, now)
                if got is None:
                    continue
                seen.add(pid)
                cpu += got[0]
                rss += got[1]
                count += 1
                gpu_memory += gpu_by_pid.get(pid, 0.0)
            given = [util[i] for i in {g for run in members for g in run.gpus} if i in util]
            experiments.append(
                ExperimentUsage(
                    experiment_id=experiment_id,
                    attempt=attempt,
                    rank=rank,
                    ts=ts,
                    cpu_percent=round(cpu, 1),
                    rss_mb=round(rss / MB, 1),
                    processes=count,
                    gpu_percent=round(sum(given) / len(given), 1) if given else None,
                    gpu_memory_mb=round(gpu_memory, 1) if gpus else None,
                )
            )
        # Forget processes that are gone (or no longer in a run).
        for pid in [p for p in self._cpu if p not in seen]:
            del self._cpu[pid]
        self.latest = machine
        return UsageSampled(agent_id=self.agent_id, machine=machine, experiments=experiments)

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()


async def sample_forever(
    sampler: UsageSampler, send: Callable[[Event], Awaitable[None]], interval_s: float
) -> None:
    """Sample every ``interval_s`` seconds and send each sample (the agent's spool)."""
    try:
        while True:
            started = time.monotonic()
            try:
                # The runs are read here, in the event loop that changes them.
                runs = list(sampler.tracked())
                await send(await asyncio.to_thread(sampler.sample, runs))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a sample is worth a warning, never the agent
                log.warning("agent.usage_sample_failed", error=repr(exc))
            await asyncio.sleep(max(interval_s - (time.monotonic() - started), 0.0))
    finally:
        sampler.close()
