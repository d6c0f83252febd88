"""Where an experiment can run: pure logic over agents' capacity, no I/O.

Policy (documented in docs/architecture.md): experiments are taken by priority, then in
submission order. Each goes to the fitting agent (every label present; CPU slots, GPUs and
memory free) with the most free slots, which spreads load across machines. An experiment that
fits no agent's *free* capacity but would fit an agent's *total* capacity reserves that agent
for this round: nothing later in the queue is placed there, so a stream of small experiments
cannot starve a large one. Smaller experiments still backfill the other agents.
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

    def fits_total(
        self, labels: frozenset[str], res: Resources, project: str | None = None
    ) -> bool:
        return (
            self.serves(project)
            and labels <= self.labels
            and res.cpus <= self.slots
            and res.gpus <= len(self.gpu_ids)
            and (res.memory_mb == 0 or self.memory_mb == 0 or res.memory_mb <= self.memory_mb)
        )

    def fits_now(self, labels: frozenset[str], res: Resources, project: str | None = None) -> bool:
        return (
            self.serves(project)
            and not self.draining
            and not self.reserved
            and labels <= self.labels
            and res.cpus <= self.slots_free + 1e-9
            and res.gpus <= len(self.gpus_free())
            and (
                res.memory_mb == 0
                or self.memory_mb == 0
                or res.memory_mb <= self.memory_mb - self.memory_used
            )
        )

    def take(self, res: Resources) -> list[int]:
        """Reserve ``res`` here; return the GPU indices given."""
        gpus = self.gpus_free()[: res.gpus]
        self.slots_used += res.cpus
        self.gpus_used.update(gpus)
        self.memory_used += res.memory_mb
        return gpus


class Fleet:
    """The online agents of one placement round, kept ordered by free slots (most first), so
    that choosing an agent is a short scan that stops at the first fit, not a pass over all.
    """

    def __init__(self, agents: list[AgentCapacity]) -> None:
        self.agents = agents
        self._order = sorted(agents, key=_most_free)

    def any_free(self) -> bool:
        """Whether any agent could still take something this round."""
        return any(a.slots_free > 0 and not a.draining and not a.reserved for a in self.agents)

    def place(
        self, labels: frozenset[str], res: Resources, project: str | None = None
    ) -> tuple[AgentCapacity, list[int]] | None:
        """The agent that takes an experiment now (and its GPUs), or None; may reserve one."""
        for index, agent in enumerate(self._order):
            if agent.slots_free + 1e-9 < res.cpus:
                break  # ordered by free slots: no agent further on has enough
            if agent.fits_now(labels, res, project):
                gpus = agent.take(res)
                del self._order[index]
                bisect.insort(self._order, agent, key=_most_free)
                return agent, gpus
        # Fits nowhere now: hold back the biggest agent it fits on, so it goes first there.
        candidates = [
            a
            for a in self.agents
            if not a.draining and not a.reserved and a.fits_total(labels, res, project)
        ]
        if candidates:
            max(candidates, key=lambda a: (a.slots, a.id)).reserved = True
        return None


def _most_free(agent: AgentCapacity) -> tuple[float, str]:
    return (-agent.slots_free, agent.id)


def place(
    agents: list[AgentCapacity],
    labels: frozenset[str],
    res: Resources,
    project: str | None = None,
) -> tuple[AgentCapacity, list[int]] | None:
    """One placement over ``agents`` (see :class:`Fleet`, which a placement round keeps)."""
    return Fleet(agents).place(labels, res, project)


def why_waiting(
    agents: list[AgentCapacity],
    labels: frozenset[str],
    res: Resources,
    project: str | None = None,
) -> str:
    """A readable reason an experiment is still queued."""
    need = _describe(labels, res)
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
    big_enough = [a for a in labelled if a.fits_total(labels, res)]
    if not big_enough:
        return f"no online agent is big enough for {need}"
    return (
        f"waiting for {need}: {len(big_enough)} agent{'s' if len(big_enough) != 1 else ''} "
        "could run it, all busy"
    )


def _describe(labels: frozenset[str], res: Resources) -> str:
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
        res = Resources.model_validate((row["run"] or {}).get("resources", {}))
        agent.slots_used += res.cpus
        agent.gpus_used.update(row["gpus"] or [])
        agent.memory_used += res.memory_mb
    return list(by_id.values())
