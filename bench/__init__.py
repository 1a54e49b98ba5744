"""Reproducible performance comparisons for tenantgate: ``python -m bench [--quick] [--out DIR]``.

One run starts a throwaway PostgreSQL, loads a tenant-scoped pgbench-like schema, and drives
the same pgbench scripts through PostgreSQL directly, PgBouncer and several tenantgate
variants, interleaved per measurement point. It adds the library micro-benchmarks, the
proxy's memory per idle client and its CPU per statement, and writes results.json,
results.md and a PNG plot. See bench/README.md.
"""
