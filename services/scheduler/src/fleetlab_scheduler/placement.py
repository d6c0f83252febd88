"""Where an experiment can run: pure logic over agents' capacity, no I/O.

Policy (documented in docs/architecture.md): experiments are taken by priority, then in
submission order. Each goes to the fitting agent (every label present; CPU slots, GPUs and
memory free) with the most free slots, which spreads load across machines. An experiment that
fits no agent's *free* capacity but would fit an agent's *total* capacity reserves that agent
for this round: nothing later in the queue is placed there, so a stream of small experiments
cannot starve a large one. Smaller experiments still backfill the other agents.

FGLab's fractional ``capacity`` (0 < c <= 1) takes the fraction c of the agent's *total* CPU
slots in place of ``resources.cpus`` (capacity 0.5 on a 4-slot agent takes 2 slots, so two run
at once there, as on FGMachine); GPUs and memory still come from ``resources``.

A multi-worker experiment (``workers: N``) is a gang: all N workers are placed in one step or
none is. Its workers go to the agents with the most free room first, each filled as far as it
goes, so a gang spans as few machines as it can. A gang that cannot be placed now, but would fit
the fleet's total capacity, reserves for the round the agents it would need, biggest first, so
single experiments behind it cannot starve it; they still backfill the other agents.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from fleetlab_common.runspec import Resources


@dataclass
class AgentCapacity:
    """One online agent: its totals and what is free now."""

    id: str
    labels: frozenset[str]
    slots: float
    gpu_ids: list[int]
    memory_mb: int
    draining: bool = False
    # Projects run with the agent's own command (FGMachine projects.json).
    projects: frozenset[str] = frozenset()
    slots_used: float = 0.0
    gpus_used: set[int] = field(default_factory=set)
    memory_used: int = 0
    reserved: bool = False

    @property
    def slots_free(self) -> float:
        return self.slots - self.slots_used

    def gpus_free(self) -> list[int]:
        return [g for g in self.gpu_ids if g not in self.gpus_used]

    def serves(self, project: str | None) -> bool:
        """``project`` None: the run brings its own command; any agent can start it."""
        return project is None or project in self.projects

    def cpus_for(self, res: Resources, capacity: float | None = None) -> float:
        """CPU slots one experiment takes here: a fraction of the agent, or ``res.cpus``."""
        return res.cpus if capacity is None else capacity * self.slots

    def fits_total(
        self,
        labels: frozenset[str],
        res: Resources,
        project: str | None = None,
        capacity: float | None = None,
    ) -> bool:
        return (
            self.serves(project)
            and labels <= self.labels
            and self.cpus_for(res, capacity) <= self.slots + 1e-9
            and res.gpus <= len(self.gpu_ids)
            and (res.memory_mb == 0 or self.memory_mb == 0 or res.memory_mb <= self.memory_mb)
        )

    def fits_now(
        self,
        labels: frozenset[str],
        res: Resources,
        project: str | None = None,
        capacity: float | None = None,
    ) -> bool:
        return (
            self.serves(project)
            and not self.draining
            and not self.reserved
            and labels <= self.labels
            and self.cpus_for(res, capacity) <= self.slots_free + 1e-9
            and res.gpus <= len(self.gpus_free())
            and (
                res.memory_mb == 0
                or self.memory_mb == 0
                or res.memory_mb <= self.memory_mb - self.memory_used
            )
        )

    def take(self, res: Resources, capacity: float | None = None) -> list[int]:
        """Reserve ``res`` here; return the GPU indices given."""
        gpus = self.gpus_free()[: res.gpus]
        self.slots_used += self.cpus_for(res, capacity)
        self.gpus_used.update(gpus)
        self.memory_used += res.memory_mb
        return gpus

    def how_many(self, res: Resources, capacity: float | None, limit: int, *, now: bool) -> int:
        """How many workers of ``res`` fit here (free room when ``now``, else total), at most
        ``limit``."""
        cpus = self.cpus_for(res, capacity)
        slots = self.slots_free if now else self.slots
        gpus = len(self.gpus_free()) if now else len(self.gpu_ids)
        memory = self.memory_mb - (self.memory_used if now else 0)
        count = limit
        if cpus > 0:
            count = min(count, int((slots + 1e-9) // cpus))
        if res.gpus:
            count = min(count, gpus // res.gpus)
        if res.memory_mb and self.memory_mb:
            count = min(count, max(memory, 0) // res.memory_mb)
        return max(count, 0)


class Fleet:
    """The online agents of one placement round, kept ordered by free slots (most first), so
    that choosing an agent is a short scan that stops at the first fit, not a pass over all.
    """

    def __init__(self, agents: list[AgentCapacity]) -> None:
        self.agents = agents
        self._order = sorted(agents, key=_most_free)

    @staticmethod
    def _open(agent: AgentCapacity) -> bool:
        """Whether ``agent`` could still take something this round."""
        return agent.slots_free > 0 and not agent.draining and not agent.reserved

    def free_slots(self) -> float:
        """CPU slots free on the agents that could still take something this round."""
        return sum(a.slots_free for a in self.agents if self._open(a))

    def any_free(self) -> bool:
        """Whether any agent could still take something this round."""
        return any(self._open(a) for a in self.agents)

    def place(
        self,
        labels: frozenset[str],
        res: Resources,
        project: str | None = None,
        capacity: float | None = None,
    ) -> tuple[AgentCapacity, list[int]] | None:
        """The agent that takes an experiment now (and its GPUs), or None; may reserve one."""
        for index, agent in enumerate(self._order):
            if capacity is None and agent.slots_free + 1e-9 < res.cpus:
                break  # ordered by free slots: no agent further on has enough
            if agent.fits_now(labels, res, project, capacity):
                gpus = agent.take(res, capacity)
                del self._order[index]
                bisect.insort(self._order, agent, key=_most_free)
                return agent, gpus
        # Fits nowhere now: hold back the biggest agent it fits on, so it goes first there.
        candidates = [
            a
            for a in self.agents
            if not a.draining and not a.reserved and a.fits_total(labels, res, project, capacity)
        ]
        if candidates:
            max(candidates, key=lambda a: (a.slots, a.id)).reserved = True
        return None

    def place_gang(
        self,
        workers: int,
        labels: frozenset[str],
        res: Resources,
        project: str | None = None,
        capacity: float | None = None,
    ) -> list[tuple[AgentCapacity, list[int]]] | None:
        """Places for all ``workers`` of a gang (rank order), or None and nothing taken.

        The agents with the most free room are filled first, so the gang spans few machines.
        A gang that does not fit now but fits the fleet's total capacity reserves the agents
        it would need (biggest first) for the rest of the round.
        """
        plan: list[tuple[AgentCapacity, int]] = []
        left = workers
        for agent in self._order:
            if left == 0:
                break
            if not agent.fits_now(labels, res, project, capacity):
                continue
            count = agent.how_many(res, capacity, left, now=True)
            if count:
                plan.append((agent, count))
                left -= count
        if left == 0:
            chosen: list[tuple[AgentCapacity, list[int]]] = []
            for agent, count in plan:
                chosen += [(agent, agent.take(res, capacity)) for _ in range(count)]
            self._order.sort(key=_most_free)
            return chosen
        # Not now: would it fit the fleet at all? Then hold back the agents it would need.
        candidates = sorted(
            (
                a
                for a in self.agents
                if not a.draining
                and not a.reserved
                and a.fits_total(labels, res, project, capacity)
            ),
            key=lambda a: (-a.slots, a.id),
        )
        held: list[AgentCapacity] = []
        left = workers
        for agent in candidates:
            if left <= 0:
                break
            count = agent.how_many(res, capacity, left, now=False)
            if count:
                held.append(agent)
                left -= count
        if left <= 0:
            for agent in held:
                agent.reserved = True
        return None


def _most_free(agent: AgentCapacity) -> tuple[float, str]:
    return (-agent.slots_free, agent.id)


def place(
    agents: list[AgentCapacity],
    labels: frozenset[str],
    res: Resources,
    project: str | None = None,
    capacity: float | None = None,
) -> tuple[AgentCapacity, list[int]] | None:
    """One placement over ``agents`` (see :class:`Fleet`, which a placement round keeps)."""
    return Fleet(agents).place(labels, res, project, capacity)


def why_waiting(
    agents: list[AgentCapacity],
    labels: frozenset[str],
    res: Resources,
    project: str | None = None,
    capacity: float | None = None,
    workers: int = 1,
) -> str:
    """A readable reason an experiment is still queued."""
    need = _describe(labels, res, capacity)
    if workers > 1:
        need = f"{workers} workers of {need}"
    if not agents:
        return "no agent online"
    usable = [a for a in agents if not a.draining]
    if not usable:
        return f"no agent takes work: {len(agents)} online, all draining"
    if project is not None:
        usable = [a for a in usable if a.serves(project)]
        if not usable:
            return f"no agent serves project {project} (its projects.json has no such entry)"
    labelled = [a for a in usable if labels <= a.labels]
    if not labelled:
        return f"no online agent has the labels {', '.join(sorted(labels))}"
    big_enough = [a for a in labelled if a.fits_total(labels, res, None, capacity)]
    if not big_enough:
        return f"no online agent is big enough for {need}"
    if workers > 1 and sum(a.how_many(res, capacity, workers, now=False) for a in big_enough) < (
        workers
    ):
        return f"the online agents together are not big enough for {need}"
    return (
        f"waiting for {need}: {len(big_enough)} agent{'s' if len(big_enough) != 1 else ''} "
        "could run it, all busy"
    )


def _describe(labels: frozenset[str], res: Resources, capacity: float | None = None) -> str:
    if capacity is not None:
        parts = [f"{capacity:g} of an agent's CPU slots"]
    else:
        parts = [f"{res.cpus:g} CPU slot{'s' if res.cpus != 1 else ''}"]
    if res.gpus:
        parts.append(f"{res.gpus} GPU{'s' if res.gpus != 1 else ''}")
    if res.memory_mb:
        parts.append(f"{res.memory_mb} MB of memory")
    if labels:
        parts.append("labels " + ", ".join(sorted(labels)))
    return " + ".join(parts)


def capacity_from_rows(agents: list[Any], active: list[Any]) -> list[AgentCapacity]:
    """Agents (online rows) with what their assigned and running experiments use."""
    by_id: dict[str, AgentCapacity] = {}
    for row in agents:
        hardware = row["hardware"] or {}
        by_id[row["id"]] = AgentCapacity(
            id=row["id"],
            labels=frozenset(row["labels"]),
            slots=float(row["slots"]),
            gpu_ids=[int(g["index"]) for g in hardware.get("gpus", [])],
            memory_mb=int(hardware.get("memory_mb", 0)),
            draining=bool(row["draining"]),
            projects=frozenset(row["projects"]),
        )
    for row in active:
        agent = by_id.get(row["agent_id"])
        if agent is None:
            continue
        run = row["run"] or {}
        res = Resources.model_validate(run.get("resources", {}))
        agent.slots_used += agent.cpus_for(res, run.get("capacity"))
        agent.gpus_used.update(row["gpus"] or [])
        agent.memory_used += res.memory_mb
    return list(by_id.values())
