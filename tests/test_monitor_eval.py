"""The simulated-week evaluation (bench/monitor_eval.py), small: one tenant, three days, one attack
of each kind. ``python -m bench monitor-eval`` runs the full week."""

from __future__ import annotations

from bench.monitor_eval import KINDS, TARGET_SECONDS, evaluate


def test_every_attack_is_detected_in_time_and_the_workload_stays_quiet() -> None:
    result = evaluate(tenants=1, days=3, seed=5, per_kind=1)
    assert result.injected == dict.fromkeys(KINDS, 1)
    assert result.detected == result.injected, result.table()
    assert max(d for ds in result.delays.values() for d in ds) <= TARGET_SECONDS, result.table()
    assert result.false_per_tenant_day <= 1.0, result.table()
    assert result.passed
