"""Unit tests of the proxy's per-session views (no I/O): prepared statements follow acknowledgements,
and tracked settings never let a backend look cleaner than it may be."""

from __future__ import annotations

import pytest

from tenantgate.proxy.backend import Backend, BackendTarget
from tenantgate.proxy.codec import Close, Parse
from tenantgate.proxy.pool import Prepared, PreparedStatements, backend_name
from tenantgate.proxy.tracked import DIRTY, RESET_ALL, TrackedSettings


def backend() -> Backend:
    return Backend(conn=None, target=BackendTarget("127.0.0.1", 1, "u", None), database="d")  # type: ignore[arg-type]


def statement(sql: str, tenant_params: tuple[int, ...] = ()) -> Prepared:
    bname = backend_name(sql, ())
    return Prepared(bname, Parse(bname, sql).encode(), "select", tenant_params)


def test_a_named_parse_is_sent_under_its_backend_name_and_counts_once_acknowledged() -> None:
    b, named = backend(), PreparedStatements()
    st = statement("SELECT 1", (1,))
    sent = named.parse(b, "s", st, cycle=1)
    assert sent == Close("S", st.bname).encode() + st.parse  # replaces the same text, whoever prepared it
    assert named.lookup("s") == (st, 1) and "s" not in named.names  # pending: what the Bind would run
    assert named.answered() == (True, False)  # the proxy's Close: swallowed
    assert named.answered() == (False, True)  # the client's Parse: relayed, crypto told
    assert named.names == {"s": st} and named.lookup("s") == (st, None)


@pytest.mark.parametrize("acked_before_error", [0, 1])
def test_an_error_drops_what_is_in_flight_in_its_cycle(acked_before_error: int) -> None:
    b, named = backend(), PreparedStatements()
    old, new = statement("SELECT 1", (1,)), statement("SELECT 2")
    named.parse(b, "s", old, 1)
    named.answered(), named.answered()
    named.cycle_done(1)
    named.close(b, "s", 2)
    named.parse(b, "s", new, 2)
    for _ in range(acked_before_error):
        named.answered()  # the Close went through
    named.failed(b, 2)
    named.cycle_done(2)
    assert named.lookup("s")[0] == (None if acked_before_error else old)
    assert new.bname not in b.prepared


def test_prepare_on_demand_and_forget_all() -> None:
    b, named = backend(), PreparedStatements()
    st = statement("SELECT 3")
    named.parse(b, "s", st, 1)
    assert named.prepare(b, st, 1) == b""  # assumed there already
    named.forget_all(b)  # DEALLOCATE ALL succeeded
    assert named.prepare(b, st, 2) == Close("S", st.bname).encode() + st.parse


def test_close_of_an_unknown_name_closes_nothing() -> None:
    b, named = backend(), PreparedStatements()
    assert named.close(b, "nope", 1) is None
    assert named.answered() == (False, False)


def test_backend_names_are_content_addressed_and_salted() -> None:
    assert backend_name("SELECT 1", ()) == backend_name("SELECT 1", ())
    assert backend_name("SELECT 1", ()) != backend_name("SELECT 1", (23,))
    import hashlib

    assert backend_name("SELECT 1", ())[3:] != hashlib.sha256(repr(("SELECT 1", ())).encode()).hexdigest()[:24]


def test_settings_are_dirty_on_the_backend_as_soon_as_sent() -> None:
    b = backend()
    t = TrackedSettings({"tenantgate.tenant": "acme"})
    assert t.setup_sql(b) == "SET tenantgate.tenant TO 'acme'"
    t.change([("timezone", "'UTC'")], 1, b)
    assert b.applied["timezone"] == DIRTY
    t.cycle_done(1, failed=True, status="I", backend=b)  # failed: alice keeps nothing ...
    assert t.client == {}
    other = TrackedSettings({"tenantgate.tenant": "globex"})
    assert "RESET timezone" in other.setup_sql(b)  # ... and the next session undoes it anyway


def test_a_rolled_back_transaction_undoes_what_the_proxy_reapplied_in_it() -> None:
    b = backend()
    t = TrackedSettings({"tenantgate.tenant": "acme"})
    t.change([("datestyle", "'German'")], 1, b)
    t.cycle_done(1, failed=False, status="I", backend=b)
    t.setup_sql(b)
    t.change([RESET_ALL], 2, b)  # inside BEGIN: RESET ALL, the proxy re-applies right after
    t.setup_sql(b)
    assert "datestyle" not in b.applied
    t.cycle_done(2, failed=False, status="T", backend=b)
    t.cycle_done(3, failed=False, status="I", rolled_back=True, backend=b)  # ROLLBACK: German is back
    assert t.client == {"datestyle": "'German'"}
    assert b.applied["datestyle"] == DIRTY and b.applied["tenantgate.tenant"] == DIRTY
