"""Prometheus metrics for the gRPC server, on their own registry, served on 127.0.0.1 unless
`--metrics-host` says otherwise (a pod IP, so Prometheus can scrape a sidecar).

Labels never carry ids: only method names, status codes and decision results.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from gatehouse.engine.state import DecisionState
from gatehouse.server.status import Freshness, RejectionLog

_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


# `grpc_server_handling_seconds` bucket bounds with the implicit +Inf, for `bisect_left`: an
# observation lands in the first bucket whose bound is >= it, as Histogram.observe does.
BOUNDS: tuple[float, ...] = (*_BUCKETS, float("inf"))


class Tally:
    """Sums that any number of threads add to without a lock: every thread adds into a list of
    its own (`cells()`), which no other thread writes, so no update is lost whatever the
    interpreter does between reading and writing a cell; `totals()` adds up every thread's.

    The hot RPCs count and time themselves here (a few list stores) rather than through
    prometheus_client's children (two lock round trips and several Python calls each); the
    exported samples include these totals (`_Merged`), so a scrape sees the same numbers."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._local = threading.local()
        self._lock = threading.Lock()
        self._rows: list[list[float]] = []

    def cells(self) -> list[float]:
        """The calling thread's cells."""
        try:
            cells: list[float] = self._local.cells
        except AttributeError:
            cells = [0] * self.size
            with self._lock:
                self._rows.append(cells)
            self._local.cells = cells
        return cells

    def totals(self) -> list[float]:
        with self._lock:
            rows = list(self._rows)
        return [sum(col) for col in zip(*rows, strict=True)] if rows else [0] * self.size


# A method's Tally: calls answered OK, then one cell per bucket of BOUNDS, then the seconds.
CALL_OK = 0
CALL_BUCKET0 = 1
CALL_SECONDS = CALL_BUCKET0 + len(BOUNDS)
# The decisions Tally: allowed, denied.
ALLOW, DENY = 0, 1


class _Merged(Collector):
    """A prometheus_client metric as registered, each sample raised by what `extra()` (called
    once per scrape, so every sample of it adds up from the same totals) returns for it."""

    def __init__(self, metric: Any, extra: Callable[[], Callable[[Any], float]]) -> None:
        self._metric = metric
        self._extra = extra

    def describe(self) -> Iterable[Metric]:
        described: Iterable[Metric] = self._metric.describe()
        return described

    def collect(self) -> Iterable[Metric]:
        add = self._extra()
        for family in self._metric.collect():
            family.samples = [
                s._replace(value=s.value + extra) if (extra := add(s)) else s
                for s in family.samples
            ]
            yield family


class _RejectionCollector(Collector):
    """`gatehouse_bundle_rejections_total{reason}`, read from a RejectionLog at scrape time."""

    def __init__(self, log: RejectionLog) -> None:
        self._log = log

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "gatehouse_bundle_rejections",
            "Bundles not activated (the active bundle kept serving), by reason category.",
            labels=["reason"],
        )
        for reason, n in sorted(self._log.counts().items()):
            family.add_metric([reason], float(n))
        yield family


def _age(f: Freshness) -> float:
    age = f.age()
    return -1.0 if age is None else age


class Metrics:
    def __init__(
        self,
        state: DecisionState,
        freshness: Freshness | None = None,
        policy_freshness: Freshness | None = None,
        rejections: RejectionLog | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.freshness = freshness if freshness is not None else Freshness()
        self.policy_freshness = policy_freshness if policy_freshness is not None else Freshness()
        self.rejections = rejections if rejections is not None else RejectionLog()
        # These three are registered through `_Merged`, which adds what the Tallies hold.
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by method and status code.",
            ["grpc_method", "grpc_code"],
            registry=None,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time to handle an RPC on the server, by method.",
            ["grpc_method"],
            buckets=_BUCKETS,
            registry=None,
        )
        self.decisions = Counter(
            "gatehouse_decisions",
            "Authorization decisions, by result (allow, deny, error).",
            ["result"],
            registry=None,
        )
        self._calls: dict[str, Tally] = {}
        # Allowed and denied decisions counted with `decided` (or into `decided.cells()`).
        self.decided = Tally(2)
        self.registry.register(_Merged(self.handled, self._handled_extra))
        self.registry.register(_Merged(self.handling, self._handling_extra))
        self.registry.register(_Merged(self.decisions, self._decisions_extra))
        data_rev = Gauge(
            "gatehouse_data_revision",
            "Revision of the active data snapshot.",
            registry=self.registry,
        )
        data_rev.set_function(lambda: float(state.store.current.revision))
        policy_rev = Gauge(
            "gatehouse_policy_revision", "Revision of the active policy.", registry=self.registry
        )
        policy_rev.set_function(
            lambda: float(state.policy.revision) if state.policy is not None else 0.0
        )
        data_age = Gauge(
            "gatehouse_data_age_seconds",
            "Seconds since the data source last confirmed the data current (-1: never).",
            registry=self.registry,
        )
        data_age.set_function(lambda: _age(self.freshness))
        policy_age = Gauge(
            "gatehouse_policy_age_seconds",
            "Seconds since the bundle source last confirmed the active policy current (-1: never).",
            registry=self.registry,
        )
        policy_age.set_function(lambda: _age(self.policy_freshness))
        self.registry.register(_RejectionCollector(self.rejections))
        self.cache_hits = Counter(
            "gatehouse_decision_cache_hits",
            "Check decisions answered from the decision cache.",
            registry=self.registry,
        )
        self.cache_misses = Counter(
            "gatehouse_decision_cache_misses",
            "Check decisions computed because the decision cache had no entry.",
            registry=self.registry,
        )
        self.log_dropped = Counter(
            "gatehouse_decision_log_dropped",
            "Decision log entries dropped because the log queue was full.",
            registry=self.registry,
        )
        # Pre-bound children: `labels()` takes a lock and builds a key on every call.
        self._decision = {r: self.decisions.labels(result=r) for r in ("allow", "deny", "error")}
        self.allow = self._decision["allow"]
        self.deny = self._decision["deny"]
        self.error = self._decision["error"]
        self._http: Any = None

    def calls(self, method: str) -> Tally:
        """The Tally of `method` ("package.Service/Method"), laid out as CALL_OK, CALL_BUCKET0
        and CALL_SECONDS say: answered OK and timed calls go there instead of to the
        `handled` and `handling` children (other codes are still counted on `handled`)."""
        tally = self._calls.get(method)
        if tally is None:
            # The children exist from the start, as for every instrumented method.
            self.handled.labels(method, grpc.StatusCode.OK.name)
            self.handling.labels(grpc_method=method)
            tally = self._calls[method] = Tally(CALL_SECONDS + 1)
        return tally

    def _totals(self) -> dict[str, list[float]]:
        return {method: tally.totals() for method, tally in list(self._calls.items())}

    def _handled_extra(self) -> Callable[[Any], float]:
        totals = self._totals()

        def add(sample: Any) -> float:
            t = totals.get(sample.labels.get("grpc_method", ""))
            if t is None or sample.labels.get("grpc_code") != "OK":
                return 0
            return t[CALL_OK] if sample.name.endswith("_total") else 0

        return add

    def _handling_extra(self) -> Callable[[Any], float]:
        totals = self._totals()

        def add(sample: Any) -> float:
            t = totals.get(sample.labels.get("grpc_method", ""))
            if t is None:
                return 0
            name = sample.name
            if name.endswith("_bucket"):
                upto = CALL_BUCKET0 + BOUNDS.index(float(sample.labels["le"]))
                return sum(t[CALL_BUCKET0 : upto + 1])
            if name.endswith("_count"):
                return sum(t[CALL_BUCKET0:CALL_SECONDS])
            if name.endswith("_sum"):
                return t[CALL_SECONDS]
            return 0

        return add

    def _decisions_extra(self) -> Callable[[Any], float]:
        t = self.decided.totals()
        by_result = {"allow": t[ALLOW], "deny": t[DENY]}

        def add(sample: Any) -> float:
            if not sample.name.endswith("_total"):
                return 0
            return by_result.get(sample.labels.get("result", ""), 0)

        return add

    def decision(self, result: str, n: int = 1) -> None:
        child = self._decision.get(result)
        if child is None:
            child = self.decisions.labels(result=result)
        child.inc(n)

    def start_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on `host`:`port` (0 = any free port); return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def _code_of(context: grpc.ServicerContext, default: grpc.StatusCode) -> str:
    code = context.code()  # type: ignore[attr-defined]
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return default.name


def instrument(
    metrics: Metrics, method: str, handler: grpc.RpcMethodHandler[Any, Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` wrapped to count (`grpc_server_handled_total`) and time
    (`grpc_server_handling_seconds`) each call of `method` ("package.Service/Method").

    Done once per method at registration, with the label children bound up front, so a call
    pays two clock reads, one counter increment and one histogram observation: a
    `grpc.ServerInterceptor` instead runs on every call and builds a new handler each time.
    Unary-unary and unary-stream handlers are instrumented; others are returned as they are.
    """
    handled = metrics.handled
    ok = handled.labels(method, grpc.StatusCode.OK.name)
    observe = metrics.handling.labels(grpc_method=method).observe
    clock = time.perf_counter

    if handler.unary_unary is not None:
        inner_uu: Callable[[Any, grpc.ServicerContext], Any] = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            t0 = clock()
            try:
                resp = inner_uu(request, context)
            except BaseException:
                observe(clock() - t0)
                handled.labels(method, _code_of(context, grpc.StatusCode.UNKNOWN)).inc()
                raise
            observe(clock() - t0)
            code = context.code()  # type: ignore[attr-defined]
            if code is None or code is grpc.StatusCode.OK:
                ok.inc()
            else:
                handled.labels(method, _code_of(context, grpc.StatusCode.OK)).inc()
            return resp

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        inner_us: Callable[[Any, grpc.ServicerContext], Iterator[Any]] = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            t0 = clock()
            try:
                yield from inner_us(request, context)
            except BaseException:
                handled.labels(method, _code_of(context, grpc.StatusCode.UNKNOWN)).inc()
                raise
            else:
                handled.labels(method, _code_of(context, grpc.StatusCode.OK)).inc()
            finally:
                observe(clock() - t0)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


if TYPE_CHECKING:
    _Generic = grpc.GenericRpcHandler[Any, Any]
else:
    _Generic = grpc.GenericRpcHandler


class _InstrumentedGeneric(_Generic):
    """A generic handler whose method handlers are instrumented once, on first lookup."""

    def __init__(self, metrics: Metrics, inner: _Generic) -> None:
        self._metrics = metrics
        self._inner = inner
        self._done: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        name = handler_call_details.method
        hit = self._done.get(name)
        if hit is not None:
            return hit
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None  # unknown method: not labelled (arbitrary names would explode cardinality)
        wrapped = instrument(self._metrics, name.lstrip("/"), handler)
        # Only methods the inner handler knows get here, so the dict stays small.
        self._done[name] = wrapped
        return wrapped


class InstrumentedServer:
    """Stands in for a `grpc.Server` while services register (`add_XServicer_to_server`,
    health, reflection): every method handler is instrumented once, at registration, then
    handed to the real server. Calls of unknown methods are not recorded.

    Methods named in `skip` ("/package.Service/Method") are left out of the registered
    methods: `FastPath` registers and serves those itself (it records the same metrics)."""

    def __init__(
        self, server: grpc.Server, metrics: Metrics, skip: frozenset[str] = frozenset()
    ) -> None:
        self.server = server
        self.metrics = metrics
        self.skip = skip

    def add_generic_rpc_handlers(self, handlers: Iterable[_Generic]) -> None:
        self.server.add_generic_rpc_handlers(
            tuple(_InstrumentedGeneric(self.metrics, h) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service_name,
            {
                name: instrument(self.metrics, f"{service_name}/{name}", h)
                for name, h in method_handlers.items()
                if f"/{service_name}/{name}" not in self.skip
            },
        )


if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


class MetricsInterceptor(_Interceptor):
    """The same metrics as `InstrumentedServer`, as an interceptor (it runs on every call and
    costs more; `serve` instruments at registration instead). For servers built elsewhere."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: not labelled (arbitrary names would explode cardinality)
        return instrument(self._m, handler_call_details.method.lstrip("/"), handler)
