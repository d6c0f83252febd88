"""The agent: heartbeats, takes its assignments, runs them, reports how they ended."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from pathlib import Path

import httpx
from faststream.nats import NatsBroker

from fleetlab_agent.code import CodeCache, CodeError
from fleetlab_agent.hardware import detect_hardware
from fleetlab_agent.inputs import CacheBound, InputCache, InputError
from fleetlab_agent.metrics import tail_run
from fleetlab_agent.outputs import upload_outputs
from fleetlab_agent.projects import load_projects
from fleetlab_agent.reaper import Reaper
from fleetlab_agent.rendezvous import free_port, reachable_address
from fleetlab_agent.results import ResultsWatcher, results_folder, watch_results
from fleetlab_agent.runner import LogBatcher, Run, RunResult, WireLine
from fleetlab_agent.settings import AgentSettings
from fleetlab_agent.spool import Spool
from fleetlab_agent.usage import Tracked, UsageSampler, sample_forever
from fleetlab_common.broker import publish_event
from fleetlab_common.events import (
    AgentHeartbeat,
    ExperimentAssigned,
    ExperimentFinished,
    ExperimentStarted,
    ExperimentStopOrdered,
    LogLinesAppended,
    Rpc,
    StagedInput,
    WorkerFinished,
    WorkerStarted,
    utcnow,
)
from fleetlab_common.ids import uuid7
from fleetlab_common.log import get_logger
from fleetlab_common.runspec import Input, artifact_ref

log = get_logger(__name__)


class Agent:
    """State of one agent process: what it runs, and its identity for this life."""

    def __init__(self, settings: AgentSettings, broker: NatsBroker) -> None:
        self.settings = settings
        self.broker = broker
        self.name = settings.agent.name
        self.instance_id = uuid7()
        self.started_at = utcnow()
        self.runs: dict[uuid.UUID, Run] = {}
        # Ranks of multi-worker experiments running here, by (experiment, rank).
        self.workers: dict[tuple[uuid.UUID, int], Run] = {}
        self.address = reachable_address(settings.nats.url, settings.agent.address)
        # Stops that arrived before their assignment (another stream, no order between them).
        self.stopped_early: OrderedDict[uuid.UUID, str] = OrderedDict()
        self._watchers: set[asyncio.Task[None]] = set()
        self._beat_now = asyncio.Event()
        self.reaper = Reaper()
        # Inputs and code snapshots share one size bound (FLEETLAB_AGENT__CACHE_MAX_MB).
        caches = CacheBound(settings.agent.cache_max_mb * 1024 * 1024)
        self.inputs = InputCache(
            settings.work_root().parent / "cache",
            settings.agent.max_input_mb * 1024 * 1024,
            caches,
        )
        self.http = httpx.AsyncClient(timeout=settings.agent.input_timeout_s, follow_redirects=True)
        # Code snapshots by digest, each downloaded once (see fleetlab_agent.code).
        self.code = CodeCache(settings.work_root().parent / "code-cache", bound=caches)
        self.spool = Spool(settings.spool_dir(), broker, settings.agent.spool_max_mb * 1024 * 1024)
        path = settings.agent.projects
        self.local_projects = load_projects(path) if path else {}
        self.projects_base = path.parent.resolve() if path else Path.cwd()
        self.usage = UsageSampler(self.name, self._tracked)

    def _tracked(self) -> list[Tracked]:
        """The running experiments and ranks, for the usage sampler."""
        return [
            Tracked(
                r.experiment_id,
                r.attempt,
                r.process.pid,
                tuple(r.gpus),
                r.rank if r.world_size > 1 else None,
            )
            for r in [*self.runs.values(), *self.workers.values()]
            if r.process is not None
        ]

    async def usage_loop(self) -> None:
        """Sample resource use every ``usage_interval_s`` seconds, sent through the spool."""
        await sample_forever(self.usage, self.spool.put, self.settings.agent.usage_interval_s)

    def heartbeat(self) -> AgentHeartbeat:
        return AgentHeartbeat(
            agent_id=self.name,
            instance_id=self.instance_id,
            slots=self.settings.agent.slots,
            running=list(self.runs) + list(dict.fromkeys(e for e, _ in self.workers)),
            labels=self.settings.agent.labels,
            projects=sorted(self.local_projects),
            hardware=detect_hardware(),
            started_at=self.started_at,
            usage=self.usage.latest,
            address=self.address,
        )

    async def heartbeat_loop(self) -> None:
        """Send a heartbeat every ``heartbeat_s`` seconds, and at once when capacity frees up."""
        while True:
            try:
                await publish_event(self.broker, self.heartbeat())
            except Exception as exc:  # NATS away: the next beat retries
                log.warning("agent.heartbeat_failed", error=repr(exc))
            self._beat_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.settings.agent.heartbeat_s)

    async def handle_assigned(self, event: ExperimentAssigned) -> None:
        """Start an assigned experiment; return once it runs (or could not start).

        Redeliveries of an assignment already running here are ignored. The message is
        acknowledged only after the started (or finished) event is stored, so an agent that
        dies before that gets the assignment again when it comes back.
        """
        gang = event.world_size > 1
        running = (
            (event.experiment_id, event.rank) in self.workers
            if gang
            else event.experiment_id in self.runs
        )
        if running:
            log.info("agent.duplicate_assignment", experiment_id=str(event.experiment_id))
            return
        workdir = self.settings.work_root() / f"{event.experiment_id}-{event.attempt}"
        if gang:
            workdir = workdir.with_name(f"{workdir.name}-r{event.rank}")
        spec, cwd, refusal, local_results = event.run, None, None, None
        if not spec.command:
            local = self.local_projects.get(event.project)
            if local is None:
                refusal = f"this agent does not serve project {event.project!r}"
            else:
                spec = spec.model_copy(
                    update={
                        "command": local.argv_prefix(),
                        "option_style": local.options,
                        "boolean": local.boolean,
                    }
                )
                cwd = local.workdir(self.projects_base)
                if local.results:
                    local_results = (self.projects_base / local.results).resolve()
        run = Run(
            experiment_id=event.experiment_id,
            attempt=event.attempt,
            spec=spec,
            options=event.options,
            workdir=workdir,
            gpus=event.gpus,
            cwd=cwd,
            rank=event.rank,
            world_size=event.world_size,
            local_rank=event.local_rank,
            master_addr=event.master_addr,
            master_port=event.master_port,
        )
        if gang and event.rank == 0:
            # Rank 0 holds the rendezvous: this machine's address and a port free here.
            run.master_addr = self.address
            run.master_port = free_port(self.address)
        if refusal is not None:
            await self._finish(run, RunResult(status="failed", reason=refusal, started=False))
            return
        early = (
            self.stopped_early.get(event.experiment_id)
            if gang
            else self.stopped_early.pop(event.experiment_id, None)
        )
        if early is not None:
            await self._finish(run, RunResult(status="stopped", reason=early, started=False))
            return
        run.prepare()
        run.results_dir = results_folder(
            event.experiment_id, cwd or workdir, spec.results, local_results
        )
        if run.results_dir is not None:
            with contextlib.suppress(OSError):  # the run may make it; watching copes
                run.results_dir.mkdir(parents=True, exist_ok=True)
        staged: list[StagedInput] = []
        try:
            if spec.code:  # the snapshot first: the program's files, then its inputs
                await self.code.stage(self.broker, self.http, spec.code, workdir)
            for item in spec.inputs:
                resolve = self._resolve_input if artifact_ref(item.url) else None
                staged.append(await self.inputs.stage(self.http, item, workdir / "inputs", resolve))
        except (InputError, CodeError) as exc:
            await self._finish(run, RunResult(status="failed", reason=str(exc), started=False))
            return
        failure = await run.start(prepared=True)
        if failure is not None:
            log.warning(
                "experiment.start_failed", experiment_id=str(event.experiment_id), reason=failure
            )
            await self._finish(run, RunResult(status="failed", reason=failure, started=False))
            return
        assert run.process is not None
        self.reaper.watch(run.process.pid)
        if gang:
            await self._started_worker(run, staged)
            return
        self.runs[event.experiment_id] = run
        log.info(
            "experiment.started",
            experiment_id=str(event.experiment_id),
            pid=run.process.pid,
            argv=run.argv,
        )
        await self.spool.put(
            ExperimentStarted(
                experiment_id=event.experiment_id,
                agent_id=self.name,
                instance_id=self.instance_id,
                attempt=event.attempt,
                pid=run.process.pid,
                argv=run.argv,
                workdir=str(workdir),
                inputs=staged,
            ),
        )
        task = asyncio.create_task(self._watch(run), name=f"run-{event.experiment_id}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _resolve_input(self, item: Input) -> tuple[str, str]:
        """An earlier experiment's artifact (artifact://…): a short-lived download URL from
        the API (this agent holds no storage credential), cached under its URL and sha256."""
        try:
            reply = await self.broker.request({"url": item.url}, Rpc.PRESIGN_INPUT, timeout=10)
            answer = await reply.decode()
        except Exception as exc:  # the API or NATS is away
            raise InputError(f"could not get a download URL from the API: {exc!r}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("url"), str):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise InputError(str(error or "the API gave an unexpected answer"))
        return answer["url"], f"{item.url}#{answer.get('sha256') or ''}"

    async def _started_worker(self, run: Run, staged: list[StagedInput]) -> None:
        """A rank of a multi-worker experiment runs: report it (rank 0 with its rendezvous)."""
        assert run.process is not None
        self.workers[(run.experiment_id, run.rank)] = run
        log.info(
            "experiment.worker_started",
            experiment_id=str(run.experiment_id),
            rank=run.rank,
            pid=run.process.pid,
        )
        await self.spool.put(
            WorkerStarted(
                experiment_id=run.experiment_id,
                agent_id=self.name,
                instance_id=self.instance_id,
                attempt=run.attempt,
                rank=run.rank,
                world_size=run.world_size,
                pid=run.process.pid,
                argv=run.argv,
                workdir=str(run.workdir),
                inputs=staged,
                master_addr=run.master_addr if run.rank == 0 else None,
                master_port=run.master_port if run.rank == 0 else None,
            ),
        )
        task = asyncio.create_task(self._watch(run), name=f"run-{run.experiment_id}-{run.rank}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def handle_stop_ordered(self, event: ExperimentStopOrdered) -> None:
        """Stop a run: SIGTERM to its group, SIGKILL after the grace period. Returns at once;
        the run's watcher reports it ``stopped`` when the process is gone."""
        ranks = [
            r
            for (eid, _), r in self.workers.items()
            if eid == event.experiment_id and r.attempt == event.attempt
        ]
        if ranks:
            for r in ranks:
                task = asyncio.create_task(
                    r.stop(event.reason, self.settings.agent.stop_grace_s),
                    name=f"stop-{event.experiment_id}-{r.rank}",
                )
                self._watchers.add(task)
                task.add_done_callback(self._watchers.discard)
            return
        run = self.runs.get(event.experiment_id)
        if run is None or run.attempt != event.attempt:
            self.stopped_early[event.experiment_id] = event.reason
            while len(self.stopped_early) > 10_000:
                self.stopped_early.popitem(last=False)
            return
        log.info("experiment.stopping", experiment_id=str(event.experiment_id))
        task = asyncio.create_task(
            run.stop(event.reason, self.settings.agent.stop_grace_s),
            name=f"stop-{event.experiment_id}",
        )
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, run: Run) -> None:
        async def publish_lines(lines: list[WireLine]) -> None:
            await self.spool.put(
                LogLinesAppended.encode(run.experiment_id, self.name, run.attempt, lines)
            )

        batcher = LogBatcher(
            publish_lines,
            self.settings.agent.batch_lines,
            self.settings.agent.batch_delay_s,
            rank=run.rank if run.world_size > 1 else None,
            world_size=run.world_size,
            max_lines_per_s=self.settings.agent.log_lines_per_s,
        )
        metrics = tail_run(self.spool.put, self.name, run)
        if run.spec.printed_metrics:
            batcher.on_hash_line = metrics.printed
        results: ResultsWatcher | None = None
        if run.results_dir is not None:
            results = watch_results(
                self.spool.put,
                self.name,
                run.experiment_id,
                run.attempt,
                run.results_dir,
                self.settings.agent.results_interval_s,
            )
        result = await run.wait(batcher, self.settings.agent.stop_grace_s)
        await metrics.close()
        if results is not None:
            await results.close()
        if run.process is not None:
            self.reaper.forget(run.process.pid)
        result.outputs, result.outputs_skipped = await upload_outputs(
            self.broker,
            self.http,
            run.experiment_id,
            run.attempt,
            run.workdir / "outputs",
            extra={"results": run.results_dir} if run.results_dir is not None else None,
            name_prefix=f"rank-{run.rank}/" if run.world_size > 1 and run.rank else "",
        )
        await self._finish(run, result)
        if run.world_size > 1:
            self.workers.pop((run.experiment_id, run.rank), None)
        else:
            self.runs.pop(run.experiment_id, None)
        self._beat_now.set()

    async def _finish(self, run: Run, result: RunResult) -> None:
        log.info(
            "experiment.finished",
            experiment_id=str(run.experiment_id),
            status=result.status,
            exit_code=result.exit_code,
            reason=result.reason,
        )
        outcome = {
            "experiment_id": run.experiment_id,
            "agent_id": self.name,
            "attempt": run.attempt,
            "status": result.status,
            "exit_code": result.exit_code,
            "signal": result.signal,
            "reason": result.reason,
            "started": result.started,
            "started_at": result.started_at,
            "log_lines": result.log_lines,
            "outputs": result.outputs,
            "outputs_skipped": result.outputs_skipped,
        }
        if run.world_size > 1:
            # One rank of several: the scheduler makes the experiment's one end of them all.
            await self.spool.put(
                WorkerFinished(**outcome, rank=run.rank, world_size=run.world_size)
            )
            return
        await self.spool.put(ExperimentFinished(**outcome))

    async def shutdown(self) -> None:
        """The agent is stopping: its experiments' processes go with it, at once."""
        for run in [*self.runs.values(), *self.workers.values()]:
            run.kill_now("the agent shut down during the run")
        # Report how they ended while NATS is still there; give up quickly if it is not.
        if self._watchers:
            await asyncio.wait(list(self._watchers), timeout=3.0)
        for task in list(self._watchers):
            task.cancel()
        for task in list(self._watchers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.reaper.close()
        # Send what is spooled while NATS is there; the rest waits on disk for the next start.
        await self.spool.drained(3.0)
        await self.spool.stop()
        await self.http.aclose()
