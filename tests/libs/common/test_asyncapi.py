"""The event catalog as public API: its AsyncAPI document, its wire format, its documentation."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import fleetlab_common
from fleetlab_common.events import (
    EVENTS,
    AgentHeartbeat,
    AgentOffline,
    AgentOnline,
    DeliveryFailed,
    DeliverySucceeded,
    EndpointPaused,
    Event,
    ExperimentAssigned,
    ExperimentCancelled,
    ExperimentDeleted,
    ExperimentFinished,
    ExperimentLost,
    ExperimentStarted,
    ExperimentStopOrdered,
    ExperimentStopRequested,
    ExperimentSubmitted,
    LogLine,
    LogLinesAppended,
    SweepFinished,
)
from fleetlab_common.events.agent import (
    AgentLogAppended,
    AgentLogLine,
    ExperimentUsage,
    MachineUsage,
    MetricPoint,
    MetricsReported,
    ResultsReported,
    UsageSampled,
    WorkerFinished,
    WorkerStarted,
)
from fleetlab_common.events.asyncapi import asyncapi_document, catalog_table, main
from fleetlab_common.events.logstream import MetricsSummarized, MetricSummaryEntry
from fleetlab_common.runspec import RunSpec

ROOT = Path(__file__).resolve().parents[3]
ASYNCAPI_JSON = ROOT / "docs" / "asyncapi.json"
ARCHITECTURE_MD = ROOT / "docs" / "architecture.md"
REGENERATE = "python -m fleetlab_common.events.asyncapi > docs/asyncapi.json"
TABLE_BEGIN = "<!-- event-catalog:begin -->"
TABLE_END = "<!-- event-catalog:end -->"

EXPERIMENT = uuid.UUID("0190a3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b")
INSTANCE = uuid.UUID("0190a3c4-5b6d-7e8f-9a0b-000000000001")
RUN = RunSpec(command=["python", "train.py"])
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def sample(cls: type[Event]) -> Event:
    """One valid event of ``cls``, with every field the model requires."""
    samples: dict[type[Event], Event] = {
        ExperimentSubmitted: ExperimentSubmitted(
            experiment_id=EXPERIMENT,
            project_id=uuid.uuid4(),
            project="mnist",
            options={"lr": 0.1, "epochs": 3},
            run=RUN,
        ),
        ExperimentStopRequested: ExperimentStopRequested(experiment_id=EXPERIMENT),
        ExperimentDeleted: ExperimentDeleted(experiment_id=EXPERIMENT),
        SweepFinished: SweepFinished(
            sweep_id=uuid.UUID("0190a3c4-5b6d-7e8f-9a0b-000000000002"),
            project_id=uuid.UUID("0190a3c4-5b6d-7e8f-9a0b-000000000003"),
            project="mnist",
            trials=4,
            counts={"succeeded": 3, "failed": 1},
            best_experiment_id=EXPERIMENT,
            metric="results._scores.accuracy",
            best_value=0.93,
        ),
        ExperimentAssigned: ExperimentAssigned(
            experiment_id=EXPERIMENT, agent_id="gpu-01", project="mnist", run=RUN
        ),
        ExperimentLost: ExperimentLost(
            experiment_id=EXPERIMENT, agent_id="gpu-01", attempt=1, reason="lease expired"
        ),
        ExperimentStopOrdered: ExperimentStopOrdered(
            experiment_id=EXPERIMENT, agent_id="gpu-01", attempt=1, reason="stopped by user"
        ),
        ExperimentCancelled: ExperimentCancelled(experiment_id=EXPERIMENT, attempt=1),
        AgentOnline: AgentOnline(agent_id="gpu-01", hostname="gpu-01.lab"),
        AgentOffline: AgentOffline(agent_id="gpu-01"),
        AgentHeartbeat: AgentHeartbeat(
            agent_id="gpu-01", instance_id=INSTANCE, slots=2, running=[EXPERIMENT]
        ),
        ExperimentStarted: ExperimentStarted(
            experiment_id=EXPERIMENT,
            agent_id="gpu-01",
            instance_id=INSTANCE,
            pid=4242,
            argv=["python", "train.py", "--lr=0.1"],
            workdir="/var/lib/fleetlab/work/x-1",
        ),
        ExperimentFinished: ExperimentFinished(
            experiment_id=EXPERIMENT, agent_id="gpu-01", status="succeeded", exit_code=0
        ),
        LogLinesAppended: LogLinesAppended(
            experiment_id=EXPERIMENT,
            agent_id="gpu-01",
            lines=[
                LogLine(seq=1, stream="stdout", ts=NOW, line="epoch 1"),
                LogLine(seq=2, stream="stderr", ts=NOW, line="warning: ünïcode"),
            ],
        ),
        AgentLogAppended: AgentLogAppended(
            agent_id="gpu-01",
            instance_id=INSTANCE,
            lines=[AgentLogLine(ts=NOW, level="info", line='{"event": "agent.ready"}')],
        ),
        MetricsReported: MetricsReported(
            experiment_id=EXPERIMENT,
            agent_id="gpu-01",
            points=[MetricPoint(name="loss", value=0.21, step=3, ts=NOW)],
            scores={"accuracy": 0.93},
        ),
        UsageSampled: UsageSampled(
            agent_id="gpu-01",
            machine=MachineUsage(
                ts=NOW, cpu_percent=37.5, memory_used_mb=6144, memory_total_mb=16384
            ),
            experiments=[
                ExperimentUsage(
                    experiment_id=EXPERIMENT, ts=NOW, cpu_percent=98.0, rss_mb=512, processes=2
                )
            ],
        ),
        ResultsReported: ResultsReported(
            experiment_id=EXPERIMENT,
            agent_id="gpu-01",
            results={"_scores": {"Test Score": 0.09}, "Notes": "first run"},
            files=["scores.json", "notes.json"],
        ),
        WorkerStarted: WorkerStarted(
            experiment_id=EXPERIMENT,
            agent_id="gpu-01",
            instance_id=INSTANCE,
            rank=0,
            world_size=2,
            pid=4242,
            argv=["python", "train.py"],
            workdir="/var/lib/fleetlab/work/x-1-r0",
            master_addr="10.0.0.5",
            master_port=29500,
        ),
        WorkerFinished: WorkerFinished(
            experiment_id=EXPERIMENT,
            agent_id="gpu-02",
            rank=1,
            world_size=2,
            status="failed",
            exit_code=3,
            reason="exit code 3",
        ),
        MetricsSummarized: MetricsSummarized(
            experiment_id=EXPERIMENT,
            metrics=[
                MetricSummaryEntry(
                    name="loss", last=0.21, last_step=3, last_ts=NOW, min=0.2, max=1.5, count=4
                )
            ],
            scores={"accuracy": 0.93},
        ),
        DeliverySucceeded: DeliverySucceeded(
            delivery_id=uuid.uuid4(),
            endpoint_id=uuid.uuid4(),
            event_id=uuid.uuid4(),
            delivered_type="agent.experiment.finished",
            attempt=1,
            status_code=204,
        ),
        DeliveryFailed: DeliveryFailed(
            delivery_id=uuid.uuid4(),
            endpoint_id=uuid.uuid4(),
            event_id=uuid.uuid4(),
            delivered_type="agent.experiment.finished",
            attempt=3,
            error="connection refused",
            final=True,
        ),
        EndpointPaused: EndpointPaused(
            endpoint_id=uuid.uuid4(),
            url="https://hooks.example.com/fleetlab",
            cause="gone",
            reason="the endpoint answered 410 Gone",
        ),
    }
    if cls not in samples:
        pytest.fail(f"add a sample {cls.__name__} to sample() in {Path(__file__).name}")
    return samples[cls]


def by_type(cls: type[Event]) -> str:
    return cls.event_type()


# --- the AsyncAPI document -------------------------------------------------------------------


def test_checked_in_document_is_current() -> None:
    checked_in = json.loads(ASYNCAPI_JSON.read_text())
    assert checked_in == asyncapi_document(), (
        f"docs/asyncapi.json is out of date with the event catalog; regenerate it: {REGENERATE}"
    )


def test_main_prints_the_checked_in_text(capsys: pytest.CaptureFixture[str]) -> None:
    main([])
    printed = capsys.readouterr().out
    assert printed == json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n"
    assert printed == ASYNCAPI_JSON.read_text(), f"regenerate it: {REGENERATE}"


def test_document_is_deterministic() -> None:
    first, second = asyncapi_document(), asyncapi_document()
    # Same content and the same key order, so even an unsorted dump is stable.
    assert json.dumps(first) == json.dumps(second)
    assert list(first["channels"]) == sorted(first["channels"])


def test_document_names_the_catalog() -> None:
    document = asyncapi_document()
    assert document["asyncapi"].startswith("3.")
    assert document["info"]["title"] == "Fleetlab events"
    assert document["info"]["version"] == fleetlab_common.__version__
    assert set(document["channels"]) == {cls.event_type() for cls in EVENTS}


@pytest.mark.parametrize("cls", EVENTS, ids=by_type)
def test_every_event_is_documented_with_its_payload(cls: type[Event]) -> None:
    document = asyncapi_document()
    channel = document["channels"][cls.event_type()]
    if cls.ROUTE_FIELD:
        assert channel["address"] == f"{cls.event_type()}.{{{cls.ROUTE_FIELD}}}"
        assert set(channel["parameters"]) == {cls.ROUTE_FIELD}
    else:
        assert channel["address"] == cls.event_type()
        assert "parameters" not in channel
    storage = f"stream {cls.STREAM}" if cls.STREAM else "core NATS, not stored"
    assert f"Storage: {storage}." in channel["description"]

    (message_ref,) = (m["$ref"] for m in channel["messages"].values())
    message = _resolve(document, message_ref)
    assert "Nats-Msg-Id" in message["headers"]["required"]
    payload = _resolve(document, message["payload"]["$ref"])
    expected = cls.model_json_schema()
    assert set(expected["properties"]) <= set(payload["properties"])
    assert set(expected.get("required", [])) == set(payload.get("required", []))
    assert payload["properties"]["type"]["const"] == cls.event_type()


def _resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


# --- the wire format -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", EVENTS, ids=by_type)
def test_event_round_trips_through_json(cls: type[Event]) -> None:
    event = sample(cls)
    assert cls.model_validate_json(event.model_dump_json()) == event


@pytest.mark.parametrize("cls", EVENTS, ids=by_type)
def test_unknown_fields_are_ignored_when_reading(cls: type[Event]) -> None:
    # A newer publisher adds fields; an older consumer must still read the event.
    original = sample(cls)
    body = json.loads(original.model_dump_json())
    body["added_in_a_later_version"] = {"nested": [1, 2, 3]}
    event = cls.model_validate_json(json.dumps(body))
    assert event == original
    assert not hasattr(event, "added_in_a_later_version")
    assert "added_in_a_later_version" not in event.model_dump_json()


@pytest.mark.parametrize("cls", EVENTS, ids=by_type)
def test_subject_and_headers(cls: type[Event]) -> None:
    event = sample(cls)
    if cls.ROUTE_FIELD:
        route = str(getattr(event, cls.ROUTE_FIELD))
        assert event.subject() == f"{cls.event_type()}.{route}"
        assert cls.subscribe_subject() == f"{cls.event_type()}.*"
    else:
        assert event.subject() == cls.event_type() == cls.subscribe_subject()
    headers = event.headers()
    assert headers["Nats-Msg-Id"] == str(event.id)
    assert headers["Fleetlab-Event-Type"] == cls.event_type()


def test_routed_subjects_end_with_the_routing_id() -> None:
    assigned = sample(ExperimentAssigned)
    assert assigned.subject() == "scheduler.experiment.assigned.gpu-01"
    logs = sample(LogLinesAppended)
    assert logs.subject() == f"agent.log.appended.{EXPERIMENT}"


def test_delivered_type_travels_as_event_type() -> None:
    delivery = sample(DeliverySucceeded)
    body = json.loads(delivery.model_dump_json())
    assert body["event_type"] == "agent.experiment.finished"
    assert "delivered_type" not in body
    assert DeliverySucceeded.model_validate(body).delivered_type == "agent.experiment.finished"


# --- docs/architecture.md --------------------------------------------------------------------


@pytest.mark.parametrize("cls", EVENTS, ids=by_type)
def test_architecture_doc_mentions_every_event(cls: type[Event]) -> None:
    assert cls.event_type() in ARCHITECTURE_MD.read_text(), (
        f"docs/architecture.md does not mention {cls.event_type()}"
    )


def test_architecture_doc_embeds_the_generated_catalog_table() -> None:
    text = ARCHITECTURE_MD.read_text()
    assert TABLE_BEGIN in text and TABLE_END in text
    embedded = text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip("\n") + "\n"
    assert embedded == catalog_table(), (
        "the event catalog table in docs/architecture.md is out of date; replace it with the "
        "output of: python -m fleetlab_common.events.asyncapi --table"
    )
