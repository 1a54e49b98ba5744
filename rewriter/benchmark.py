"""Rewriter-only timings for bench/: cold rewrite, cache hits (exact, literal-lifted, extended).

``run()`` returns microseconds per statement; nothing here asserts a timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .policy import Policy
from .rewriter import Rewriter

POLICY = Policy(scoped={("public", "pgbench_accounts"): "tenant_id", ("public", "pgbench_branches"): "tenant_id",
                        ("public", "pgbench_tellers"): "tenant_id", ("public", "pgbench_history"): "tenant_id"})
# pgbench's TPC-B-like transaction, with its literals varied per iteration.
PGBENCH = (
    "UPDATE pgbench_accounts SET abalance = abalance + {d} WHERE aid = {a}",
    "SELECT abalance FROM pgbench_accounts WHERE aid = {a}",
    "UPDATE pgbench_tellers SET tbalance = tbalance + {d} WHERE tid = {t}",
    "UPDATE pgbench_branches SET bbalance = bbalance + {d} WHERE bid = {b}",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({t}, {b}, {a}, {d}, CURRENT_TIMESTAMP)",
)


def _per_call(fn: Callable[[int], object], iterations: int) -> float:
    start = time.perf_counter()
    for i in range(iterations):
        fn(i)
    return (time.perf_counter() - start) / iterations * 1e6


def run(iterations: int = 2000) -> dict[str, float]:
    """Mean microseconds per plan() call for each path of the rewriter."""
    rw = Rewriter(POLICY)

    def text(i: int) -> str:
        return PGBENCH[i % len(PGBENCH)].format(a=i * 7 + 1, b=i % 10 + 1, t=i % 100 + 1, d=i - 5000)

    def cold(i: int) -> None:
        rw.clear()
        rw.plan(text(i), "acme")

    def lifted(i: int) -> None:
        rw.plan(text(i), "acme")

    def exact(i: int) -> None:
        rw.plan(PGBENCH[1].format(a=1), "acme")

    def extended(i: int) -> None:
        rw.plan("SELECT abalance FROM pgbench_accounts WHERE aid = $1", "acme", extended=True)

    result = {"cold_rewrite_us": _per_call(cold, max(1, iterations // 20))}
    rw.clear()
    for i in range(len(PGBENCH)):
        lifted(i)
    result["lifted_hit_us"] = _per_call(lifted, iterations)
    result["exact_hit_us"] = _per_call(exact, iterations)
    result["extended_hit_us"] = _per_call(extended, iterations)
    return result


if __name__ == "__main__":
    print(run())
