"""The webhooks logic: endpoints, events turned into deliveries, and the delivery loop.

An event is consumed from JetStream (a durable consumer per event type) and, in one
transaction with its inbox row, becomes one ``deliveries`` row per matching endpoint: only
then is it acknowledged. The dispatcher takes due rows from Postgres, so a restart loses no
delivery, and a row is held by a lease while its attempt runs, so none is sent twice except
as a retry (an attempt cut off by a crash is retried when the lease ends, with the same
``webhook-id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from pydantic import ValidationError

from fleetlab_common.db import Conn
from fleetlab_common.db.inbox import InboxBatch
from fleetlab_common.db.outbox import OutboxRelay, enqueue
from fleetlab_common.events import (
    DeliveryFailed,
    DeliverySucceeded,
    EndpointPaused,
    Event,
    utcnow,
)
from fleetlab_common.ids import uuid7
from fleetlab_common.log import get_logger
from fleetlab_webhooks import public
from fleetlab_webhooks import repository as repo
from fleetlab_webhooks.retry import RetryPolicy
from fleetlab_webhooks.schemas import (
    DeliveriesQuery,
    DeliveryRef,
    EndpointChanges,
    EndpointCreate,
    EndpointRef,
    EndpointUpdate,
)
from fleetlab_webhooks.settings import WebhooksSettings
from fleetlab_webhooks.signing import new_secret, secret_problem, signed_headers
from fleetlab_webhooks.ssrf import (
    AddressPolicy,
    Resolver,
    SafeTransport,
    UrlRefusedError,
    check_url,
    system_resolver,
)

log = get_logger(__name__)


class SubmissionNotSeenError(Exception):
    """An event about an experiment whose submission this service has not read yet."""


CONSUMER = "webhooks"
USER_AGENT = "Fleetlab-Webhooks/0.1"


class WebhookError(Exception):
    """An expected failure of a request, answered with ``status`` (HTTP-like)."""

    def __init__(self, status: int, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields or {}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def endpoint_view(row: asyncpg.Record) -> dict[str, Any]:
    """An endpoint as the API shows it: never its secret."""
    view: dict[str, Any] = {
        "id": str(row["id"]),
        "url": row["url"],
        "kind": row["kind"],
        "events": list(row["events"]),
        "project": row["project"],
        "experiment": row["experiment"],
        "description": row["description"],
        "paused": row["paused_at"] is not None,
        "paused_at": _iso(row["paused_at"]),
        "paused_reason": row["paused_reason"],
        "failing_since": _iso(row["failing_since"]),
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }
    if row["kind"] == "fglab":
        view["options"] = row["fglab_body"]
    return view


def delivery_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "endpoint_id": str(row["endpoint_id"]),
        "event_id": str(row["event_id"]),
        "event_type": row["public_type"],
        "source": row["event_type"],
        "state": row["state"],
        "attempts": row["attempt"],
        "next_attempt_at": _iso(row["next_attempt_at"]) if row["state"] == "pending" else None,
        "last_attempt_at": _iso(row["last_attempt_at"]),
        "status_code": row["status_code"],
        "latency_ms": row["latency_ms"],
        "error": row["error"],
        "response_body": row["response_body"],
        "created_at": _iso(row["created_at"]),
    }


def attempt_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "attempt": row["attempt"],
        "at": _iso(row["at"]),
        "manual": row["manual"],
        "status_code": row["status_code"],
        "latency_ms": row["latency_ms"],
        "response_body": row["response_body"],
        "error": row["error"],
    }


def _parse(model: type[Any], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        fields = {
            ".".join(str(p) for p in err["loc"]) or "body": err["msg"] for err in exc.errors()
        }
        raise WebhookError(422, "invalid request", fields) from None


class Webhooks:
    """One process's webhooks: the pool, the HTTP client and the delivery loop."""

    def __init__(
        self,
        settings: WebhooksSettings,
        pool: asyncpg.Pool,
        relay: OutboxRelay,
        *,
        resolver: Resolver = system_resolver,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.webhooks
        self.pool = pool
        self.relay = relay
        # Events fetched together are turned into deliveries in one transaction.
        self._inbox = InboxBatch(lambda: self.pool, CONSUMER)
        self.resolver = resolver
        self.policy = AddressPolicy(
            allow_loopback=self.config.allow_loopback, allow=self.config.allow_hosts
        )
        self.retry = RetryPolicy.of(self.config)
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self.client = httpx.AsyncClient(
            transport=SafeTransport(
                self.policy, resolver=resolver, max_connections=self.config.max_in_flight
            ),
            follow_redirects=False,
            trust_env=False,
            timeout=self.config.timeout_s,
            headers={"user-agent": USER_AGENT},
        )
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.config.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- endpoints ------------------------------------------------------------------------

    async def _check_url(self, url: str) -> None:
        try:
            await check_url(url, self.policy, self.resolver)
        except UrlRefusedError as exc:
            raise WebhookError(400, f"URL not allowed: {exc}", {"url": str(exc)}) from None

    @staticmethod
    def _check_events(events: list[str]) -> list[str]:
        unknown = [e for e in events if e not in public.PUBLIC_EVENTS]
        if unknown:
            raise WebhookError(
                422,
                f"unknown events: {', '.join(unknown)}",
                {"events": "known events: " + ", ".join(public.PUBLIC_EVENTS)},
            )
        return list(dict.fromkeys(events))

    @staticmethod
    def _check_secret(secret: str) -> None:
        problem = secret_problem(secret)
        if problem:
            raise WebhookError(422, f"invalid secret: {problem}", {"secret": problem})

    async def create(self, body: Any) -> dict[str, Any]:
        """Register an endpoint. A generated secret is in the answer, and only there."""
        req: EndpointCreate = _parse(EndpointCreate, body)
        events = self._check_events(req.events)
        if req.secret is not None:
            self._check_secret(req.secret)
        if req.fglab_body is not None and len(json.dumps(req.fglab_body)) > (
            self.config.max_payload_bytes
        ):
            raise WebhookError(413, "the registered JSON is too large")
        await self._check_url(req.url)
        secret = req.secret or new_secret()
        async with self.pool.acquire() as conn:
            row = await repo.insert_endpoint(
                conn,
                uuid7(),
                url=req.url,
                kind=req.kind,
                events=events,
                secret=secret,
                project=req.project,
                experiment=req.experiment,
                description=req.description,
                fglab_body=req.fglab_body,
            )
        log.info("webhooks.endpoint.created", endpoint_id=str(row["id"]), events=events)
        view = endpoint_view(row)
        if req.secret is None:
            view["secret"] = secret
        return view

    async def _endpoint(self, conn: Conn, endpoint_id: uuid.UUID) -> asyncpg.Record:
        row = await repo.get_endpoint(conn, endpoint_id)
        if row is None:
            raise WebhookError(404, f"webhook {str(endpoint_id)!r} not found")
        return row

    async def list(self, _: Any = None) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            return {"items": [endpoint_view(r) for r in await repo.list_endpoints(conn)]}

    async def get(self, body: Any) -> dict[str, Any]:
        ref: EndpointRef = _parse(EndpointRef, body)
        async with self.pool.acquire() as conn:
            return endpoint_view(await self._endpoint(conn, ref.id))

    async def update(self, body: Any) -> dict[str, Any]:
        """Change an endpoint; ``paused`` pauses or resumes it, ``rotate_secret`` makes a new
        secret (in the answer, once)."""
        req: EndpointUpdate = _parse(EndpointUpdate, body)
        changes: EndpointChanges = _parse(EndpointChanges, req.changes)
        given = changes.model_fields_set
        columns: dict[str, Any] = {}
        if "url" in given and changes.url is not None:
            await self._check_url(changes.url)
            columns["url"] = changes.url
        if "events" in given and changes.events is not None:
            columns["events"] = self._check_events(changes.events)
        for name in ("project", "experiment"):
            if name in given:
                columns[name] = getattr(changes, name) or None
        if "description" in given:
            columns["description"] = changes.description or ""
        new_secret_value: str | None = None
        if changes.secret is not None:
            self._check_secret(changes.secret)
            columns["secret"] = changes.secret
        elif changes.rotate_secret:
            new_secret_value = columns["secret"] = new_secret()
        async with self.pool.acquire() as conn, conn.transaction():
            await self._endpoint(conn, req.id)
            row = await repo.update_endpoint(conn, req.id, columns)
            if changes.paused is True:
                paused = await repo.pause_endpoint(conn, req.id, "paused by a user")
                if paused is not None:
                    row = paused
                    await enqueue(
                        conn,
                        EndpointPaused(
                            endpoint_id=req.id,
                            url=paused["url"],
                            cause="user",
                            reason="paused by a user",
                        ),
                    )
            elif changes.paused is False:
                row = await repo.resume_endpoint(conn, req.id)
        self.relay.kick()
        self.kick()
        assert row is not None
        view = endpoint_view(row)
        if new_secret_value is not None:
            view["secret"] = new_secret_value
        return view

    async def delete(self, body: Any) -> dict[str, Any]:
        ref: EndpointRef = _parse(EndpointRef, body)
        async with self.pool.acquire() as conn:
            if not await repo.delete_endpoint(conn, ref.id):
                raise WebhookError(404, f"webhook {str(ref.id)!r} not found")
        return {"deleted": str(ref.id)}

    async def deliveries(self, body: Any) -> dict[str, Any]:
        """An endpoint's deliveries, newest first; ``next`` pages on."""
        query: DeliveriesQuery = _parse(DeliveriesQuery, body)
        async with self.pool.acquire() as conn:
            await self._endpoint(conn, query.endpoint_id)
            rows = await repo.list_deliveries(
                conn,
                query.endpoint_id,
                state=query.state,
                before=query.before,
                limit=query.limit + 1,
            )
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return {
            "items": [delivery_view(r) for r in rows],
            "next": str(rows[-1]["id"]) if more else None,
        }

    async def delivery(self, body: Any) -> dict[str, Any]:
        """One delivery with its payload and every attempt."""
        ref: DeliveryRef = _parse(DeliveryRef, body)
        async with self.pool.acquire() as conn:
            row = await repo.get_delivery(conn, ref.endpoint_id, ref.delivery_id)
            if row is None:
                raise WebhookError(404, f"delivery {str(ref.delivery_id)!r} not found")
            attempts = await repo.attempts_of(conn, ref.delivery_id)
        return {
            **delivery_view(row),
            "payload": row["payload"],
            "attempt_history": [attempt_view(a) for a in attempts],
        }

    async def resend(self, body: Any) -> dict[str, Any]:
        """Send a delivery again now (by hand): same payload, same ``webhook-id``."""
        ref: DeliveryRef = _parse(DeliveryRef, body)
        async with self.pool.acquire() as conn:
            row = await repo.resend(conn, ref.endpoint_id, ref.delivery_id)
        if row is None:
            raise WebhookError(404, f"delivery {str(ref.delivery_id)!r} not found")
        self.kick()
        return delivery_view(row)

    # -- events in ------------------------------------------------------------------------

    async def on_event(self, event: Event, *, wait_for_submission: bool = False) -> int:
        """Turn one internal event into deliveries (once, whatever the redeliveries).

        Each event type has a consumer of its own, so an experiment's end can be read before
        its submission (after a backlog, say): then its project is not known yet and an
        endpoint filtered by project would miss it. With ``wait_for_submission`` such an event
        raises :class:`SubmissionNotSeenError` and changes nothing, for the caller to try it
        again a little later."""
        public_type = public.public_type(event)
        if public_type is None:
            return 0
        experiment_id = public.experiment_id_of(event)

        async def change(conn: Conn) -> int:
            record: dict[str, Any] | None = None
            if experiment_id is not None:
                record = await repo.merge_experiment(
                    conn, experiment_id, public.experiment_facts(event)
                )
                if wait_for_submission and not record.get("project"):
                    raise SubmissionNotSeenError(experiment_id)
            endpoints = await repo.matching_endpoints(
                conn,
                public_type,
                project=record.get("project") if record else getattr(event, "project", None),
                project_id=(
                    record.get("project_id")
                    if record
                    else str(getattr(event, "project_id", "")) or None
                ),
                experiment=str(experiment_id) if experiment_id else None,
            )
            if not endpoints:
                return 0
            standard = public.payload(event, public_type, record, self.config.max_payload_bytes)
            rows = [
                (
                    uuid7(),
                    ep["id"],
                    event.id,
                    event.type,
                    public_type,
                    json.dumps(ep["fglab_body"]) if ep["kind"] == "fglab" else standard,
                )
                for ep in endpoints
            ]
            await repo.insert_deliveries(conn, rows)
            return len(rows)

        delivered = await self._inbox.apply(event, change)
        if delivered:
            self.kick()
        return delivered or 0

    # -- delivery -------------------------------------------------------------------------

    def kick(self) -> None:
        """Look for due deliveries now."""
        self._wake.set()

    async def run(self) -> None:
        """The delivery loop: claim due deliveries, send each in a task of its own.

        Cancelling it (the service stopping) cuts off the attempts in flight, whose leases
        then expire so they are retried, and closes the HTTP client."""
        try:
            await self._run()
        except asyncio.CancelledError:
            await self.stop()
            raise

    async def _run(self) -> None:
        lease_s = self.config.timeout_s + 30.0
        while True:
            self._wake.clear()
            free = self.config.max_in_flight - len(self._tasks)
            claimed: list[asyncpg.Record] = []
            if free > 0:
                async with self.pool.acquire() as conn:
                    claimed = await repo.claim(
                        conn,
                        limit=free,
                        lease_s=lease_s,
                        per_endpoint=self.config.max_in_flight_per_endpoint,
                    )
            for row in claimed:
                task = asyncio.create_task(self._send_guarded(row), name=f"deliver-{row['id']}")
                self._tasks.add(task)
                task.add_done_callback(self._done)
            if claimed and len(claimed) == free:
                await self._sleep(None)  # wait for a slot (a finished task kicks)
            elif not claimed:
                await self._sleep(await self._until_due())

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.kick()

    async def _until_due(self) -> float:
        async with self.pool.acquire() as conn:
            due = await repo.next_due(conn)
        if due is None:
            return self.config.poll_s
        return max(0.0, min(self.config.poll_s, (due - datetime.now(UTC)).total_seconds()))

    async def _sleep(self, seconds: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def stop(self) -> None:
        """Stop sending: attempts in flight are cut off (their leases expire; they are
        retried), then the HTTP client closes."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self.client.is_closed:
            await self.client.aclose()

    async def _send_guarded(self, row: asyncpg.Record) -> None:
        try:
            await self.send(row)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The attempt's lease runs out and it is tried again.
            log.exception("webhooks.delivery.crashed", delivery_id=str(row["id"]))

    async def post(
        self, url: str, secret: str, message_id: str, body: str
    ) -> tuple[int | None, str | None, str | None, float]:
        """One signed POST: ``(status, response body cut to size, error, latency ms)``."""
        at = utcnow()
        headers = {
            "content-type": "application/json",
            **signed_headers(secret, message_id, at, body),
        }
        cap = self.config.max_response_bytes
        status: int | None = None
        kept: str | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                async with self.client.stream(
                    "POST", url, content=body.encode(), headers=headers
                ) as response:
                    status = response.status_code
                    chunks = bytearray()
                    async for chunk in response.aiter_raw():
                        chunks += chunk
                        if len(chunks) > cap:
                            break
                    kept = bytes(chunks[:cap]).decode("utf-8", errors="replace")
                    if len(chunks) > cap:
                        kept += "…[truncated]"
        except UrlRefusedError as exc:
            error = str(exc)
        except TimeoutError:
            error = f"no answer within {self.config.timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        latency_ms = (time.perf_counter() - started) * 1000
        return status, kept, error, latency_ms

    async def send(self, row: asyncpg.Record) -> None:
        """Attempt one claimed delivery and record what came of it."""
        delivery_id: uuid.UUID = row["id"]
        at = utcnow()
        status, kept, error, latency_ms = await self.post(
            row["url"], row["secret"], str(delivery_id), row["payload"]
        )
        attempt = row["attempt"] + 1
        ok = status is not None and 200 <= status < 300
        if status is not None and not ok and error is None:
            error = f"HTTP {status}"
        retry_in = None if ok else self.retry.delay_after(attempt, self.rng)
        state = "succeeded" if ok else ("pending" if retry_in is not None else "failed")
        endpoint_id: uuid.UUID = row["endpoint_id"]
        common = {
            "delivery_id": delivery_id,
            "endpoint_id": endpoint_id,
            "event_id": row["event_id"],
            "delivered_type": row["public_type"],
            "attempt": attempt,
        }
        async with self.pool.acquire() as conn, conn.transaction():
            recorded = await repo.record_attempt(
                conn,
                delivery_id,
                attempt=attempt,
                manual=row["manual"],
                at=at,
                status_code=status,
                latency_ms=latency_ms,
                response_body=kept,
                error=error,
                state=state,
                retry_in_s=retry_in,
            )
            if recorded is None:
                return  # the endpoint was deleted meanwhile
            if ok:
                assert status is not None
                await repo.mark_endpoint_ok(conn, endpoint_id)
                await enqueue(conn, DeliverySucceeded(**common, status_code=status))
            else:
                await enqueue(
                    conn,
                    DeliveryFailed(
                        **common,
                        status_code=status,
                        error=error or "",
                        final=state == "failed",
                    ),
                )
                await self._after_failure(conn, endpoint_id, status)
        self.relay.kick()
        log.info(
            "webhooks.delivery.attempted",
            delivery_id=str(delivery_id),
            endpoint_id=str(endpoint_id),
            attempt=attempt,
            status_code=status,
            error=error,
            state=state,
            retry_in_s=retry_in,
            latency_ms=round(latency_ms, 1),
        )

    async def _after_failure(self, conn: Conn, endpoint_id: uuid.UUID, status: int | None) -> None:
        """410 Gone pauses the endpoint; so does failing, without a success, for too long."""
        endpoint = await repo.mark_endpoint_failing(conn, endpoint_id)
        if endpoint is None or endpoint["paused_at"] is not None:
            return
        if status == 410:
            cause, reason = "gone", "the endpoint answered 410 Gone"
        else:
            failing_s = (utcnow() - endpoint["failing_since"]).total_seconds()
            if failing_s < self.config.pause_failing_after_s:
                return
            cause = "failing"
            reason = f"every delivery failed for {failing_s / 86400:.1f} days"
        paused = await repo.pause_endpoint(conn, endpoint_id, reason)
        if paused is not None:
            await enqueue(
                conn,
                EndpointPaused(
                    endpoint_id=endpoint_id, url=paused["url"], cause=cause, reason=reason
                ),
            )
            log.warning("webhooks.endpoint.paused", endpoint_id=str(endpoint_id), reason=reason)
