"""Reading stored logs back: JSON Lines files (in chain order) or a PostgreSQL table."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from zstandard import ZstdError

from .errors import AuditUnavailable
from .lean import PLAN_KIND, fill_template
from .pgarchive import PgArchive
from .pgsink import WRITER_HOLDER_SQL, lock_args, quote_table
from .segments import ZST, open_lines, rotated_files, stream_lines, writer_alive


@dataclass(frozen=True, slots=True)
class RawLine:
    source: str
    line_no: int
    data: bytes  # includes the trailing newline unless the line is torn


class _Lines:
    name: str

    def data(self) -> Iterator[bytes]:
        raise NotImplementedError

    def lines(self) -> Iterator[RawLine]:
        for no, data in enumerate(self.data(), 1):
            yield RawLine(self.name, no, data)


class FileSource(_Lines):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    def first_seq(self) -> int:
        """Order key: the first record's seq (-1 when unreadable, so verify reports it first)."""
        try:
            return int(json.loads(next(open_lines(self.path)))["seq"])
        except (OSError, ValueError, KeyError, TypeError, StopIteration, ZstdError):
            return -1

    def data(self) -> Iterator[bytes]:
        """The stored lines (line n is the n-th item)."""
        return open_lines(self.path)

    def writer_alive(self) -> bool:
        """A writer holds this (active) file's lock; a rotated or archived segment has none."""
        return writer_alive(self.path)


class PostgresSource(_Lines):
    """Rows of a PostgreSQL sink table in seq order, fetched in pages over one connection."""

    def __init__(self, dsn: str, table: str = "tenantgate_audit", page: int = 5000) -> None:
        self._dsn = dsn
        self._table = table
        self._page = page
        self.name = f"postgres table {table}"
        self._holders: set[int] = set()  # backend pids seen holding the writer lock while reading

    def first_seq(self) -> int:
        return 0

    def data(self) -> Iterator[bytes]:
        import asyncpg  # lazy for start-up time: `tenantgate audit verify` of a file never needs it

        loop = asyncio.new_event_loop()
        try:
            conn = loop.run_until_complete(asyncpg.connect(self._dsn))
            try:
                # Before the first page and after the last: a writer that closed while we read was
                # alive when the rows we hold were its tail; one that started meanwhile is one too.
                holders = conn.fetch(WRITER_HOLDER_SQL, *lock_args(self._table))
                self._holders = {row["pid"] for row in loop.run_until_complete(holders)}
                last = -1
                query = (f"SELECT seq, record FROM {quote_table(self._table)} WHERE seq > $1 "
                         "ORDER BY seq LIMIT $2")
                while True:
                    rows = loop.run_until_complete(conn.fetch(query, last, self._page))
                    if not rows:
                        holders = conn.fetch(WRITER_HOLDER_SQL, *lock_args(self._table))
                        self._holders |= {row["pid"] for row in loop.run_until_complete(holders)}
                        return
                    for row in rows:
                        yield row["record"].encode("utf-8") + b"\n"
                    last = rows[-1]["seq"]
            finally:
                loop.run_until_complete(conn.close())
        finally:
            loop.close()


    def writer_alive(self) -> bool:
        """A writer's connection held the table's advisory lock while the rows were read (see
        pgsink.py): its chain is open, not cut. A crashed writer's connection, and so its lock, is
        gone. Meaningful after data() was read to its end."""
        return bool(self._holders)


class ArchivedSegment(_Lines):
    """One segment shipped to a PostgreSQL archive (pgarchive.py), read back from the server."""

    def __init__(self, archive: PgArchive, segment: str, first: int) -> None:
        self._archive = archive
        self.segment = segment
        self._first = first
        self.name = f"{archive.name} segment {segment}"

    def first_seq(self) -> int:
        return self._first

    def data(self) -> Iterator[bytes]:
        """Fetched when first read (a generator: a failure is named where verify reads it)."""
        try:
            stored = self._archive.data(self.segment)
        except AuditUnavailable as exc:
            raise OSError(str(exc)) from exc
        if stored is None:
            raise OSError(f"{self.name}: no data (expired or never shipped)")
        yield from stream_lines(io.BytesIO(stored), self.segment.endswith(ZST))

    def writer_alive(self) -> bool:
        return False  # a shipped segment is closed


LogSource = FileSource | PostgresSource | ArchivedSegment


def open_sources(specs: Sequence[str], table: str = "tenantgate_audit") -> list[LogSource]:
    """PATH arguments -> sources in chain order. A directory means its *.jsonl files; a
    postgresql:// URI means the sink table."""
    sources: list[LogSource] = []
    files: list[FileSource] = []
    for spec in specs:
        if spec.startswith(("postgresql://", "postgres://")):
            sources.append(PostgresSource(spec, table))
            continue
        path = Path(spec)
        if path.is_dir():
            plain = {p.name for p in path.glob("*.jsonl")}
            files.extend(FileSource(p) for p in sorted(path.glob("*.jsonl")))
            # a compressed segment whose plain file is still there is the same segment
            files.extend(FileSource(p) for p in sorted(path.glob("*.jsonl" + ZST)) if p.name[:-len(ZST)] not in plain)
        elif path.is_file():
            files.append(FileSource(path))
        else:
            raise FileNotFoundError(f"{spec}: no such audit log file or directory")
    # The same segment given twice (hot and archived copy): the first one given stands.
    unique: dict[str, FileSource] = {}
    for f in files:
        unique.setdefault(f.path.name.removesuffix(ZST), f)
    return sources + sorted(unique.values(), key=lambda f: (f.first_seq(), f.name))


def configured_files(active: Path) -> list[str]:
    """The rotated files of a configured log path followed by the active file."""
    names = [str(p) for p in rotated_files(active)]
    if active.exists():
        names.append(str(active))
    return names


def expand(records: Iterable[dict[str, object]]) -> Iterator[dict[str, object]]:
    """Records as a reader wants them: format 2's `plan` records consumed and each statement's
    `rewritten` SQL put back from the plan it names (a digest names the same SQL everywhere), a
    template's filled with the statement's `literals`.

    >>> list(expand([{"kind": "plan", "details": {"digest": "d", "sql": "S"}}, {"kind": "statement", "plan": "d"}]))
    [{'kind': 'statement', 'plan': 'd', 'rewritten': 'S'}]
    >>> list(expand([{"kind": "plan", "details": {"digest": "t", "template": ["a = ", ""]}},
    ...              {"kind": "statement", "plan": "t", "literals": ["1"]}]))
    [{'kind': 'statement', 'plan': 't', 'rewritten': 'a = 1'}]
    """
    plans: dict[str, str | list[str]] = {}
    for rec in records:
        if rec.get("kind") == PLAN_KIND:
            details = rec.get("details")
            if isinstance(details, dict):
                template = details.get("template")
                plans[str(details.get("digest"))] = template if isinstance(template, list) else str(details.get("sql"))
            continue
        digest = rec.get("plan")
        if isinstance(digest, str) and digest in plans:
            plan = plans[digest]
            if isinstance(plan, str):
                rec["rewritten"] = plan
            else:
                literals = rec.pop("literals", None)
                if isinstance(literals, list) and len(literals) == len(plan) - 1:
                    rec["rewritten"] = fill_template(plan, [str(v) for v in literals])
        yield rec


def iter_records(sources: Sequence[LogSource]) -> Iterator[tuple[RawLine, dict[str, object] | None]]:
    """Each line with its parsed record (None when unreadable): for report and tail, not for verify."""
    for source in sources:
        for raw in source.lines():
            try:
                rec = orjson.loads(raw.data)
            except orjson.JSONDecodeError:
                rec = None
            yield raw, rec if isinstance(rec, dict) else None
