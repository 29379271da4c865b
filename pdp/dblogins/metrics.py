"""Prometheus metrics of the database logins, in the broker's registry: logins issued and
ended (by why), what the sweep dropped, admin operations that failed (by cause), and each
target's admin pool (connections in use, requests waiting for one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# the causes a failed admin operation is counted under
CAUSE_TIMEOUT = "timeout"          # slower than the target's bound, or no admin connection free in time
CAUSE_UNREACHABLE = "unreachable"  # the server is down, refused the connection, or it broke
CAUSE_REFUSED = "refused"          # the server answered with an error (a privilege, a lock, a limit)


class LoginMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.issued = Counter("jitmesh_dblogins_issued", "Database logins issued, new or refreshed",
                              ["audience", "refreshed"], registry=self.registry)
        self.ended = Counter("jitmesh_dblogins_ended", "Database logins ended (sessions terminated, role dropped), "
                             "by why: expired, revoked, unrecorded, unreadable", ["audience", "reason"],
                             registry=self.registry)
        self.swept = Counter("jitmesh_dblogins_sweep_dropped", "Database logins the sweep ended, by why",
                             ["audience", "reason"], registry=self.registry)
        self.failures = Counter("jitmesh_dblogins_failures", "Admin operations on a database target that failed, "
                                "by operation and cause (timeout, unreachable, refused)",
                                ["audience", "operation", "cause"], registry=self.registry)

    def watch_pools(self, stats: Mapping[str, Callable[[], Mapping[str, int]]]) -> None:
        """Report each target's admin pool (audience -> its `get_stats`) at every scrape."""
        self.registry.register(_PoolCollector(stats))


class _PoolCollector(Collector):
    def __init__(self, stats: Mapping[str, Callable[[], Mapping[str, int]]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_use = GaugeMetricFamily("jitmesh_dblogins_admin_pool_in_use",
                                   "Admin connections to the target in use now", labels=["audience"])
        waiting = GaugeMetricFamily("jitmesh_dblogins_admin_pool_waiting",
                                    "Admin operations waiting for a free connection now", labels=["audience"])
        size = GaugeMetricFamily("jitmesh_dblogins_admin_pool_max",
                                 "The most admin connections the broker opens to the target", labels=["audience"])
        for audience, get in self.stats.items():
            s = get()
            in_use.add_metric([audience], s.get("pool_size", 0) - s.get("pool_available", 0))
            waiting.add_metric([audience], s.get("requests_waiting", 0))
            size.add_metric([audience], s.get("pool_max", 0))
        yield from (in_use, waiting, size)
