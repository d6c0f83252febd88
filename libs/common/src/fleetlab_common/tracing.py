"""OpenTelemetry setup: a tracer provider per process, exported only when configured."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from fleetlab_common.settings import TelemetrySettings


def configure_tracing(
    service: str, settings: TelemetrySettings, exporter: SpanExporter | None = None
) -> TracerProvider:
    """Install a global tracer provider named after the service.

    Spans cross NATS through FastStream's telemetry middleware (trace context in headers), so
    one experiment's flow reads as one trace across the services.
    """
    exported = exporter is not None or settings.console or bool(settings.otlp_endpoint)
    # With nowhere to send spans, none is recorded: the trace context still travels (trace
    # ids stay in headers and logs), and a request or a message does not pay for spans that
    # would be dropped (a few tenths of a millisecond each, on every hop).
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: f"fleetlab-{service}"}),
        sampler=None if exported else ALWAYS_OFF,
    )
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if settings.console:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    if settings.otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError as exc:  # pragma: no cover - depends on an optional package
            raise RuntimeError(
                "FLEETLAB_TELEMETRY__OTLP_ENDPOINT is set but "
                "opentelemetry-exporter-otlp-proto-http is not installed"
            ) from exc
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
        )
    trace.set_tracer_provider(provider)
    return provider
