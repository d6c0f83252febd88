"""Pure logic: the retry schedule, the address policy, secrets and signatures, public names
and payloads."""

from __future__ import annotations

import ipaddress
import json
import random
import uuid
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from fleetlab_common.events import (
    AgentOffline,
    AgentOnline,
    ExperimentCancelled,
    ExperimentFinished,
    ExperimentLost,
    ExperimentStarted,
    ExperimentStopRequested,
    ExperimentSubmitted,
)
from fleetlab_common.runspec import RunSpec
from fleetlab_webhooks import public
from fleetlab_webhooks.retry import RetryPolicy
from fleetlab_webhooks.settings import DeliverySettings, WebhooksSettings
from fleetlab_webhooks.signing import new_secret, secret_problem, signed_headers
from fleetlab_webhooks.ssrf import AddressPolicy

EID = uuid.UUID("0190a3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b")


# --- retries -------------------------------------------------------------------------------


def test_default_schedule_spans_more_than_a_day_even_with_the_least_jitter() -> None:
    policy = RetryPolicy.of(DeliverySettings())
    assert policy.schedule() == [10, 40, 160, 640, 2560, 10240, 28800, 28800, 28800]
    total = sum(policy.schedule())
    assert total == pytest.approx(27.79 * 3600, rel=1e-3)
    assert total * (1 - policy.jitter) >= 24 * 3600


def test_delays_are_jittered_within_bounds_and_end_after_the_last_retry() -> None:
    policy = RetryPolicy(retries=3, base_s=10, factor=4, max_s=100, jitter=0.1)
    rng = random.Random(7)
    delays = [policy.delay_after(1, rng) for _ in range(200)]
    assert all(d is not None and 9 <= d <= 11 for d in delays)
    assert len({round(d or 0, 6) for d in delays}) > 100  # spread, not one value
    assert policy.delay_after(3, rng) == pytest.approx(100, rel=0.1)  # capped at max_s
    assert policy.delay_after(4, rng) is None


# --- server-side request forgery -----------------------------------------------------------


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.1.1",
        "fe80::1",
        "fd00:ec2::254",
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "fc00::1",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused_by_default(address: str) -> None:
    assert AddressPolicy().refusal(ip(address)) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert AddressPolicy().refusal(ip(address)) is None


def test_loopback_passes_only_when_allowed() -> None:
    assert AddressPolicy().refusal(ip("127.0.0.1")) == "127.0.0.1 is a loopback address"
    allowed = AddressPolicy(allow_loopback=True)
    assert allowed.refusal(ip("127.0.0.1")) is None
    assert allowed.refusal(ip("::1")) is None
    assert allowed.refusal(ip("10.0.0.1")) is not None  # loopback only
    assert allowed.refusal(ip("169.254.169.254")) is not None


def test_allowed_networks_pass_but_link_local_only_when_named() -> None:
    broad = AddressPolicy(allow_loopback=True, allow=["0.0.0.0/0", "::/0"])
    assert broad.refusal(ip("10.0.0.1")) is None
    assert broad.refusal(ip("192.168.1.1")) is None
    assert broad.refusal(ip("169.254.169.254")) is not None  # not named explicitly
    assert broad.refusal(ip("fe80::1")) is not None
    named = AddressPolicy(allow=["169.254.169.254"])
    assert named.refusal(ip("169.254.169.254")) is None
    assert named.refusal(ip("169.254.169.253")) is not None


def test_allow_hosts_reads_a_comma_separated_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETLAB_WEBHOOKS__ALLOW_HOSTS", "10.0.0.0/8, 192.168.1.20")
    monkeypatch.setenv("FLEETLAB_WEBHOOKS__ALLOW_LOOPBACK", "true")
    settings = WebhooksSettings()
    assert settings.webhooks.allow_hosts == ["10.0.0.0/8", "192.168.1.20"]
    assert settings.webhooks.allow_loopback is True


# --- secrets and signatures ----------------------------------------------------------------


def test_a_new_secret_signs_what_the_standardwebhooks_library_verifies() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and secret_problem(secret) is None
    body = '{"type":"experiment.finished"}'
    headers = signed_headers(secret, "msg-1", datetime.now(UTC), body)
    assert Webhook(secret).verify(body, headers) == {"type": "experiment.finished"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + " ", headers)


@pytest.mark.parametrize("bad", ["secret", "whsec_", "whsec_!!!", "whsec_" + "QUFB" * 2])
def test_bad_secrets_are_explained(bad: str) -> None:
    assert secret_problem(bad)


# --- public names and payloads -------------------------------------------------------------


def finished(status: str) -> ExperimentFinished:
    return ExperimentFinished(experiment_id=EID, agent_id="a", status=status)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "name"),
    [
        (
            ExperimentSubmitted(
                experiment_id=EID, project_id=uuid.uuid4(), project="p", run=RunSpec(command=["x"])
            ),
            "experiment.submitted",
        ),
        (
            ExperimentStarted(
                experiment_id=EID,
                agent_id="a",
                instance_id=uuid.uuid4(),
                pid=1,
                argv=["x"],
                workdir="/w",
            ),
            "experiment.started",
        ),
        (finished("succeeded"), "experiment.finished"),
        (finished("failed"), "experiment.finished"),
        (finished("stopped"), "experiment.stopped"),
        (ExperimentCancelled(experiment_id=EID, attempt=1), "experiment.stopped"),
        (
            ExperimentLost(experiment_id=EID, agent_id="a", attempt=1, reason="lease"),
            "experiment.lost",
        ),
        (AgentOnline(agent_id="a"), "agent.online"),
        (AgentOffline(agent_id="a"), "agent.offline"),
        (ExperimentStopRequested(experiment_id=EID), None),
    ],
)
def test_internal_events_map_to_public_names(event: object, name: str | None) -> None:
    assert public.public_type(event) == name  # type: ignore[arg-type]
    assert name is None or name in public.PUBLIC_EVENTS


def test_payload_is_the_event_with_the_record_and_is_cut_when_too_large() -> None:
    event = finished("succeeded")
    record = {"id": str(EID), "project": "p", "status": "succeeded", "options": {"x": "y" * 5000}}
    body = json.loads(public.payload(event, "experiment.finished", record, 100_000))
    assert body == {
        "type": "experiment.finished",
        "id": str(event.id),
        "timestamp": event.occurred_at.isoformat(),
        "source": "agent.experiment.finished",
        "data": {"experiment": record},
    }
    small = json.loads(public.payload(event, "experiment.finished", record, 1024))
    assert small["truncated"] is True
    assert small["data"]["experiment"] == {"id": str(EID), "project": "p", "status": "succeeded"}
    agent = json.loads(public.payload(AgentOnline(agent_id="a"), "agent.online", None, 1024))
    assert agent["data"] == {"agent": {"agent_id": "a", "hostname": "", "online": True}}
