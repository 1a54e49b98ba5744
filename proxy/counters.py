"""Prometheus metrics of one serving process (console/metrics.py serves them over HTTP).

`Metrics` owns its own CollectorRegistry (several proxies can live in one process, e.g. in
tests). The hot path calls its plain methods. The per-statement families (statements, the two
timing histograms, crypto operations, errors) are plain numbers in dicts that the event loop
adds to (:class:`_Tally`, :class:`_Timings`), exported by their own collectors at scrape time
as the series prometheus-client's Counter and Histogram would show: no lock and no child
object per statement. Only the loop's thread touches them (the metrics HTTP is served on the
same loop). Figures the proxy already keeps (bytes per session,
backend connections, the rewriter's cache, the audit writer's counters) are read at scrape
time by a custom collector instead of being counted twice.

Tenant labels are bounded: the first ``top_n`` distinct tenants keep their name, later ones
are counted under ``_other``; trusted (unscoped) sessions are ``_trusted``. Tenant names
cannot start with ``_``, so neither can be mistaken for a real tenant.

>>> m = Metrics(top_n=2)
>>> [m.tenant_label(t) for t in ("acme", "globex", "initech", "acme", None)]
['acme', 'globex', '_other', 'acme', '_trusted']
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tenantgate.config.schema import LIMIT_KEYS

from .state import LimiterView, ProxyView

log = logging.getLogger("tenantgate.metrics")

# `_created` samples double every counter's series count for a timestamp nobody graphs.
disable_created_metrics()

PREFIX = "tenantgate_"
OTHER = "_other"
TRUSTED = "_trusted"
OTHER_KIND = "other"
MAX_KINDS = 64
_KIND_RE = re.compile(r"[a-z_]{1,32}")

# Seconds. The client-visible time spans network and database; the proxy's own share is small.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OVERHEAD_BUCKETS = (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


@dataclass(slots=True)
class TenantStats:
    """Cumulative figures of one tenant label since the proxy started (SHOW STATS)."""

    statements: int = 0
    refused: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    duration_count: int = 0
    duration_sum: float = 0.0

    @property
    def avg_seconds(self) -> float | None:
        return self.duration_sum / self.duration_count if self.duration_count else None


class Metrics:
    """Every tenantgate metric, in one registry."""

    def __init__(self, top_n: int = 100, proxy: ProxyView | None = None) -> None:
        if top_n < 1:
            raise ValueError("top_n must be at least 1")
        self.top_n = top_n
        self.registry = CollectorRegistry(auto_describe=True)
        self._labels: dict[str, str] = {}
        self._named = 0
        r = self.registry
        p = PREFIX
        self.client_connections = Gauge(p + "client_connections", "Client connections open now", registry=r)
        self.client_connections_opened = Counter(
            p + "client_connections_opened", "Client connections accepted", registry=r
        )
        self.client_connections_refused = Counter(
            p + "client_connections_refused",
            "Client connections ended before their session started, by the FATAL error's SQLSTATE",
            ["sqlstate"],
            registry=r,
        )
        self.auth_failures = Counter(
            p + "auth_failures", "Failed logins, by port (client or admin)", ["port"], registry=r
        )
        self.statements = _Tally(
            p + "statements", "Statements by tenant, kind and decision", ("tenant", "kind", "decision"), r
        )
        self.duration = _Timings(
            p + "statement_duration_seconds",
            "Time from a request's first message to the ReadyForQuery that answers it",
            DURATION_BUCKETS,
            r,
        )
        self.overhead = _Timings(
            p + "proxy_overhead_seconds",
            "Time the proxy spends on a request's messages itself (parsing, rewriting, crypto)",
            OVERHEAD_BUCKETS,
            r,
        )
        self.crypto_operations = _Tally(p + "crypto_operations", "Field encryptions/decryptions", ("op",), r)
        self.crypto_failures = _Tally(p + "crypto_failures", "Failed field encryptions/decryptions", ("op",), r)
        self.errors = _Tally(p + "errors", "ErrorResponses sent to clients, by SQLSTATE class", ("sqlstate_class",), r)
        self.admin_commands = Counter(
            p + "admin_commands", "Admin console commands, by command and result", ["command", "result"], registry=r
        )
        self.limit_hits = Counter(
            p + "tenant_limit_hits",
            "Times a per-tenant limit refused, delayed or cut something, by tenant and limit",
            ["tenant", "limit"],
            registry=r,
        )
        self._stmt: dict[tuple[str | None, str, str], tuple[str, str, str]] = {}  # -> label values
        self._timing: dict[str | None, tuple[list[float], list[float]]] = {}  # -> rows of duration, overhead
        self._kinds: dict[str, str] = {}
        self._simple: dict[tuple[Counter, str], Any] = {}
        # bytes of sessions that have ended, per tenant label; live sessions are read at scrape time
        self._ended_bytes: dict[str, list[int]] = {}
        self.proxy = proxy
        self._collector = _ProxyCollector(self)
        r.register(self._collector)

    # ------------------------------------------------------------------ labels

    def tenant_label(self, tenant: str | None) -> str:
        if tenant is None:
            return TRUSTED
        label = self._labels.get(tenant)
        if label is None:
            if self._named < self.top_n:
                label = tenant
                self._named += 1
            else:
                label = OTHER
            self._labels[tenant] = label
        return label

    def _kind_label(self, kind: str) -> str:
        """Kinds are the rewriter's fixed words, but unscoped sessions report the first word of
        whatever SQL a client sends: bound them like tenants."""
        if len(self._kinds) < MAX_KINDS and _KIND_RE.fullmatch(kind):
            label = kind
        else:
            label = OTHER_KIND
            if len(self._kinds) >= MAX_KINDS:
                return label  # not remembered: the map stays bounded too
        self._kinds[kind] = label
        return label

    def _child(self, metric: Counter, value: str) -> Any:
        key = (metric, value)
        child = self._simple.get(key)
        if child is None:
            child = self._simple[key] = metric.labels(value)
        return child

    # ------------------------------------------------------------------ hot path

    def client_connected(self) -> None:
        """A client socket was accepted on the main port."""
        self.client_connections.inc()
        self.client_connections_opened.inc()

    def client_closed(self) -> None:
        """A client socket accepted by client_connected() is gone."""
        self.client_connections.dec()

    def client_refused(self, sqlstate: str) -> None:
        """A client connection ended with this FATAL SQLSTATE before its session started
        (28P01 also counts as an auth failure on the client port)."""
        self._child(self.client_connections_refused, _sqlstate(sqlstate)).inc()
        if sqlstate == "28P01":
            self._child(self.auth_failures, "client").inc()

    def admin_auth_failed(self) -> None:
        self._child(self.auth_failures, "admin").inc()

    def statement(self, tenant: str | None, kind: str, decision: str) -> None:
        """One statement, counted when it is decided: its kind (the rewriter's, or the first
        word for unscoped sessions) and decision ("allowed" or "refused")."""
        kind = self._kinds.get(kind) or self._kind_label(kind)
        key = (tenant, kind, decision)
        labels = self._stmt.get(key)
        if labels is None:
            labels = self._stmt[key] = (self.tenant_label(tenant), kind, decision)
        counts = self.statements.counts
        counts[labels] = counts.get(labels, 0) + 1

    def timing(self, tenant: str | None, seconds: float, proxy_seconds: float | None = None) -> None:
        """One request answered: from its first message to the ReadyForQuery that ends it (a
        simple Query, or an extended-protocol batch up to Sync), and the proxy's own share."""
        pair = self._timing.get(tenant)
        if pair is None:
            label = self.tenant_label(tenant)
            pair = self._timing[tenant] = (self.duration.row(label), self.overhead.row(label))
        row = pair[0]
        row[bisect_left(DURATION_BUCKETS, seconds)] += 1  # past the last bound: the +Inf bucket
        row[-1] += seconds
        if proxy_seconds is not None:
            row = pair[1]
            row[bisect_left(OVERHEAD_BUCKETS, proxy_seconds)] += 1
            row[-1] += proxy_seconds

    def session_ended(self, tenant: str | None, bytes_in: int, bytes_out: int) -> None:
        """A session listed in proxy.sessions ends: keep its byte counts (call it in the same
        step that removes it from proxy.sessions so the totals never go backwards)."""
        totals = self._ended_bytes.setdefault(self.tenant_label(tenant), [0, 0])
        totals[0] += bytes_in
        totals[1] += bytes_out

    def crypto(self, op: str, ok: bool = True) -> None:
        """One field encryption or decryption (``op``: encrypt | decrypt)."""
        self.crypto_operations.add((op,))
        if not ok:
            self.crypto_failures.add((op,))

    def error(self, sqlstate: str) -> None:
        """An ErrorResponse went to a client; counted by its class (first two characters)."""
        self.errors.add((_sqlstate(sqlstate)[:2],))

    def limit_hit(self, tenant: str | None, limit: str) -> None:
        """A per-tenant limit acted (see proxy/limits.py for the limit names)."""
        self.limit_hits.labels(self.tenant_label(tenant), limit).inc()

    def admin_command(self, command: str, ok: bool) -> None:
        self.admin_commands.labels(command, "ok" if ok else "error").inc()

    # ------------------------------------------------------------------ reading

    def exposition(self) -> bytes:
        """The text exposition format, as /metrics serves it."""
        return generate_latest(self.registry)

    def families(self) -> dict[str, str]:
        """Every metric family this registry can expose: name -> type (counter names without _total)."""
        out = {m.name: m.type for m in self.registry.collect()}
        out.update((m.name, m.type) for m in self._collector.describe())
        return out

    def tenant_stats(self) -> dict[str, TenantStats]:
        """Cumulative statements, refusals, bytes and statement time per tenant label."""
        stats: dict[str, TenantStats] = {}

        def of(labels: dict[str, str]) -> TenantStats:
            return stats.setdefault(labels["tenant"], TenantStats())

        for family in self.registry.collect():
            for s in family.samples:
                name = s.name.removeprefix(PREFIX)
                if name == "statements_total":
                    of(s.labels).statements += int(s.value)
                    if s.labels["decision"] == "refused":
                        of(s.labels).refused += int(s.value)
                elif name == "statement_duration_seconds_count":
                    of(s.labels).duration_count += int(s.value)
                elif name == "statement_duration_seconds_sum":
                    of(s.labels).duration_sum += s.value
                elif name == "bytes_in_total":
                    of(s.labels).bytes_in += int(s.value)
                elif name == "bytes_out_total":
                    of(s.labels).bytes_out += int(s.value)
        return stats


def _sqlstate(sqlstate: str) -> str:
    """A well-formed SQLSTATE, or XX000 (bounded label values whatever a backend sends).

    >>> _sqlstate("42P01"), _sqlstate("bogus"), _sqlstate("4250")
    ('42P01', 'XX000', 'XX000')
    """
    ok = len(sqlstate) == 5 and sqlstate.isascii() and sqlstate.isalnum() and sqlstate == sqlstate.upper()
    return sqlstate if ok else "XX000"


class _Tally(Collector):
    """A counter family kept as plain counts per label values (the hot path adds to ``counts``).

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> t = _Tally("x_ops", "Ops", ("op",), CollectorRegistry())
    >>> t.add(("a",)); t.add(("a",)); t.add(("b",))
    >>> print(generate_latest(t.registry).decode().strip())
    # HELP x_ops_total Ops
    # TYPE x_ops_total counter
    x_ops_total{op="a"} 2.0
    x_ops_total{op="b"} 1.0
    """

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.counts: dict[tuple[str, ...], int] = {}
        self.registry = registry
        registry.register(self)

    def add(self, labels: tuple[str, ...]) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + 1

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labels)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, n in list(self.counts.items()):
            family.add_metric(labels, float(n))
        yield family


class _Timings(Collector):
    """A histogram family by tenant label: per label one row of bucket counts (a value past the
    last bound counts in the +Inf bucket), then the sum, observed by :meth:`Metrics.timing`.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> h = _Timings("x_seconds", "Time", (0.5, 1.0), CollectorRegistry())
    >>> row = h.row("acme")
    >>> row[bisect_left(h.bounds, 0.5)] += 1; row[-1] += 0.5
    >>> row[bisect_left(h.bounds, 7.0)] += 1; row[-1] += 7.0
    >>> print(generate_latest(h.registry).decode().strip())
    # HELP x_seconds Time
    # TYPE x_seconds histogram
    x_seconds_bucket{le="0.5",tenant="acme"} 1.0
    x_seconds_bucket{le="1.0",tenant="acme"} 1.0
    x_seconds_bucket{le="+Inf",tenant="acme"} 2.0
    x_seconds_count{tenant="acme"} 2.0
    x_seconds_sum{tenant="acme"} 7.5
    """

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.bounds = name, documentation, bounds
        self.rows: dict[str, list[float]] = {}
        self._le = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self.registry = registry
        registry.register(self)

    def row(self, label: str) -> list[float]:
        """The counts of ``label``'s buckets (one per bound, then +Inf), then its sum."""
        return self.rows.setdefault(label, [0.0] * (len(self.bounds) + 2))

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=["tenant"])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["tenant"])
        for label, row in list(self.rows.items()):
            total, buckets = 0.0, []
            for le, n in zip(self._le, row, strict=False):  # the sum (last) has no bucket
                total += n
                buckets.append((le, total))
            family.add_metric([label], buckets, row[-1])
        yield family


class _ProxyCollector(Collector):
    """Scrape-time figures read from the proxy's own state."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return [family for family, _fill in self._families()]

    def collect(self) -> Iterator[Metric]:
        for family, fill in self._families():
            try:
                fill(family)
            except Exception:  # a broken source must not take the whole scrape down
                log.exception("collecting %s failed", family.name)
                continue
            yield family

    def _families(self) -> list[tuple[Metric, Callable[[Any], None]]]:
        p = PREFIX
        return [
            (GaugeMetricFamily(p + "backend_connections", "Backend connections open now"), self._backends),
            (GaugeMetricFamily(p + "sessions", "Sessions open now, by tenant", labels=["tenant"]), self._sessions),
            (CounterMetricFamily(p + "bytes_in", "Bytes received from clients", labels=["tenant"]), self._bytes_in),
            (CounterMetricFamily(p + "bytes_out", "Bytes sent to clients", labels=["tenant"]), self._bytes_out),
            (CounterMetricFamily(p + "rewrite_cache_hits", "Rewrite plan cache hits"), self._cache("hits")),
            (CounterMetricFamily(p + "rewrite_cache_misses", "Rewrite plan cache misses"), self._cache("misses")),
            (GaugeMetricFamily(p + "rewrite_cache_entries", "Plans in the rewrite cache"), self._cache("size")),
            (CounterMetricFamily(p + "audit_records_written", "Audit records written"), self._audit("records_written")),
            (
                CounterMetricFamily(p + "audit_records_dropped", "Audit records dropped (on_failure = drop)"),
                self._audit("records_dropped"),
            ),
            (
                GaugeMetricFamily(p + "audit_queue_depth", "Audit records waiting to be written"),
                self._audit("queue_depth"),
            ),
            (
                GaugeMetricFamily(p + "audit_last_fsync_seconds", "Duration of the last audit fsync/commit"),
                self._audit("last_fsync_seconds"),
            ),
            (
                GaugeMetricFamily(p + "audit_lag_seconds", "Age of the oldest unwritten audit record"),
                self._audit("lag"),
            ),
            (GaugeMetricFamily(p + "audit_available", "1 while the audit sink is writable"), self._audit("available")),
            (
                GaugeMetricFamily(
                    p + "tenant_backend_connections",
                    "Backend connections held by a tenant's sessions",
                    labels=["tenant"],
                ),
                self._tenant_backends,
            ),
            (
                GaugeMetricFamily(
                    p + "tenant_limit",
                    "A tenant's configured limit (unset limits are absent)",
                    labels=["tenant", "limit"],
                ),
                self._tenant_limits,
            ),
        ]

    def _limiters(self) -> list[LimiterView]:
        proxy = self.metrics.proxy
        return [] if proxy is None else list(proxy.limiters.values())

    def _tenant_backends(self, family: Any) -> None:
        counts: dict[str, int] = {}
        for limiter in self._limiters():
            label = self.metrics.tenant_label(limiter.tenant)
            counts[label] = counts.get(label, 0) + limiter.backends
        for label, n in sorted(counts.items()):
            family.add_metric([label], n)

    def _tenant_limits(self, family: Any) -> None:
        proxy = self.metrics.proxy
        if proxy is None:
            return
        for tenant in proxy.config.tenants.values():
            label = self.metrics.tenant_label(tenant.name)
            for key in LIMIT_KEYS:
                value = getattr(tenant.limits, key)
                if value is not None:
                    family.add_metric([label, key], value)

    def _live(self) -> list[Any]:
        proxy = self.metrics.proxy
        return [] if proxy is None else list(proxy.sessions)

    def _backends(self, family: Any) -> None:
        held = sum(1 for c in self._live() if c.backend is not None and not c.backend.conn.is_closed)
        # transaction mode: the pools' idle backends are held by no session
        proxy = self.metrics.proxy
        pooled = 0 if proxy is None else sum(len(p.idle) for p in proxy.pools.values())
        family.add_metric([], held + pooled)

    def _sessions(self, family: Any) -> None:
        counts: dict[str, int] = {}
        for c in self._live():
            label = self.metrics.tenant_label(c.tenant)
            counts[label] = counts.get(label, 0) + 1
        for label, n in sorted(counts.items()):
            family.add_metric([label], n)

    def _bytes(self, index: int) -> dict[str, int]:
        totals = {label: pair[index] for label, pair in self.metrics._ended_bytes.items()}
        for c in self._live():
            label = self.metrics.tenant_label(c.tenant)
            totals[label] = totals.get(label, 0) + (c.bytes_in, c.bytes_out)[index]
        return totals

    def _bytes_in(self, family: Any) -> None:
        for label, n in sorted(self._bytes(0).items()):
            family.add_metric([label], n)

    def _bytes_out(self, family: Any) -> None:
        for label, n in sorted(self._bytes(1).items()):
            family.add_metric([label], n)

    def _cache(self, key: str) -> Callable[[Any], None]:
        def fill(family: Any) -> None:
            proxy = self.metrics.proxy
            if proxy is not None:
                family.add_metric([], proxy.rewriter.stats()[key])

        return fill

    def _audit(self, field: str) -> Callable[[Any], None]:
        def fill(family: Any) -> None:
            proxy = self.metrics.proxy
            audit = proxy.audit if proxy is not None else None
            if audit is not None:
                family.add_metric([], float(getattr(audit.stats(), field)))

        return fill
