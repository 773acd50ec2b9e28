"""OpenTelemetry tracing for both tiers: configuration, the OTLP exporter, W3C trace context
in and out of gRPC metadata, and the cheap hooks the request paths call.

Off by default (``TracingConfig.endpoint`` empty). Off, every hook returns at its first
test: ``clock()`` is 0, ``record`` and ``annotate`` return, ``traced`` hands back the
coroutine it was given, and no interceptor is installed on servers or channels. On, the
server interceptor opens one SERVER span per traced RPC with the caller's ``traceparent`` as
parent (sampling: parent-based, ``sample_ratio`` for traces that start here), channels built
by ``transport.tls.aio_channel`` inject the current span's ``traceparent`` into every call,
and spans are exported in batches over OTLP/gRPC by the SDK's exporter thread.

State is per process (one server per process; ``configure`` replaces it): spans follow the
OpenTelemetry context, which asyncio carries into tasks, and ``record`` takes explicit times
so work done on other threads (the leaf's inference thread) is reported after the fact.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Mapping, Sequence, TypeVar

import grpc

log = logging.getLogger(__name__)

__all__ = [
    "TracingConfig", "annotate", "capture", "client_interceptors", "clock", "configure", "enabled",
    "record", "server_interceptors", "shutdown", "traced",
]

T = TypeVar("T")
AttributeValue = str | int | float | bool
Attributes = Mapping[str, AttributeValue]


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """Where and how much to trace (the ``[tracing]`` table of a root config; leaf flags)."""

    endpoint: str = ""
    """OTLP/gRPC collector address (``host:port``); empty = tracing off."""
    sample_ratio: float = 0.01
    """Share of traces started here that are recorded; a caller's sampled flag wins."""
    service_name: str = ""
    """``service.name`` of the spans; empty = the tier's name (rootleaf-root, rootleaf-leaf)."""
    insecure: bool = True
    """Plaintext to the collector (a sidecar or node agent); false = TLS with system roots."""
    export_timeout_s: float = 5.0
    """Longest wait for one export batch."""

    def __post_init__(self) -> None:
        if not isinstance(self.endpoint, str):
            raise ValueError(f"TracingConfig.endpoint must be a string, got {self.endpoint!r}")
        ratio = self.sample_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"TracingConfig.sample_ratio must be in [0, 1], got {ratio!r}")
        if not isinstance(self.service_name, str):
            raise ValueError(f"TracingConfig.service_name must be a string, got {self.service_name!r}")
        if not isinstance(self.insecure, bool):
            raise ValueError(f"TracingConfig.insecure must be a bool, got {self.insecure!r}")
        timeout = self.export_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"TracingConfig.export_timeout_s must be > 0, got {timeout!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "TracingConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"tracing: unknown keys {sorted(unknown)}")
        return cls(**data)


class _State:
    """The configured tracer (None = off) and its provider."""

    tracer: Any = None
    provider: Any = None


_state = _State()


def configure(config: TracingConfig, default_service: str) -> None:
    """Set this process's tracing up from ``config`` (or turn it off); call before building
    servers and channels. Replacing a configuration flushes and closes the old exporter."""
    shutdown()
    if not config.enabled:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name or default_service}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=config.endpoint, insecure=config.insecure, timeout=config.export_timeout_s)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    _state.provider = provider
    _state.tracer = provider.get_tracer("rootleaf")
    log.info("tracing to %s (sample ratio %s)", config.endpoint, config.sample_ratio)


def shutdown() -> None:
    """Export what is pending and turn tracing off (idempotent)."""
    provider, _state.provider, _state.tracer = _state.provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _state.tracer is not None


# ---- hooks on the request paths (each returns at once when tracing is off) -------------------


def clock() -> int:
    """Now in ns for ``record`` (0 when tracing is off: ``record`` then does nothing)."""
    return time.time_ns() if _state.tracer is not None else 0


def capture() -> Any:
    """The current trace context, to parent spans recorded on another thread (None when off
    or when the current trace is not sampled)."""
    if _state.tracer is None:
        return None
    from opentelemetry import context, trace

    current = context.get_current()
    return current if trace.get_current_span(current).is_recording() else None


def record(
    name: str, start_ns: int, attributes: Attributes | None = None, *, end_ns: int = 0, parent: Any = None
) -> None:
    """A finished span from ``start_ns`` (a ``clock()`` value) to ``end_ns`` (default: now),
    child of ``parent`` (a ``capture()``) or of the current span."""
    tracer = _state.tracer
    if tracer is None or not start_ns:
        return
    from opentelemetry import trace

    if not trace.get_current_span(parent).is_recording():
        return  # an unsampled trace: its children would not be recorded either
    span = tracer.start_span(name, context=parent, attributes=attributes, start_time=start_ns)
    span.end(end_time=end_ns or time.time_ns())


def annotate(attributes: Attributes) -> None:
    """Add attributes to the current span (cache hits, keys read)."""
    if _state.tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes)


def traced(awaitable: Awaitable[T], name: str, attributes: Attributes | None = None) -> Awaitable[T]:
    """``awaitable`` run inside a span that is current while it runs (its leaf calls carry
    it); the awaitable itself when tracing is off. Pass a coroutine: a task already created
    would not see the span."""
    tracer = _state.tracer
    if tracer is None:
        return awaitable
    from opentelemetry import trace

    if not trace.get_current_span().is_recording():
        return awaitable  # unsampled: the caller's context (sampled flag off) travels on as is
    return _in_span(tracer, awaitable, name, attributes)


async def _in_span(tracer: Any, awaitable: Awaitable[T], name: str, attributes: Attributes | None) -> T:
    with tracer.start_as_current_span(name, attributes=attributes):
        return await awaitable


@contextmanager
def span(name: str, attributes: Attributes | None = None) -> Iterator[None]:
    """A span current for the block (nothing when tracing is off)."""
    tracer = _state.tracer
    if tracer is None:
        yield
        return
    with tracer.start_as_current_span(name, attributes=attributes):
        yield


# ---- gRPC: trace context in and out -------------------------------------------------------


def _extract(metadata: Sequence[tuple[str, str | bytes]] | None) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {k: v for k, v in metadata or () if isinstance(v, str) and k in ("traceparent", "tracestate")}
    return TraceContextTextMapPropagator().extract(carrier) if carrier else None


class _ServerTracing(grpc.aio.ServerInterceptor):
    """One SERVER span per call of a traced method, parented by the caller's traceparent."""

    def __init__(self, tracer: Any, methods: frozenset[str]) -> None:
        self._tracer = tracer
        self._methods = methods

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or method not in self._methods:
            return handler
        inner = handler.unary_unary
        metadata = handler_call_details.invocation_metadata
        tracer = self._tracer
        name = method.lstrip("/")

        async def traced_call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            from opentelemetry.trace import SpanKind

            with tracer.start_as_current_span(name, context=_extract(metadata), kind=SpanKind.SERVER):
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            traced_call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _ClientTracing(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the current span's ``traceparent`` (and ``tracestate``) to each call's metadata."""

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        if carrier:
            metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), *carrier.items())
            client_call_details = grpc.aio.ClientCallDetails(
                client_call_details.method,
                client_call_details.timeout,
                metadata,
                client_call_details.credentials,
                client_call_details.wait_for_ready,
            )
        return await continuation(client_call_details, request)


def server_interceptors(methods: Sequence[str]) -> tuple[grpc.aio.ServerInterceptor, ...]:
    """Interceptors tracing ``methods`` (full names, ``/pkg.Service/Method``); none when off."""
    tracer = _state.tracer
    return () if tracer is None else (_ServerTracing(tracer, frozenset(methods)),)


def client_interceptors() -> tuple[grpc.aio.ClientInterceptor, ...]:
    """Interceptors carrying trace context on a channel's calls; none when off."""
    return () if _state.tracer is None else (_ClientTracing(),)
