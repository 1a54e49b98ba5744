"""proxy/pipeline.py without sockets: cycles as PostgreSQL answers them (h11-style event sequences).

Each case is a sequence of what the session sends and what the backend answers; the pipeline
must say which cycle each answer belongs to, whether the proxy injected it, and whether an
ErrorResponse failed it, the way PostgreSQL's own rules do (one ReadyForQuery per Query and
per Sync, an error skips to the end of its cycle and fails it once).
"""

from __future__ import annotations

import pytest

from tenantgate.proxy.pipeline import Pipeline


def run(events: str) -> list[tuple[int, bool, bool | None]]:
    """Play events: Q (client Query), P/B/E/D (extended), S (Sync), i/f (injected, may fail),
    e (ErrorResponse), Z (ReadyForQuery). Returns per Z: (cycle, failed, injected)."""
    p = Pipeline()
    out = []
    for ev in events:
        if ev == "Q":
            p.query()
        elif ev in "PBED":
            p.extended()
        elif ev == "S":
            p.sync()
        elif ev in "if":
            p.inject(may_fail=ev == "f")
        elif ev == "e":
            p.error()
        elif ev == "Z":
            injected = p.answering_injected()
            cycle, failed = p.ready()
            out.append((cycle, failed, injected))
    return out


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ("QZ", [(1, False, None)]),
        ("PBESZ", [(1, False, None)]),
        ("QeZ", [(1, True, None)]),  # a simple Query's error fails its cycle
        ("PBEPBESeZ", [(1, True, None)]),  # one error skips to the Sync: one failed cycle
        ("QQZeZ", [(1, False, None), (2, True, None)]),  # pipelined: the error after the first Z is the second's
        ("QeZQZ", [(1, True, None), (2, False, None)]),  # failure is reported once, not carried on
        ("iQZZ", [(1, False, False), (2, False, None)]),  # a hand-over's settings before the client's query
        ("QfeZZ", [(1, True, None), (2, False, True)]),  # made-to-fail injection after the client's cycle
        ("PBESiZZ", [(1, False, None), (2, False, False)]),
    ],
)
def test_cycles_follow_postgresql_rules(events: str, expected: list[tuple[int, bool, bool | None]]) -> None:
    assert run(events) == expected


def test_extended_messages_belong_to_the_next_sync() -> None:
    p = Pipeline()
    p.query()
    assert (p.next, p.answering) == (2, 1)
    p.extended()
    assert p.unsynced and not p.quiet
    assert p.sync() == 2 and not p.unsynced
    p.ready()
    assert not p.answered_all and not p.quiet
    p.ready()
    assert p.answered_all and p.quiet


def test_unsynced_messages_keep_the_backend_busy_after_every_ready() -> None:
    # transaction pooling must not hand the backend on while a Parse waits for its Sync
    p = Pipeline()
    p.query()
    p.extended()
    p.ready()
    assert p.answered_all and not p.quiet


def test_injected_cycles_are_forgotten_once_answered() -> None:
    p = Pipeline()
    p.inject(may_fail=True)
    p.inject(may_fail=False)
    assert p.answering_injected() is True
    p.ready()
    assert p.answering_injected() is False
    p.ready()
    assert p.answering_injected() is None and p.quiet
