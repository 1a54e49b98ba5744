"""Verify the audit logs of several proxy instances together (``audit verify --per-instance``).

Each instance of a [cluster] keeps its own hash chain on its own disk, and every record names
its instance (``instance``: the [cluster] id). Each PATH given is one instance's log; each is
verified on its own (verify.py), and the instance it belongs to is read from its records. The
logs together fail when any one fails, when one log mixes instances, or when two logs claim
the same instance (a copy passed twice, or two instances configured with one id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .reader import LogSource, iter_records
from .verify import Problem, VerifyResult, verify_log


@dataclass(frozen=True, slots=True)
class InstanceResult:
    path: str
    instance: str | None  # None: no record names one
    result: VerifyResult

    def summary(self) -> str:
        return f"instance {self.instance or '?'} ({self.path}): {self.result.summary()}"


def instances_of(sources: Sequence[LogSource]) -> set[str]:
    found: set[str] = set()
    for _raw, rec in iter_records(sources):  # an unreadable line is verify_log's to report
        if rec is None:
            continue
        # format 1 names the instance in every record; format 2 once per run, in the
        # chain_start/rotate details
        details = rec.get("details")
        for holder in (rec, details if isinstance(details, dict) else {}):
            instance = holder.get("instance")
            if isinstance(instance, str):
                found.add(instance)
    return found


def verify_instances(logs: Sequence[tuple[str, Sequence[LogSource]]], *, hmac_key: bytes,
                     allow_expired: bool = False) -> list[InstanceResult]:
    """(path, its sources) per instance -> one result each; a shared or mixed id fails the log."""
    out: list[InstanceResult] = []
    owners: dict[str, str] = {}
    for path, sources in logs:
        result = verify_log(sources, hmac_key=hmac_key, allow_expired=allow_expired)
        ids = instances_of(sources)
        instance = next(iter(ids)) if len(ids) == 1 else None
        if result.ok and len(ids) > 1:
            result.problem = Problem(path, 0, None, f"one log holds several instances: {', '.join(sorted(ids))}")
        elif result.ok and instance is not None and instance in owners:
            result.problem = Problem(path, 0, None, f"instance {instance} also owns {owners[instance]}")
        if instance is not None:
            owners.setdefault(instance, path)
        out.append(InstanceResult(path, instance, result))
    return out
