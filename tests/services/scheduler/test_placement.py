"""Placement policy, as pure logic: labels, resources, spreading, no starvation, reasons."""

from __future__ import annotations

from fleetlab_common.runspec import Resources
from fleetlab_scheduler.placement import AgentCapacity, place, why_waiting

NONE: frozenset[str] = frozenset()


def agent(
    name: str, slots: float = 4, gpus: int = 0, memory_mb: int = 0, **kw: object
) -> AgentCapacity:
    return AgentCapacity(
        id=name,
        labels=frozenset(kw.pop("labels", ())),  # type: ignore[arg-type]
        slots=slots,
        gpu_ids=list(range(gpus)),
        memory_mb=memory_mb,
        **kw,  # type: ignore[arg-type]
    )


def test_goes_to_the_agent_with_most_free_slots() -> None:
    a, b = agent("a", slots=4), agent("b", slots=8)
    chosen = place([a, b], NONE, Resources())
    assert chosen is not None and chosen[0] is b
    assert b.slots_free == 7


def test_labels_must_all_be_on_the_agent() -> None:
    cpu, gpu = agent("cpu"), agent("gpu", labels={"gpu", "a100"})
    chosen = place([cpu, gpu], frozenset({"gpu"}), Resources())
    assert chosen is not None and chosen[0] is gpu
    assert place([cpu], frozenset({"gpu"}), Resources()) is None
    assert why_waiting([cpu], frozenset({"gpu"}), Resources()) == (
        "no online agent has the labels gpu"
    )


def test_gpus_are_given_by_index_and_not_shared() -> None:
    box = agent("box", slots=8, gpus=2)
    first = place([box], NONE, Resources(gpus=1))
    second = place([box], NONE, Resources(gpus=1))
    assert first is not None and second is not None
    assert {tuple(first[1]), tuple(second[1])} == {(0,), (1,)}
    assert place([box], NONE, Resources(gpus=1)) is None
    assert why_waiting([box], NONE, Resources(gpus=3)) == (
        "no online agent is big enough for 1 CPU slot + 3 GPUs"
    )


def test_memory_counts() -> None:
    box = agent("box", slots=8, memory_mb=1000)
    assert place([box], NONE, Resources(memory_mb=600)) is not None
    assert place([box], NONE, Resources(memory_mb=600)) is None


def test_a_big_request_reserves_an_agent_against_a_stream_of_small_ones() -> None:
    big_box, small_box = agent("big", slots=4), agent("small", slots=1)
    big_box.slots_used = 2  # busy: the 4-slot request does not fit now
    assert place([big_box, small_box], NONE, Resources(cpus=4)) is None
    assert big_box.reserved
    # Later, smaller experiments backfill the other agent but not the reserved one.
    chosen = place([big_box, small_box], NONE, Resources(cpus=1))
    assert chosen is not None and chosen[0] is small_box
    assert place([big_box, small_box], NONE, Resources(cpus=1)) is None


def test_draining_agents_take_nothing_and_reasons_say_so() -> None:
    a = agent("a", draining=True)
    assert place([a], NONE, Resources()) is None
    assert why_waiting([a], NONE, Resources()) == "no agent takes work: 1 online, all draining"
    assert why_waiting([], NONE, Resources()) == "no agent online"
    busy = agent("b", slots=1, slots_used=1)
    assert why_waiting([busy], NONE, Resources()) == (
        "waiting for 1 CPU slot: 1 agent could run it, all busy"
    )


def test_placement_sends_a_local_project_only_to_agents_that_serve_it() -> None:
    plain = AgentCapacity(id="plain", labels=frozenset(), slots=8, gpu_ids=[], memory_mb=0)
    serving = AgentCapacity(
        id="serving",
        labels=frozenset(),
        slots=1,
        gpu_ids=[],
        memory_mb=0,
        projects=frozenset({"mnist"}),
    )
    chosen = place([plain, serving], frozenset(), Resources(), "mnist")
    assert chosen is not None and chosen[0] is serving
    assert why_waiting([plain], frozenset(), Resources(), "mnist").startswith(
        "no agent serves project mnist"
    )
