"""audit.benchmark.run() works end to end (bench/ reports its figures; no speed assertions here)."""

from tenantgate.audit.benchmark import run


def test_benchmark_runs_both_modes() -> None:
    result = run(records=64, concurrency=8)
    assert set(result) == {"strict", "batched"}
    assert all(figures["records"] == 64 for figures in result.values())
