"""A tenant session's LISTEN/NOTIFY channels, on the way back (a filter, see proxy/filters.py).

The rewriter namespaces every channel a tenant names (``tenant:channel``, rewriter/channels.py);
a notification on the backend the session holds shows the tenant its own name and drops every
other tenant's. A notification from the session's own backend carries the pid the client was
given at startup (its BackendKeyData), not the pooled backend's.

>>> from tenantgate.proxy.codec import NotificationResponse
>>> f = Channels("acme", client_pid=7)
>>> f.backend_pid = 4242
>>> mine = NotificationResponse(4242, "acme:jobs", "go").encode()[5:]
>>> f.on_response(MsgType.NOTIFICATION_RESPONSE, mine) == NotificationResponse(7, "jobs", "go").encode()
True
>>> f.on_response(MsgType.NOTIFICATION_RESPONSE, NotificationResponse(99, "other:jobs", "x").encode()[5:])
b''
"""

from __future__ import annotations

from tenantgate.rewriter import strip_channel

from . import codec
from .codec import MsgType
from .encoding import UTF8, ClientEncoding

_NOTIFY = frozenset((MsgType.NOTIFICATION_RESPONSE,))


class Channels:
    """Notifications as the tenant knows its channels."""

    __slots__ = ("_encoding", "abort_pending", "backend_pid", "client_pid", "tenant")

    def __init__(self, tenant: str, *, client_pid: int, encoding: ClientEncoding = UTF8) -> None:
        self.tenant = tenant
        self.client_pid = client_pid
        self.backend_pid: int | None = None  # the backend the session holds now (set on each hand-over)
        self._encoding = encoding  # a tenant session's client_encoding is fixed at startup
        self.abort_pending = False

    @property
    def responses(self) -> frozenset[int]:
        return _NOTIFY

    def on_response(self, mtype: int, body: bytes) -> bytes | None:
        note = codec.decode_backend(MsgType.NOTIFICATION_RESPONSE, body, self._encoding)
        assert isinstance(note, codec.NotificationResponse)
        channel = strip_channel(self.tenant, note.channel)
        if channel is None:
            return b""
        pid = self.client_pid if note.pid == self.backend_pid else note.pid
        return codec.NotificationResponse(pid, channel, note.payload).encode(self._encoding)
