"""The session's response filters without sockets (proxy/filters.py, rowlimit.py, channels.py):
frame sequences as a backend sends them, and what the client is shown of each.

The same filters run through the real proxy in tests/test_limits.py (max_rows),
tests/test_backend_identity.py (channels) and tests/test_encryption_*.py (field encryption).
"""

from __future__ import annotations

import pytest

from tenantgate.config.schema import Limits
from tenantgate.proxy import codec
from tenantgate.proxy.channels import Channels
from tenantgate.proxy.codec import MsgType, NotificationResponse
from tenantgate.proxy.filters import ResponseFilter, run_chain
from tenantgate.proxy.rowlimit import RowLimit

ROW = codec.DataRow((b"1",)).encode()[5:]


def tag(text: str) -> bytes:
    return text.encode() + b"\x00"


class Recorder:
    """A filter that notes what it saw and answers from a script (type -> answer)."""

    def __init__(self, watches: set[int], answers: dict[int, bytes | None], *, abort_on: int | None = None) -> None:
        self._watches = frozenset(watches)
        self.answers = answers
        self.seen: list[int] = []
        self.abort_on = abort_on
        self.abort_pending = False

    @property
    def responses(self) -> frozenset[int]:
        return self._watches

    def on_response(self, mtype: int, body: bytes) -> bytes | None:
        self.seen.append(mtype)
        if mtype == self.abort_on:
            self.abort_pending = True
        return self.answers.get(mtype)


# ------------------------------------------------------------------ the chain's rules


def test_a_dropped_frame_goes_no_further() -> None:
    first = Recorder({MsgType.DATA_ROW}, {MsgType.DATA_ROW: b""})
    second = Recorder({MsgType.DATA_ROW}, {})
    assert run_chain((first, second), MsgType.DATA_ROW, ROW) == (b"", True, False)
    assert second.seen == []


def test_an_error_replacement_goes_no_further() -> None:
    err = codec.error("54000", "too many").encode()
    first = Recorder({MsgType.COMMAND_COMPLETE}, {MsgType.COMMAND_COMPLETE: err})
    second = Recorder({MsgType.COMMAND_COMPLETE}, {})
    assert run_chain((first, second), MsgType.COMMAND_COMPLETE, tag("SELECT 9")) == (err, True, False)
    assert second.seen == []


def test_other_replacements_go_on_as_the_frame_they_replaced() -> None:
    replaced = codec.CommandComplete("SELECT 2").encode()
    first = Recorder({MsgType.COMMAND_COMPLETE}, {MsgType.COMMAND_COMPLETE: replaced})
    second = Recorder({MsgType.COMMAND_COMPLETE}, {})
    assert run_chain((first, second), MsgType.COMMAND_COMPLETE, tag("SELECT 3")) == (replaced, False, False)
    assert second.seen == [MsgType.COMMAND_COMPLETE]


def test_filters_see_only_what_they_watch() -> None:
    rows = Recorder({MsgType.DATA_ROW}, {})
    ends = Recorder({MsgType.COMMAND_COMPLETE}, {})
    for mtype, body in ((MsgType.DATA_ROW, ROW), (MsgType.COMMAND_COMPLETE, tag("SELECT 1"))):
        run_chain((rows, ends), mtype, body)
    assert (rows.seen, ends.seen) == ([MsgType.DATA_ROW], [MsgType.COMMAND_COMPLETE])


def test_abort_pending_is_reported_once_and_cleared() -> None:
    f = Recorder({MsgType.READY_FOR_QUERY}, {MsgType.READY_FOR_QUERY: codec.ready("E")},
                 abort_on=MsgType.READY_FOR_QUERY)
    assert run_chain((f,), MsgType.READY_FOR_QUERY, b"T") == (codec.ready("E"), False, True)
    assert not f.abort_pending
    f.abort_on = None
    assert run_chain((f,), MsgType.READY_FOR_QUERY, b"T")[2] is False


# ------------------------------------------------------------------ max_rows


def row_limit(limits: Limits) -> tuple[RowLimit, list[str], list[Limits]]:
    hits: list[str] = []
    live = [limits]
    return RowLimit(lambda: live[0], hits.append), hits, live


def statement(f: ResponseFilter, rows: int, end: int = MsgType.COMMAND_COMPLETE,
              body: bytes = b"") -> list[bytes | None]:
    out = [f.on_response(MsgType.DATA_ROW, ROW) for _ in range(rows)]
    out.append(f.on_response(end, body or tag(f"SELECT {rows}")))
    return out


def test_rows_past_the_cap_are_dropped_and_the_statement_refused() -> None:
    f, hits, _ = row_limit(Limits(max_rows=2))
    out = statement(f, 4)
    assert out[:4] == [None, None, b"", b""]
    err = codec.decode_backend(MsgType.ERROR_RESPONSE, out[4][5:])  # type: ignore[index]
    assert isinstance(err, codec.ErrorResponse) and err.sqlstate == "54000"
    assert f.abort_pending and hits == ["max_rows"]


@pytest.mark.parametrize(("rows", "expected_tag"), [(5, "SELECT 2"), (3, "SELECT 2")])
def test_truncate_keeps_the_cap_and_warns(rows: int, expected_tag: str) -> None:
    f, hits, _ = row_limit(Limits(max_rows=2, max_rows_action="truncate"))
    out = statement(f, rows)
    assert out[:rows] == [None, None] + [b""] * (rows - 2)
    end = out[rows]
    assert end is not None and end.startswith(codec.NoticeResponse.TYPE)
    assert end.endswith(codec.CommandComplete(expected_tag).encode())
    assert not f.abort_pending and hits == ["max_rows"]


def test_truncate_of_a_suspended_portal_keeps_it_suspended() -> None:
    f, _, _ = row_limit(Limits(max_rows=1, max_rows_action="truncate"))
    end = statement(f, 2, MsgType.PORTAL_SUSPENDED, b"")
    assert end[2] is not None and end[2].endswith(codec.type_byte(MsgType.PORTAL_SUSPENDED) + b"\x00\x00\x00\x04")


@pytest.mark.parametrize("rows", [0, 1, 2])
def test_at_or_under_the_cap_nothing_changes(rows: int) -> None:
    f, hits, _ = row_limit(Limits(max_rows=2))
    assert statement(f, rows) == [None] * (rows + 1) and hits == []


def test_each_statement_counts_afresh_and_an_error_ends_the_count() -> None:
    f, hits, _ = row_limit(Limits(max_rows=2))
    assert statement(f, 2) == [None] * 3
    assert [f.on_response(MsgType.DATA_ROW, ROW) for _ in range(3)] == [None, None, b""]
    assert f.on_response(MsgType.ERROR_RESPONSE, b"") is None  # the backend's own error: relayed as it is
    assert statement(f, 2) == [None] * 3 and hits == []


def test_a_reload_applies_to_the_next_statement() -> None:
    f, _, live = row_limit(Limits(max_rows=1))
    assert f.active
    live[0] = Limits()
    assert not f.active and statement(f, 5) == [None] * 6
    live[0] = Limits(max_rows=3)
    assert statement(f, 4)[3] == b""


# ------------------------------------------------------------------ channels


def note(pid: int, channel: str, payload: str = "p") -> bytes:
    return NotificationResponse(pid, channel, payload).encode()[5:]


@pytest.mark.parametrize(
    ("pid", "channel", "expected"),
    [
        (4242, "acme:jobs", NotificationResponse(7, "jobs", "p").encode()),  # own backend: the client's pid
        (9999, "acme:jobs", NotificationResponse(9999, "jobs", "p").encode()),  # another session of the tenant
        (4242, "globex:jobs", b""),  # another tenant's, on our backend
        (9999, "acmex:jobs", b""),  # a tenant whose name starts with ours
        (9999, "jobs", b""),  # a trusted user's channel
        (9999, "acme", b""),
    ],
)
def test_a_tenant_sees_only_its_own_channels(pid: int, channel: str, expected: bytes) -> None:
    f = Channels("acme", client_pid=7)
    f.backend_pid = 4242
    assert f.on_response(MsgType.NOTIFICATION_RESPONSE, note(pid, channel)) == expected


def test_a_hand_over_changes_whose_pid_is_the_clients() -> None:
    f = Channels("acme", client_pid=7)
    f.backend_pid = 1
    assert f.on_response(MsgType.NOTIFICATION_RESPONSE, note(2, "acme:c")) == NotificationResponse(2, "c", "p").encode()
    f.backend_pid = 2
    assert f.on_response(MsgType.NOTIFICATION_RESPONSE, note(2, "acme:c")) == NotificationResponse(7, "c", "p").encode()


def test_each_filter_watches_what_it_handles() -> None:
    f, _, _ = row_limit(Limits(max_rows=1))
    assert {MsgType.DATA_ROW, MsgType.COPY_DATA, MsgType.COMMAND_COMPLETE} <= f.responses
    assert Channels("acme", client_pid=1).responses == {MsgType.NOTIFICATION_RESPONSE}
