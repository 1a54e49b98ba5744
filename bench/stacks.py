"""Collapsed stacks (py-spy ``--format raw``) summed into own time, cumulative time and buckets.

A line of the collapsed format is ``frame;frame;...;leaf count``, the root first, each frame
``function (file)`` or, with line numbers, ``function (file:line)``; line numbers are
dropped so that a function is one entry. py-spy adds a ``process PID:"cmdline"`` root
frame when it follows subprocesses; it is skipped.

Own time is counted for the leaf frame of each sample; cumulative time once per sample for
every function on its stack (so recursion does not count twice). A sample's bucket is that
of the innermost frame that belongs to one: library frames underneath (``hmac`` under the
audit, ``sqlglot`` under the rewriter's cache misses, a dataclass ``__init__``) count for
the tenantgate code that called them. With ``--native`` off, time in C (uvloop's socket
calls, OpenSSL) is charged to the innermost Python frame, that is the Python code that
called it, or the event loop's own frame when uvloop runs it between callbacks.

>>> sample = '''process 7:"python -m tenantgate.proxy.cli serve";<module> (proxy/cli.py:9);run (uvloop/__init__.py:82)\
;on_data (proxy/conn.py:120);Framer.feed (proxy/codec.py:181) 30
... <module> (proxy/cli.py:9);run (uvloop/__init__.py:82);on_data (proxy/conn.py:120);Session.client_frames \
(proxy/session.py:300);Planner.plan (rewriter/cache.py:50);parse_one (sqlglot/__init__.py:10) 10
... <module> (proxy/cli.py:9);run (uvloop/__init__.py:82);on_data (proxy/conn.py:120);Session.client_frames \
(proxy/session.py:300);AuditWriter.append (audit/writer.py:70);digest (hmac.py:200) 15
... <module> (proxy/cli.py:9);run (uvloop/__init__.py:82) 5
... '''
>>> profile = summarize(parse_collapsed(sample))
>>> profile.samples, dict(profile.buckets)
(60, {'codec/framing': 30, 'rewriter plan cache': 10, 'audit': 15, 'uvloop/transport': 5})
>>> [(f.function, n) for f, n in profile.own.most_common(2)]
[('Framer.feed', 30), ('digest', 15)]
>>> profile.cumulative[Frame("on_data", "proxy/conn.py")]
55
>>> bucket_of(Frame("Session.client_frames", "/site-packages/tenantgate/proxy/session.py"))
'session pipeline'
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

BUCKETS = ("codec/framing", "session pipeline", "rewriter plan cache", "audit", "metrics", "uvloop/transport",
           "other")
# (path fragment, bucket), first match wins; None: a frame that says nothing about where time goes
# (the entry point under every stack).
_RULES: tuple[tuple[str, str | None], ...] = (
    ("/proxy/cli.py", None),
    ("/proxy/codec.py", "codec/framing"),
    # The Protocol that moves bytes: its write() is the socket send, which on loopback runs the
    # receiver's TCP path too; framing itself is codec.Framer.
    ("/proxy/conn.py", "uvloop/transport"),
    ("/proxy/counters.py", "metrics"),
    ("/prometheus_client/", "metrics"),
    ("/proxy/auditing.py", "audit"),
    ("/audit/", "audit"),
    ("/rewriter/", "rewriter plan cache"),
    ("/sqlglot/", "rewriter plan cache"),
    ("/pglast/", "rewriter plan cache"),
    ("/proxy/", "session pipeline"),
    ("/uvloop/", "uvloop/transport"),
    ("/asyncio/", "uvloop/transport"),
    ("/selectors.py", "uvloop/transport"),
    ("/socket.py", "uvloop/transport"),
    ("/ssl.py", "uvloop/transport"),
)
_FRAME = re.compile(r"(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)")
_PROCESS = re.compile(r'process \d+:".*"')


@dataclass(frozen=True, order=True)
class Frame:
    function: str
    file: str

    def __str__(self) -> str:
        return f"{self.function} ({self.file})"


def parse_frame(text: str) -> Frame | None:
    """A frame of the collapsed format; None for py-spy's process frame.

    >>> parse_frame("Session.on_query (proxy/session.py:412)")
    Frame(function='Session.on_query', file='proxy/session.py')
    >>> parse_frame('process 12:"python -m x"') is None
    True
    """
    if _PROCESS.fullmatch(text):
        return None
    match = _FRAME.fullmatch(text)
    if match is None:
        return Frame(text, "")
    return Frame(match["function"], match["file"])


def parse_collapsed(text: str) -> list[tuple[tuple[Frame, ...], int]]:
    """(stack root first, sample count) per line; raises ValueError naming a malformed line."""
    stacks = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            raise ValueError(f"line {number} of the collapsed stacks has no sample count: {line[:120]!r}")
        # py-spy --idle writes samples with no Python frame as an empty stack: nothing to attribute.
        frames = tuple(f for f in (parse_frame(part) for part in stack.split(";") if part) if f is not None)
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def bucket_of(frame: Frame) -> str | None:
    """The bucket a frame's file belongs to, None for library and entry-point frames."""
    path = "/" + frame.file.replace("\\", "/").lstrip("/")
    for fragment, bucket in _RULES:
        if fragment in path:
            return bucket
    return None


def sample_bucket(stack: tuple[Frame, ...]) -> str:
    for frame in reversed(stack):
        bucket = bucket_of(frame)
        if bucket is not None:
            return bucket
    return "other"


@dataclass
class Profile:
    samples: int = 0
    own: Counter[Frame] = field(default_factory=Counter)
    cumulative: Counter[Frame] = field(default_factory=Counter)
    buckets: Counter[str] = field(default_factory=Counter)


def summarize(stacks: Iterable[tuple[tuple[Frame, ...], int]]) -> Profile:
    profile = Profile()
    for stack, count in stacks:
        profile.samples += count
        profile.own[stack[-1]] += count
        for frame in set(stack):
            profile.cumulative[frame] += count
        profile.buckets[sample_bucket(stack)] += count
    return profile


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}" if whole else "-"


def _top_table(counts: Counter[Frame], total: int, top: int, heading: str) -> list[str]:
    rows = [f"| # | function | file | samples | {heading} |", "|---:|---|---|---:|---:|"]
    for rank, (frame, count) in enumerate(counts.most_common(top), 1):
        name = frame.function.replace("|", "\\|")
        rows.append(f"| {rank} | `{name}` | {frame.file or '-'} | {count} | {_pct(count, total)} |")
    return rows


def markdown(profile: Profile, *, top: int = 25) -> str:
    """The buckets and the top-``top`` functions by own and by cumulative time, as markdown sections.

    >>> text = markdown(summarize(parse_collapsed("a (proxy/codec.py) 3\\nb (audit/writer.py) 1")))
    >>> "| codec/framing | 3 | 75.0 |" in text and "| 1 | `a` | proxy/codec.py | 3 | 75.0 |" in text
    True
    """
    total = profile.samples
    lines = ["## Buckets", "",
             "Each sample counts for the innermost frame that belongs to a bucket (library code counts for "
             "its tenantgate caller).", "", "| bucket | samples | % |", "|---|---:|---:|"]
    lines += [f"| {b} | {profile.buckets[b]} | {_pct(profile.buckets[b], total)} |" for b in BUCKETS]
    lines += ["", f"## Top {top} functions by own time", ""]
    lines += _top_table(profile.own, total, top, "% own")
    lines += ["", f"## Top {top} functions by cumulative time", ""]
    lines += _top_table(profile.cumulative, total, top, "% cumulative")
    return "\n".join(lines) + "\n"
