"""The libraries' own micro-benchmarks (``tenantgate.<package>.benchmark.run``), where they exist.

Each ``run()`` is called with its defaults, or in quick mode with smaller keyword arguments
where its signature takes them. A module that is missing is reported as unavailable; one
that fails is reported with its error, so one broken micro-benchmark does not lose a run.
"""

from __future__ import annotations

import importlib
import inspect
import time
import traceback
from typing import Any

MODULES = {
    "rewriter": "tenantgate.rewriter.benchmark",  # µs per plan(): cold rewrite and cache hits
    "audit": "tenantgate.audit.benchmark",  # records/s, strict and batched
    "keyring": "tenantgate.keyring.benchmark",  # encrypt/decrypt ops/s per core
    # µs per stage of one statement: framing, plan-cache hit, audit worker/sealer side, decrypt of one field
    "proxy": "tenantgate.proxy.benchmark",
}
QUICK_ARGS: dict[str, dict[str, Any]] = {
    "rewriter": {"iterations": 500},
    "audit": {"records": 5000},
    "keyring": {"seconds": 0.1},
    "proxy": {"iterations": 5000},
}


def run_all(*, quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, module_name in MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            results[name] = {"module": module_name, "unavailable": f"{module_name} does not exist"}
            continue
        run = module.run
        accepted = inspect.signature(run).parameters
        kwargs = {k: v for k, v in QUICK_ARGS[name].items() if k in accepted} if quick else {}
        started = time.perf_counter()
        try:
            figures = run(**kwargs)
        except Exception as exc:
            results[name] = {"module": module_name, "kwargs": kwargs, "error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc(limit=5)}
            continue
        results[name] = {"module": module_name, "kwargs": kwargs, "result": figures,
                         "seconds": round(time.perf_counter() - started, 2)}
    return results
