"""The export archive: its format, the rows' codec and digests, and the offline verifier.

An archive is a gzip'd tar holding ``manifest.json`` and one ``data/<schema>.<table>.copy`` per
scoped table: the tenant's rows in PostgreSQL's COPY text format (tab-separated, ``\\N`` for
NULL, backslash escapes), columns as the manifest lists them. Encrypted columns hold either the
stored ciphertext (``mode = "backup"``; the tenant's wrapped DEKs are in the manifest, so the
KEK opens them) or the decrypted plaintext (``mode = "portable"``, GDPR art. 20). The manifest
is signed with the audit signing key (lifecycle.sign) and gives per table the row count, the
file's SHA-256 and a logical digest: an order-independent digest of the rows *as the tenant sees
them* (plaintext, tenant column left out), which a restore recomputes from the rows it loaded
before switching, whatever tenant name and DEK they end up under.

>>> unescape(escape(b"a\\tb\\\\c\\nd")) == b"a\\tb\\\\c\\nd", escape(b"x\\ty")
(True, b'x\\\\ty')
>>> bytea_field(b"\\x01\\xff"), from_bytea_field(b"\\\\\\\\x01ff")
(b'\\\\\\\\x01ff', b'\\x01\\xff')
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from tenantgate.audit.keys import Verifier

from .lifecycle import LifecycleError, verify_signature

__all__ = [
    "FORMAT",
    "Digest",
    "bytea_field",
    "escape",
    "from_bytea_field",
    "member_name",
    "open_archive",
    "read_manifest",
    "unescape",
    "verify_export",
]

FORMAT = "tenantgate-export/1"
NULL = b"\\N"
_ESCAPES = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r", b"\b": b"\\b", b"\f": b"\\f", b"\v": b"\\v"}
_UNESCAPES = {v[1:2]: k for k, v in _ESCAPES.items()}


def escape(value: bytes) -> bytes:
    """A value as one COPY text field."""
    out = value.replace(b"\\", b"\\\\")
    for raw, esc in _ESCAPES.items():
        if raw != b"\\":
            out = out.replace(raw, esc)
    return out


def unescape(field: bytes) -> bytes:
    """The value of one COPY text field (the escapes COPY TO writes)."""
    if b"\\" not in field:
        return field
    out = bytearray()
    i = 0
    while i < len(field):
        c = field[i : i + 1]
        if c == b"\\" and i + 1 < len(field):
            out += _UNESCAPES.get(field[i + 1 : i + 2], field[i + 1 : i + 2])
            i += 2
        else:
            out += c
            i += 1
    return bytes(out)


def bytea_field(value: bytes) -> bytes:
    """A bytea value as COPY text writes it with bytea_output = hex (its backslash escaped)."""
    return b"\\\\x" + value.hex().encode()


def from_bytea_field(field: bytes) -> bytes:
    if not field.startswith(b"\\\\x"):
        raise LifecycleError("an encrypted column holds a value that is not hex bytea")
    return bytes.fromhex(field[3:].decode())


class Digest:
    """Order-independent digest of rows: two 64-bit sums of each row's SHA-256, and the count."""

    def __init__(self) -> None:
        self.count = 0
        self._a = 0
        self._b = 0

    def add(self, fields: list[bytes]) -> None:
        h = hashlib.sha256(b"\t".join(fields)).digest()
        self._a = (self._a + int.from_bytes(h[:8])) % (1 << 64)
        self._b = (self._b + int.from_bytes(h[8:16])) % (1 << 64)
        self.count += 1

    def __str__(self) -> str:
        return f"{self.count}-{self._a:016x}{self._b:016x}"


def member_name(relation: str) -> str:
    return f"data/{relation}.copy"


def read_manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    try:
        member = tar.extractfile("manifest.json")
        assert member is not None
        doc = json.loads(member.read())
    except (KeyError, AssertionError, ValueError) as exc:
        raise LifecycleError(f"no readable manifest.json in the archive ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LifecycleError(f"not a tenantgate export (format {FORMAT!r} expected)")
    return doc


@dataclass
class Archive:
    tar: tarfile.TarFile
    manifest: dict[str, Any]
    sha256: str  # of the signed manifest

    def rows(self, table: dict[str, Any]) -> Iterator[bytes]:
        """The table's lines (without their newline), streamed."""
        member: IO[bytes] | None = self.tar.extractfile(table["file"])
        if member is None:
            raise LifecycleError(f"{table['file']}: missing from the archive")
        for line in member:
            yield line.rstrip(b"\n")


def open_archive(path: pathlib.Path, verifier: Verifier) -> Archive:
    """Open an export after checking its signature and every file's SHA-256 and row count."""
    try:
        tar = tarfile.open(path, "r:gz")  # noqa: SIM115 (the Archive owns it; open_archive's caller closes it)
        try:
            return _checked(tar, verifier)
        except BaseException:
            tar.close()
            raise
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        # a damaged file can fail anywhere in the gzip stream or the tar headers, not only at open
        raise LifecycleError(f"{path}: not a readable export archive ({exc})") from None


def _checked(tar: tarfile.TarFile, verifier: Verifier) -> Archive:
    manifest = read_manifest(tar)
    sha = verify_signature(manifest, verifier)
    expected = {"manifest.json"} | {t["file"] for t in manifest["tables"]}
    names = set(tar.getnames())
    if names != expected:
        raise LifecycleError(f"archive members differ from the manifest: {sorted(names ^ expected)}")
    archive = Archive(tar, manifest, sha)
    for table in manifest["tables"]:
        member = tar.extractfile(table["file"])
        assert member is not None
        h = hashlib.sha256()
        lines = 0
        for chunk in iter(lambda m=member: m.read(1 << 20), b""):  # type: ignore[misc]
            h.update(chunk)
            lines += chunk.count(b"\n")
        if h.hexdigest() != table["sha256"] or lines != table["rows"]:
            raise LifecycleError(f"{table['file']}: content differs from the signed manifest")
    return archive


def verify_export(path: pathlib.Path, verifier: Verifier) -> dict[str, Any]:
    """Check an export offline; its manifest when sound, LifecycleError saying what is not."""
    archive = open_archive(path, verifier)
    archive.tar.close()
    return archive.manifest
