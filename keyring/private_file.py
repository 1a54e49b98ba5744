"""Private files written whole or not at all: key backups, deletion certificates, state files.

A file that holds key material, tenant data or proof of deletion is created mode 0600 from the
start (no moment where another user could read it), fsynced, then renamed over the old one, so
a crash leaves the old file or the new one, never half of either.

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as d:
...     p = pathlib.Path(d) / "doc.json"
...     write_private_json(p, {"b": 1, "a": 2})
...     print(p.read_text(), oct(p.stat().st_mode & 0o777))
{
 "b": 1,
 "a": 2
} 0o600
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_private_json", "write_private", "write_private_json"]


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_private_json(path: Path, doc: Any, indent: int = 1) -> None:
    """``doc`` as indented JSON (keys in their order), written as write_private does."""
    write_private(path, json.dumps(doc, indent=indent).encode())


def read_private_json(path: Path, fmt: str, what: str, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in ``path`` whose ``format`` is ``fmt``; ``error`` naming the file and ``what``
    it should be when it cannot be read or is something else.

    >>> read_private_json(Path("/nonexistent"), "x/1", "key backup", ValueError)
    Traceback (most recent call last):
    ...
    ValueError: /nonexistent: cannot read key backup: [Errno 2] No such file or directory: '/nonexistent'
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{path}: not a {what} (format {fmt!r} expected)")
    return doc
