"""``/api/v1/webhooks``: registration (FGLab's contract and subscriptions to public events),
endpoints and their delivery history. The webhooks service owns them; the API asks it over
``rpc.webhooks.<verb>``."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from nats.errors import NoRespondersError
from pydantic import ValidationError

from fleetlab_api.deps import StateDep
from fleetlab_api.errors import ApiError, InvalidError, NotFoundError
from fleetlab_api.state import State
from fleetlab_api.webhooks.schemas import (
    FGLAB_EVENTS,
    DeliveryDetail,
    DeliveryPage,
    DeliveryState,
    Webhook,
    WebhookCreate,
    WebhookList,
    WebhookUpdate,
    fglab_problem,
)
from fleetlab_common.events import Rpc

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])


async def ask(state: State, verb: str, body: dict[str, Any]) -> Any:
    """The webhooks service's answer to ``rpc.webhooks.<verb>``; its refusals as API errors."""
    try:
        reply = await state.broker.request(
            body, Rpc.webhooks(verb), timeout=state.settings.rpc_timeout_s
        )
    except TimeoutError:
        raise ApiError(503, "the webhooks service did not answer in time") from None
    except NoRespondersError:
        raise ApiError(503, "the webhooks service did not answer: it is not running") from None
    answer = await reply.decode()
    if not isinstance(answer, dict) or "ok" not in answer:
        raise ApiError(503, "the webhooks service gave an unexpected answer")
    if not answer["ok"]:
        raise ApiError(
            int(answer.get("status", 500)), str(answer.get("error")), answer.get("fields")
        )
    return answer["data"]


def _id(ref: str, what: str = "webhook") -> str:
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        raise NotFoundError(what, ref) from None


def _invalid(exc: ValidationError) -> InvalidError:
    fields = {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors()}
    return InvalidError(
        "invalid request: " + "; ".join(f"{k}: {v}" for k, v in fields.items()), fields
    )


@router.post(
    "",
    status_code=201,
    responses={
        201: {
            "description": 'FGLab: `{"status": "Registered", "options": <body>}`; '
            "with `events`: the endpoint, with its secret when one was made."
        },
        400: {
            "description": 'FGLab\'s errors, e.g. `{"error": "Invalid or empty URL"}`, '
            "or a URL that may not be called."
        },
    },
)
async def register_webhook(request: Request, state: StateDep) -> JSONResponse:
    """Register a webhook.

    FGLab's contract, verbatim: `{"url", "objects": "experiments", "object_id", "event":
    "started" | "finished"}`; the registered JSON is POSTed to the URL when the event happens.
    Or subscribe to public events: `{"url", "events": [...], "secret"?, "project"?,
    "experiment"?, "description"?}`; the payload is the event, signed per Standard Webhooks.
    """
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None
    if isinstance(body, dict) and "events" in body:
        try:
            create = WebhookCreate.model_validate(body)
        except ValidationError as exc:
            raise _invalid(exc) from None
        created = await ask(state, "create", create.model_dump(exclude_none=True))
        return JSONResponse(created, status_code=201)
    problem = fglab_problem(body)
    if problem is not None:
        return JSONResponse({"error": problem}, status_code=400)
    await ask(
        state,
        "create",
        {
            "kind": "fglab",
            "url": body["url"],
            "events": FGLAB_EVENTS[body["event"]],
            "experiment": str(body["object_id"]),
            "fglab_body": body,
        },
    )
    return JSONResponse({"status": "Registered", "options": body}, status_code=201)


@router.get("", response_model=WebhookList, response_model_exclude_unset=True)
async def list_webhooks(state: StateDep) -> Any:
    """Every registered endpoint."""
    return await ask(state, "list", {})


@router.get("/{webhook_id}", response_model=Webhook, response_model_exclude_unset=True)
async def get_webhook(webhook_id: str, state: StateDep) -> Any:
    """One endpoint."""
    return await ask(state, "get", {"id": _id(webhook_id)})


@router.patch("/{webhook_id}", response_model=Webhook, response_model_exclude_unset=True)
async def update_webhook(webhook_id: str, body: WebhookUpdate, state: StateDep) -> Any:
    """Change an endpoint: only the fields given change; `""` clears a filter."""
    changes = body.model_dump(exclude_unset=True)
    return await ask(state, "update", {"id": _id(webhook_id), "changes": changes})


@router.post("/{webhook_id}/pause", response_model=Webhook, response_model_exclude_unset=True)
async def pause_webhook(webhook_id: str, state: StateDep) -> Any:
    """Stop sending to an endpoint; its pending deliveries wait, new events are not sent."""
    return await ask(state, "update", {"id": _id(webhook_id), "changes": {"paused": True}})


@router.post("/{webhook_id}/resume", response_model=Webhook, response_model_exclude_unset=True)
async def resume_webhook(webhook_id: str, state: StateDep) -> Any:
    """Send to the endpoint again, starting with the deliveries that waited."""
    return await ask(state, "update", {"id": _id(webhook_id), "changes": {"paused": False}})


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: str, state: StateDep) -> Response:
    """Remove an endpoint and its delivery history."""
    await ask(state, "delete", {"id": _id(webhook_id)})
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage)
async def list_deliveries(
    webhook_id: str,
    state: StateDep,
    status: DeliveryState | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    """An endpoint's deliveries, newest first; pass `next` as `cursor` for more."""
    query: dict[str, Any] = {"endpoint_id": _id(webhook_id), "limit": limit}
    if status is not None:
        query["state"] = status
    if cursor:
        try:
            query["before"] = str(uuid.UUID(cursor))
        except ValueError:
            raise InvalidError("invalid cursor", {"cursor": "not a cursor from `next`"}) from None
    return await ask(state, "deliveries", query)


@router.get("/{webhook_id}/deliveries/{delivery_id}", response_model=DeliveryDetail)
async def get_delivery(webhook_id: str, delivery_id: str, state: StateDep) -> Any:
    """One delivery: its payload and every attempt (time, status, latency, response, error)."""
    ref = {"endpoint_id": _id(webhook_id), "delivery_id": _id(delivery_id, "delivery")}
    return await ask(state, "delivery", ref)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/resend", status_code=202, response_model=DeliveryDetail
)
async def resend_delivery(webhook_id: str, delivery_id: str, state: StateDep) -> Any:
    """Send a delivery again now, with the same `webhook-id`."""
    ref = {"endpoint_id": _id(webhook_id), "delivery_id": _id(delivery_id, "delivery")}
    await ask(state, "resend", ref)
    return await ask(state, "delivery", ref)
