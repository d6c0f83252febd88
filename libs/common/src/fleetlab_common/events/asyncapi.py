"""The AsyncAPI document of the whole event catalog, as FastStream generates it.

One unconnected broker declares a publisher per event class; FastStream turns the publishers
and their pydantic models into an AsyncAPI 3.0 document. The api serves it at
``GET /api/v1/asyncapi.json``, and ``docs/asyncapi.json`` is a checked-in copy that a test keeps
equal to the code. Regenerate it with::

    python -m fleetlab_common.events.asyncapi > docs/asyncapi.json

``--table`` prints instead the Markdown catalog table of ``docs/architecture.md``.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import sys
from collections.abc import Sequence
from typing import Any

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI

import fleetlab_common
from fleetlab_common.events.base import Event
from fleetlab_common.events.catalog import EVENTS, publisher_of

TITLE = "Fleetlab events"

DESCRIPTION = """\
Every fact Fleetlab's services publish on NATS: the public event catalog, for subscribers \
of your own.

Each message is one JSON event with a uuid7 `id`, an `occurred_at` timestamp and a `type` \
naming it `<owner>.<entity>.<past-verb>`. The subject is the type; a routed event appends \
one id as the last token (`scheduler.experiment.assigned.{agent_id}`), so subscribe to \
`<type>.*` for all of them. Events in a stream (one per publishing service: API, SCHEDULER, \
AGENT, WEBHOOKS, LOGSTREAM) carry the header `Nats-Msg-Id` equal to `id`, and each stream drops a \
republished duplicate within its `duplicate_window`; services with a database publish only \
after it committed (through an outbox). Delivery is at least once: deduplicate on `id`. \
Heartbeats are on core NATS and not stored.

The catalog grows additively: ignore fields you do not know. Request/reply subjects \
(`rpc.<service>.health`, `rpc.logstream.lines`, `rpc.scheduler.agents`) are answers, not \
facts, and are not listed here."""

# Who subscribes to what. This documents the services (and feeds docs/architecture.md and the
# channel descriptions); each service declares its own subscribers.
_CONSUMERS: dict[str, tuple[str, ...]] = {
    "api.experiment.submitted": ("scheduler", "webhooks"),
    "api.experiment.stop_requested": ("scheduler",),
    "api.experiment.deleted": ("logstream",),
    "api.sweep.finished": ("webhooks",),
    "scheduler.experiment.assigned": ("agent", "api", "logstream"),
    "scheduler.experiment.lost": ("api", "webhooks"),
    "scheduler.agent.online": ("webhooks",),
    "scheduler.agent.offline": ("webhooks",),
    "scheduler.experiment.stop_ordered": ("agent",),
    "scheduler.experiment.cancelled": ("api", "webhooks"),
    "agent.heartbeat": ("scheduler",),
    "agent.experiment.started": ("api", "scheduler", "webhooks"),
    "agent.experiment.finished": ("api", "logstream", "scheduler", "webhooks"),
    "agent.log.appended": ("logstream",),
    "agent.agentlog.appended": ("logstream",),
    "agent.metrics.reported": ("logstream",),
    "logstream.metrics.summarized": ("api",),
    "agent.usage.sampled": ("logstream",),
    "agent.results.reported": ("api",),
    "agent.worker.started": ("scheduler",),
    "agent.worker.finished": ("scheduler",),
}

# The envelope every event shares; the catalog table lists only what each event adds.
_ENVELOPE = ("id", "occurred_at", "type")

# Headers every event carries (the outbox adds the W3C trace context beside them).
_HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "format": "uuid",
            "description": "The event's id: JetStream drops a republished duplicate.",
        },
        "Fleetlab-Event-Type": {
            "type": "string",
            "description": "The event's type, to route without decoding the body.",
        },
    },
    "required": ["Nats-Msg-Id", "Fleetlab-Event-Type"],
}


def consumers_of(cls: type[Event]) -> list[str]:
    """The services that consume ``cls``, sorted."""
    return sorted(_CONSUMERS.get(cls.event_type(), ()))


def subject_template(cls: type[Event]) -> str:
    """The subject with the routing token as ``{field}``: an AsyncAPI channel address."""
    if cls.ROUTE_FIELD is None:
        return cls.event_type()
    return f"{cls.event_type()}.{{{cls.ROUTE_FIELD}}}"


def storage_of(cls: type[Event]) -> str:
    """``stream <NAME>``, or that the event is not stored."""
    return f"stream {cls.STREAM}" if cls.STREAM else "core NATS, not stored"


def describe(cls: type[Event]) -> str:
    """The channel description: the class docstring, who publishes it, where it is kept."""
    # The class's own docstring: inspect.getdoc would fall back to Event's.
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    consumers = ", ".join(consumers_of(cls)) or "none inside Fleetlab"
    return (
        f"{doc}\n\nPublisher: {publisher_of(cls)}. Storage: {storage_of(cls)}. "
        f"Consumers: {consumers}."
    )


def _broker() -> NatsBroker:
    """An unconnected broker declaring one publisher per event (never started)."""
    broker = NatsBroker(
        "nats://127.0.0.1:4222",
        description="NATS with JetStream; `fleetlab up` runs it on this port.",
    )
    for cls in sorted(EVENTS, key=lambda cls: cls.event_type()):
        broker.publisher(
            subject_template(cls),
            stream=cls.STREAM,
            title=cls.event_type(),
            description=describe(cls),
            schema=cls,
        )
    return broker


def _sorted(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: mapping[key] for key in sorted(mapping)}


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every event in the catalog (the same dict on every call)."""
    spec = AsyncAPI(
        _broker(),
        title=TITLE,
        version=fleetlab_common.__version__,
        description=DESCRIPTION,
    )
    document: dict[str, Any] = spec.to_specification().to_jsonable()
    by_title = {cls.event_type(): cls for cls in EVENTS}
    for name, channel in document["channels"].items():
        route = by_title[name].ROUTE_FIELD
        if route is not None:
            # AsyncAPI wants every {parameter} of an address declared; FastStream leaves it out.
            channel["parameters"] = {
                route: {"description": f"The event's `{route}`: subscribe to one, or `*`."}
            }
    components = document["components"]
    for message in components["messages"].values():
        message["headers"] = copy.deepcopy(_HEADERS_SCHEMA)
    # FastStream collects publishers in a set, so these come in no fixed order.
    for key in ("channels", "operations"):
        document[key] = _sorted(document[key])
    for key in ("messages", "schemas"):
        components[key] = _sorted(components[key])
    return document


def payload_fields(cls: type[Event]) -> list[str]:
    """The JSON names of the fields ``cls`` adds to the envelope; ``?`` marks a default."""
    fields: list[str] = []
    for name, field in cls.model_fields.items():
        if name in _ENVELOPE:
            continue
        label = field.alias or name
        fields.append(label if field.is_required() else f"{label}?")
    return fields


def catalog_table() -> str:
    """The Markdown table of the catalog that ``docs/architecture.md`` embeds."""
    rows = [
        "| subject | stream | publisher | consumers | payload fields |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cls in EVENTS:
        subject = subject_template(cls).replace("{", "<").replace("}", ">")
        stream = f"`{cls.STREAM}`" if cls.STREAM else "core NATS (not stored)"
        consumers = ", ".join(consumers_of(cls)) or "—"
        fields = ", ".join(f"`{f}`" for f in payload_fields(cls))
        rows.append(f"| `{subject}` | {stream} | {publisher_of(cls)} | {consumers} | {fields} |")
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Print the AsyncAPI document as JSON (or, with ``--table``, the catalog table)."""
    parser = argparse.ArgumentParser(
        prog="python -m fleetlab_common.events.asyncapi",
        description="Print the AsyncAPI document of Fleetlab's event catalog.",
    )
    parser.add_argument(
        "--table", action="store_true", help="print the Markdown catalog table instead"
    )
    args = parser.parse_args(argv)
    if args.table:
        sys.stdout.write(catalog_table())
    else:
        sys.stdout.write(json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
