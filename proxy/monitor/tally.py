"""The data path's side of monitoring: plain counts per (tenant, user), folded into one window.

A session holds its user's :class:`UserTally` and adds to it where it already counts things
(a plan, a refusal, a CommandComplete, a decryption); logins add to the worker's
:class:`Tally`. No lock, no allocation per statement beyond a dict increment: only the
event loop's thread touches them. :meth:`Tally.drain` hands the counts since the last drain
to the analysis (engine.py) as a :class:`Window` of plain data and starts the next one.

>>> t = Tally()
>>> u = t.user("acme", "alice")
>>> u.planned("SELECT * FROM t WHERE id = 1", cached=False)
>>> u.completed(b"SELECT 3"); u.completed(b"UPDATE 2"); u.refused("catalog")
>>> t.login("acme", "alice", "10.0.0.1", ok=True); t.login(None, "mallory", "10.0.0.9", ok=False)
>>> w = t.drain()
>>> f = w.users[("acme", "alice")]
>>> f.statements, f.rows_out, f.rows_changed, f.max_rows, f.refusals, f.shapes, f.addresses
(2, 3, 2, 3, {'catalog': 1}, ['SELECT * FROM t WHERE id = 1'], {'10.0.0.1': 1})
>>> w.auth_failures
{(None, 'mallory', '10.0.0.9'): 1}
>>> t.drain().users
{}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

MAX_SHAPES = 32  # uncached statement texts kept per user and window (fingerprinted off the hot path)
_OUT = frozenset({b"SELECT", b"FETCH", b"COPY"})
_CHANGED = frozenset({b"INSERT", b"UPDATE", b"DELETE", b"MERGE"})


@dataclass(slots=True)
class Facts:
    """What one (tenant, user) did in a window (and, folded by the engine, in a minute)."""

    statements: int = 0
    rows_out: int = 0
    rows_changed: int = 0
    max_rows: int = 0  # the most rows one statement returned
    bytes_out: int = 0
    decrypts: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # refused statements by reason
    shapes: list[str] = field(default_factory=list)  # texts of plans the rewriter had not cached
    addresses: dict[str, int] = field(default_factory=dict)  # logins by client address

    @property
    def active(self) -> bool:
        return bool(self.statements or self.refusals or self.addresses)

    def to_json(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(Facts)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Facts:
        return cls(**data)  # type: ignore[arg-type]

    def add(self, other: Facts) -> None:
        """Fold another worker's (or window's) facts into these."""
        self.statements += other.statements
        self.rows_out += other.rows_out
        self.rows_changed += other.rows_changed
        self.max_rows = max(self.max_rows, other.max_rows)
        self.bytes_out += other.bytes_out
        self.decrypts += other.decrypts
        for reason, n in other.refusals.items():
            self.refusals[reason] = self.refusals.get(reason, 0) + n
        self.shapes.extend(other.shapes[: MAX_SHAPES - len(self.shapes)])
        for addr, n in other.addresses.items():
            self.addresses[addr] = self.addresses.get(addr, 0) + n


class Bucket:
    """A token bucket for a throttled user (statements per second, burst 1): seconds to wait.

    >>> now = [0.0]; b = Bucket(2.0, clock=lambda: now[0])
    >>> b.delay(1), b.delay(1), b.delay(2)
    (0.0, 0.5, 1.5)
    """

    __slots__ = ("_clock", "_stamp", "_tokens", "rate")

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = 1.0
        self._stamp = clock()

    def delay(self, n: int) -> float:
        now = self._clock()
        self._tokens = min(1.0, self._tokens + (now - self._stamp) * self.rate) - n
        self._stamp = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class UserTally(Facts):
    """The live counts of one (tenant, user) in this worker; its sessions add to it."""

    __slots__ = ("throttle",)

    def __init__(self) -> None:
        super().__init__()
        self.throttle: Bucket | None = None  # set while a "throttle" response holds

    def planned(self, sql: str, cached: bool) -> None:
        """The rewriter planned ``sql``; a plan it had not cached may be a shape new to the tenant."""
        if not cached and len(self.shapes) < MAX_SHAPES:
            self.shapes.append(sql)

    def refused(self, reason: str) -> None:
        """A statement the proxy refused, by the refusal's reason (catalog, tenant_column, ...)."""
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def completed(self, tag: bytes) -> None:
        """A CommandComplete: one statement done, and the rows its tag reports."""
        self.statements += 1
        word, _, count = tag.rpartition(b" ")
        if not count.isdigit():
            return
        rows = int(count)
        verb = word.partition(b" ")[0] or word
        if verb in _OUT:
            self.rows_out += rows
            if rows > self.max_rows:
                self.max_rows = rows
        elif verb in _CHANGED:
            self.rows_changed += rows

    def decrypted(self, op: str, ok: bool = True) -> None:
        """SessionCrypto's on_op: a value of an encrypted column was decrypted for the client."""
        if op == "decrypt":
            self.decrypts += 1

    def take(self) -> Facts:
        """These counts as Facts; the tally starts again from zero (sessions keep their reference)."""
        facts = Facts(
            self.statements, self.rows_out, self.rows_changed, self.max_rows, self.bytes_out, self.decrypts,
            self.refusals, self.shapes, self.addresses,
        )
        self.statements = self.rows_out = self.rows_changed = self.max_rows = self.bytes_out = self.decrypts = 0
        self.refusals, self.shapes, self.addresses = {}, [], {}
        return facts


@dataclass(slots=True)
class Window:
    """The counts of one interval: per (tenant or None for trusted users, user), and failed logins."""

    users: dict[tuple[str | None, str], Facts] = field(default_factory=dict)
    # (the user's configured tenant or None, user, address) -> failed logins
    auth_failures: dict[tuple[str | None, str, str], int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "users": [[t, u, f.to_json()] for (t, u), f in self.users.items()],
            "auth_failures": [[t, u, a, n] for (t, u, a), n in self.auth_failures.items()],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Window:
        w = cls()
        for t, u, f in data["users"]:  # type: ignore[attr-defined]
            w.users[(t, u)] = Facts.from_json(f)
        for t, u, a, n in data["auth_failures"]:  # type: ignore[attr-defined]
            w.auth_failures[(t, u, a)] = n
        return w

    def merge(self, other: Window) -> None:
        """Another worker's window of the same interval (the supervisor folds its workers')."""
        for key, facts in other.users.items():
            mine = self.users.get(key)
            if mine is None:
                self.users[key] = facts
            else:
                mine.add(facts)
        for failed, n in other.auth_failures.items():
            self.auth_failures[failed] = self.auth_failures.get(failed, 0) + n


class Tally:
    """Every UserTally of one worker, and its failed logins since the last drain."""

    def __init__(self) -> None:
        self._users: dict[tuple[str | None, str], UserTally] = {}
        self._auth_failures: dict[tuple[str | None, str, str], int] = {}

    def user(self, tenant: str | None, user: str) -> UserTally:
        key = (tenant, user)
        found = self._users.get(key)
        if found is None:
            found = self._users[key] = UserTally()
        return found

    def login(self, tenant: str | None, user: str, address: str, ok: bool) -> None:
        """A login's result; for a failed one ``tenant`` is the configured tenant of that user name, if any."""
        if ok:
            addresses = self.user(tenant, user).addresses
            addresses[address] = addresses.get(address, 0) + 1
        else:
            failed = (tenant, user, address)
            self._auth_failures[failed] = self._auth_failures.get(failed, 0) + 1

    def drain(self) -> Window:
        window = Window(auth_failures=self._auth_failures)
        self._auth_failures = {}
        for key, tally in self._users.items():
            if tally.active or tally.bytes_out or tally.decrypts:
                window.users[key] = tally.take()
        return window
