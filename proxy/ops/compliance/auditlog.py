"""The one adapter between compliance and tenantgate.audit: open the configured log, verify it, and
count what a control or an evidence pack cites. Every other compliance module goes through here, so
a change to audit's reader API (issue 16: segments, retention, a columnar reader) is one file.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from tenantgate.audit.errors import AuditError
from tenantgate.audit.keys import load_hmac_key, load_signing_key
from tenantgate.audit.lean import parse_timestamp, ts_text
from tenantgate.audit.multi import verify_instances
from tenantgate.audit.reader import LogSource, expand, iter_records, open_sources
from tenantgate.audit.record import EVENT_KINDS
from tenantgate.audit.retention import configured_sources
from tenantgate.audit.review import review_log_path
from tenantgate.audit.verify import verify_log
from tenantgate.config import Config
from tenantgate.config.schema import LIMIT_KEYS

_MAX_LISTED = 200
# refusals whose reason starts with one of these are limit hits (proxy/limits.py names them so)
_LIMIT_REASONS = frozenset({*LIMIT_KEYS, "rate_limit"})


@dataclass(frozen=True, slots=True)
class Integrity:
    ok: bool
    summary: str
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    signatures: int = 0
    instances: tuple[str, ...] = ()  # several instances' chains: one summary line each


def sources(config: Config) -> list[LogSource]:
    """The configured log in chain order (hot and archived segments); empty when auditing is off or
    nothing was written yet."""
    return configured_sources(config.audit) if config.audit is not None else []


def verify(config: Config) -> Integrity:
    """Verify the configured log with its key (and the signing key's public half when configured).
    A log its writer still holds (the file's flock, the table's advisory lock) is verified up to its
    last record and reported open; a crashed writer's or a cut tail fails; segments
    expired under [audit.retention] may be missing from the start."""
    settings = config.audit
    if settings is None:
        return Integrity(False, "auditing is off ([audit] missing or enabled = false)")
    try:
        key = load_hmac_key(settings.key)
        verifier = load_signing_key(settings.signing_key).verifier if settings.signing_key else None
        found = sources(config)
    except (AuditError, OSError) as exc:
        return Integrity(False, f"audit log cannot be read: {exc}")
    if not found:
        return Integrity(False, f"no audit log at {settings.path}")
    result = verify_log(found, hmac_key=key, verifier=verifier, allow_expired=settings.retention is not None)
    if result.problem is not None:
        return Integrity(False, result.status, result.records)
    summary = (f"{result.status} ({result.records} records)" if result.open_through is not None else
               f"verified: {result.records} records (seq {result.first_seq}..{result.last_seq})")
    return Integrity(True, summary, result.records, result.first_seq, result.last_seq, result.signatures_checked)


def instance_logs(config: Config, paths: Sequence[str] = ()) -> list[tuple[str, list[LogSource]]]:
    """Each instance's log when the records are kept in several chains (issue 19), else empty (the one
    configured chain): the PATHs given (files or folders, one per instance, as ``audit verify
    --per-instance`` takes them), or in a [cluster] whose [audit] path names ``{instance}``, every
    peer's log under it (instances that share a disk, or logs collected at that pattern)."""
    if paths:
        return [(path, open_sources([path])) for path in paths]
    settings, cluster = config.audit, config.cluster
    if settings is None or cluster is None or settings.sink != "file" or "{instance}" not in str(settings.path):
        return []
    out = []
    for name in cluster.peers:
        own = replace(settings, path=Path(str(settings.path).replace("{instance}", name)))
        out.append((str(own.path), configured_sources(own)))
    return out


def integrity(config: Config, paths: Sequence[str] = ()) -> Integrity:
    """The configured log verified (``verify``), or with several instances' logs each one on its own:
    all must verify, no log may mix instances and no two may claim one; the counts add up."""
    logs = instance_logs(config, paths)
    if not logs:
        return verify(config)
    settings = config.audit
    if settings is None:
        return Integrity(False, "auditing is off ([audit] missing or enabled = false)")
    try:
        key = load_hmac_key(settings.key)
    except (AuditError, OSError) as exc:
        return Integrity(False, f"audit key cannot be read: {exc}")
    missing = [path for path, found in logs if not found]
    expired_ok = settings.retention is not None
    results = verify_instances([(p, f) for p, f in logs if f], hmac_key=key, allow_expired=expired_ok)
    lines = tuple([one.summary() for one in results] + [f"no audit log at {path}" for path in missing])
    ok = not missing and all(one.result.ok for one in results)
    total = sum(one.result.records for one in results)
    summary = f"{'verified' if ok else 'FAILED'}: {len(logs)} instance logs, {total} records; " + "; ".join(lines)
    signatures = sum(one.result.signatures_checked for one in results)
    return Integrity(ok, summary, total, signatures=signatures, instances=lines)


def records(config: Config, paths: Sequence[str] = ()) -> Iterator[dict[str, object]]:
    """Every record of the log (of every instance's, see ``instance_logs``) and of its review log
    (`audit review` runs), as format 1 spells them: format 2's integer timestamps as ISO text and
    each statement's rewritten SQL put back."""
    found = [s for _path, logs in instance_logs(config, paths) for s in logs] or sources(config)
    if config.audit is not None and config.audit.sink == "file":
        reviews = review_log_path(config.audit.path)
        if reviews.exists():
            found += open_sources([str(reviews)])
    for rec in expand(rec for _raw, rec in iter_records(found) if rec is not None):
        ts = rec.get("ts")
        if isinstance(ts, int):
            rec["ts"] = ts_text(ts)
        yield rec


def statement_texts(config: Config) -> Iterator[str]:
    """The original SQL of every logged statement (advise looks for equality lookups in it)."""
    for rec in records(config):
        if rec.get("kind") == "statement" and isinstance(rec.get("sql"), str):
            yield str(rec["sql"])


@dataclass(slots=True)
class Activity:
    """Counts over event records of one tenant (None: all) in [since, until)."""

    tenant: str | None
    since: datetime | None
    until: datetime | None
    events: int = 0
    first: datetime | None = None
    last: datetime | None = None
    users: Counter[str] = field(default_factory=Counter)  # statements per user
    statement_kinds: Counter[str] = field(default_factory=Counter)
    encrypted_access: Counter[str] = field(default_factory=Counter)  # column -> statements
    encrypted_by_user: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (column, user, read|written)
    admin_actions: list[tuple[str, str, str, str]] = field(default_factory=list)  # ts, user, command, decision
    trusted_access: Counter[str] = field(default_factory=Counter)  # trusted user -> statements
    auth_failures: list[tuple[str, str, str, str]] = field(default_factory=list)  # ts, user, client, reason
    auth_failure_count: int = 0
    refusals: Counter[str] = field(default_factory=Counter)  # reason code -> count
    key_events: Counter[str] = field(default_factory=Counter)  # rotate, rewrap, shred, ...
    reloads: list[tuple[str, str, str]] = field(default_factory=list)  # ts, decision, digest change / notes
    limit_hits: Counter[str] = field(default_factory=Counter)
    reviews: list[str] = field(default_factory=list)  # ts of recorded log reviews
    checkpoints: int = 0  # signed checkpoint markers in the period (the whole log's, not one tenant's)
    daily: Counter[tuple[str, str]] = field(default_factory=Counter)  # (day, allowed|refused)
    writes_by_user: Counter[str] = field(default_factory=Counter)
    per_second_peak: Counter[str] = field(default_factory=Counter)  # tenant -> peak statements in one second

    @property
    def statements(self) -> int:
        return sum(self.statement_kinds.values())


_WRITES = frozenset({"insert", "update", "delete", "merge", "copy_from", "write"})


def _reason_code(reason: object) -> str:
    return str(reason or "(no reason)").split(":", 1)[0]


def _encrypted_names(config: Config) -> list[tuple[str, re.Pattern[str], re.Pattern[str]]]:
    if config.encryption is None:
        return []
    return [(f"{c.table}.{c.column}", re.compile(rf"\b{re.escape(c.table.rpartition('.')[2])}\b", re.I),
             re.compile(rf"\b{re.escape(c.column)}\b|\*", re.I)) for c in config.encryption.columns]


def _names(value: object) -> list[str]:
    return [str(c) for c in value] if isinstance(value, list) else []


def _encrypted_touched(rec: dict[str, object], encrypted: list[tuple[str, re.Pattern[str], re.Pattern[str]]]
                       ) -> tuple[list[str], list[str], list[str]]:
    """(accessed, read, written) encrypted columns of a statement record: what the proxy recorded it
    decrypted for the client or encrypted for the statement (proxy/auditing.py). Format 2 omits the
    field when there were none, and format 1 writes ``[]`` then; only a format-1 record without the
    field comes from a release that did not record it: for those alone the columns whose table and
    column (or *) the statement's text names are counted as accessed (an over-count at worst, never an
    under-count of a named reference), read and written unknown.

    >>> names = [("customers.ssn", re.compile("customers"), re.compile("ssn"))]
    >>> old = {"v": 1, "sql": "SELECT id FROM customers WHERE ssn IS NULL"}
    >>> _encrypted_touched(old, names), _encrypted_touched(dict(old, encrypted_columns=[]), names)
    ((['customers.ssn'], [], []), ([], [], []))
    >>> _encrypted_touched(dict(old, v=2), names)  # format 2 leaves the field out when there was none
    ([], [], [])
    >>> _encrypted_touched({"v": 2, "encrypted_columns": ["customers.ssn"],
    ...                     "details": {"encrypted_read": ["customers.ssn"]}}, names)
    (['customers.ssn'], ['customers.ssn'], [])
    """
    listed = rec.get("encrypted_columns")
    if isinstance(listed, list) or rec.get("v") != 1:
        details = rec.get("details")
        split = details if isinstance(details, dict) else {}
        return _names(listed), _names(split.get("encrypted_read")), _names(split.get("encrypted_written"))
    sql = str(rec.get("sql") or "")
    return [name for name, table, column in encrypted if table.search(sql) and column.search(sql)], [], []


def _within(rec: dict[str, object], since: datetime | None, until: datetime | None) -> bool:
    ts = parse_timestamp(str(rec.get("ts")))
    return (since is None or ts >= since) and (until is None or ts < until)


def summarize(recs: Iterable[dict[str, object]], config: Config, *, tenant: str | None = None,
              since: datetime | None = None, until: datetime | None = None) -> Activity:
    trusted = {u.name for u in config.users.values() if u.trusted}
    owner = {u.name: u.tenant for u in config.users.values()}
    encrypted = _encrypted_names(config)
    act = Activity(tenant, since, until)
    per_second: Counter[tuple[str, str]] = Counter()
    for rec in recs:
        kind = rec.get("kind")
        if kind == "checkpoint" and _within(rec, since, until):
            act.checkpoints += 1
        if kind not in EVENT_KINDS:
            continue
        user = str(rec.get("user") or "-")
        # a failed login has no tenant yet: it belongs to the tenant of the user it tried
        rec_tenant = rec.get("tenant") or (owner.get(user) if kind == "auth_fail" else None)
        is_trusted = rec_tenant is None and user in trusted
        # a tenant's pack holds its own records, trusted users' statements (they reach every tenant's rows),
        # admin actions and reloads (they change every tenant's rules) and key events of that tenant
        shared_kind = kind in ("admin", "reload") or (kind == "statement" and is_trusted)
        if tenant is not None and rec_tenant != tenant and not shared_kind:
            continue
        ts_text = str(rec.get("ts"))
        ts = parse_timestamp(ts_text)
        if not _within(rec, since, until):
            continue
        act.events += 1
        act.first = ts if act.first is None else min(act.first, ts)
        act.last = ts if act.last is None else max(act.last, ts)
        refused = rec.get("decision") == "refused" or kind in ("refusal", "auth_fail")
        act.daily[(ts_text[:10], "refused" if refused else "allowed")] += 1
        details = rec.get("details") if isinstance(rec.get("details"), dict) else {}
        assert isinstance(details, dict)
        if kind == "statement":
            if details.get("phase") == "start":
                continue  # strict mode's intent record: the end record counts the statement
            stmt = str(details.get("statement") or "unknown")
            if is_trusted:
                act.trusted_access[user] += 1
                if tenant is not None:
                    continue  # counted as trusted access, not as this tenant's own activity
            act.users[user] += 1
            act.statement_kinds[stmt] += 1
            if stmt in _WRITES:
                act.writes_by_user[user] += 1
            per_second[(str(rec_tenant or "-"), ts_text[:19])] += 1
            accessed, read, written = _encrypted_touched(rec, encrypted)
            for column in accessed:
                act.encrypted_access[column] += 1
            for how, columns in (("read", read), ("written", written)):
                for column in columns:
                    act.encrypted_by_user[(column, user, how)] += 1
        elif kind == "auth_fail":
            act.auth_failure_count += 1
            if len(act.auth_failures) < _MAX_LISTED:
                act.auth_failures.append((ts_text, user, str(rec.get("client") or "-"), str(rec.get("reason") or "-")))
        elif kind == "refusal":
            code = _reason_code(rec.get("reason"))
            act.refusals[code] += 1
            if code in _LIMIT_REASONS:
                act.limit_hits[code] += 1
        elif kind == "admin":
            command = str(rec.get("sql") or "-")
            if "review" in command.lower():
                act.reviews.append(ts_text)
            if len(act.admin_actions) < _MAX_LISTED:
                act.admin_actions.append((ts_text, user, command, str(rec.get("decision") or "-")))
        elif kind == "key_event":
            act.key_events[str(rec.get("reason") or "-")] += 1
        elif kind == "reload" and len(act.reloads) < _MAX_LISTED:
            change = (f"{details.get('digest_before', '?')} -> {details.get('digest_after', '?')}"
                      if "digest_after" in details else "; ".join(map(str, details.get("notes") or [])) or "-")
            act.reloads.append((ts_text, str(rec.get("decision") or "-"), change))
    for (who, _second), count in per_second.items():
        act.per_second_peak[who] = max(act.per_second_peak[who], count)
    return act
