"""Client encodings: the backend must parse exactly the characters the proxy parsed.

PostgreSQL converts a statement from the session's ``client_encoding`` to the server encoding
before it lexes it, splitting the bytes into characters with the encoding's ``mblen`` rule
(src/common/wchar.c). In SJIS, BIG5, GBK, UHC, GB18030 and JOHAB the second byte of a character
may be an ASCII byte (``\\``, ``'`` ...), so decoding those bytes any other way moves where a
literal ends. Every client text the proxy interprets is therefore decoded here, in the
session's encoding, split exactly as PostgreSQL splits it; what the proxy sends is encoded
back and checked the same way. Any byte sequence on which Python's codec and PostgreSQL's split
could disagree is refused (:class:`EncodingError`), never guessed at.

>>> enc = client_encoding("Shift-JIS")
>>> enc.name
'SJIS'
>>> enc.decode(b"SELECT '\\x95\\\\'")  # 0x95 0x5C is one character, the quote closes the literal
"SELECT '\\u8868'"
>>> enc.decode(b"SELECT '\\x95")
Traceback (most recent call last):
...
proxy.encoding.EncodingError: invalid byte sequence for encoding "SJIS": 0x95
>>> client_encoding("mule_internal")
Traceback (most recent call last):
...
proxy.encoding.EncodingError: client_encoding "mule_internal" is not supported by tenantgate
>>> client_encoding("latin1").encode("café")
b'caf\\xe9'
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable

from tenantgate.keyring.errors import SqlStateError

# PostgreSQL's encoding name -> Python codec (None: no codec that splits and maps as PostgreSQL does).
_CODECS: dict[str, str | None] = {
    "UTF8": "utf-8",
    "SQL_ASCII": "ascii",  # PostgreSQL passes high bytes through unconverted: refuse them
    "EUC_JP": "euc_jp", "EUC_CN": "gb2312", "EUC_KR": "euc_kr", "EUC_JIS_2004": "euc_jis_2004",
    "EUC_TW": None, "MULE_INTERNAL": None,
    "SJIS": "cp932", "SHIFT_JIS_2004": "shift_jis_2004", "BIG5": "cp950", "GBK": "gbk", "UHC": "cp949",
    "GB18030": "gb18030", "JOHAB": "johab",
    "LATIN1": "latin_1", "LATIN2": "iso8859_2", "LATIN3": "iso8859_3", "LATIN4": "iso8859_4",
    "LATIN5": "iso8859_9", "LATIN6": "iso8859_10", "LATIN7": "iso8859_13", "LATIN8": "iso8859_14",
    "LATIN9": "iso8859_15", "LATIN10": "iso8859_16",
    "ISO_8859_5": "iso8859_5", "ISO_8859_6": "iso8859_6", "ISO_8859_7": "iso8859_7", "ISO_8859_8": "iso8859_8",
    "WIN866": "cp866", "WIN874": "cp874", "WIN1250": "cp1250", "WIN1251": "cp1251", "WIN1252": "cp1252",
    "WIN1253": "cp1253", "WIN1254": "cp1254", "WIN1255": "cp1255", "WIN1256": "cp1256", "WIN1257": "cp1257",
    "WIN1258": "cp1258", "KOI8R": "koi8_r", "KOI8U": "koi8_u",
}

# Aliases PostgreSQL accepts (src/common/encnames.c), after clean_encoding_name().
_ALIASES = {
    "abc": "WIN1258", "alt": "WIN866", "iso88591": "LATIN1", "iso88592": "LATIN2", "iso88593": "LATIN3",
    "iso88594": "LATIN4", "iso88599": "LATIN5", "iso885910": "LATIN6", "iso885913": "LATIN7",
    "iso885914": "LATIN8", "iso885915": "LATIN9", "iso885916": "LATIN10", "iso88595": "ISO_8859_5",
    "iso88596": "ISO_8859_6", "iso88597": "ISO_8859_7", "iso88598": "ISO_8859_8", "koi8": "KOI8R",
    "mskanji": "SJIS", "shiftjis": "SJIS", "tcvn": "WIN1258", "tcvn5712": "WIN1258", "unicode": "UTF8",
    "vscii": "WIN1258", "win": "WIN1251", "win932": "SJIS", "win936": "GBK", "win949": "UHC",
    "win950": "BIG5", "windows932": "SJIS", "windows936": "GBK", "windows949": "UHC", "windows950": "BIG5",
}
_ALIASES.update({re.sub(r"[^a-z0-9]", "", n.lower()): n for n in _CODECS})
_ALIASES.update({"windows" + n[3:]: n for n in _CODECS if n.startswith("WIN") and n[3:].isdigit()})


def canonical_name(name: str) -> str | None:
    """PostgreSQL's own name for an encoding name or alias (pg_char_to_encoding), or None.

    >>> canonical_name("utf-8"), canonical_name("Windows-1252"), canonical_name("ISO_8859_1"), canonical_name("x")
    ('UTF8', 'WIN1252', 'LATIN1', None)
    """
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()))


# PostgreSQL's mblen rules (src/common/wchar.c): the length of the character a lead byte starts.
def _euc_mblen(b: int, _next: int) -> int:
    return 2 if b == 0x8E else 3 if b == 0x8F else 2 if b & 0x80 else 1


def _sjis_mblen(b: int, _next: int) -> int:
    return 1 if 0xA1 <= b <= 0xDF else 2 if b & 0x80 else 1


def _double_mblen(b: int, _next: int) -> int:  # EUC_CN, BIG5, GBK, UHC
    return 2 if b & 0x80 else 1


def _gb18030_mblen(b: int, nxt: int) -> int:
    if not b & 0x80:
        return 1
    return 4 if 0x30 <= nxt <= 0x39 else 2


_MBLEN: dict[str, Callable[[int, int], int]] = {
    "EUC_JP": _euc_mblen, "EUC_JIS_2004": _euc_mblen, "EUC_KR": _euc_mblen, "JOHAB": _euc_mblen,
    "EUC_CN": _double_mblen, "BIG5": _double_mblen, "GBK": _double_mblen, "UHC": _double_mblen,
    "SJIS": _sjis_mblen, "SHIFT_JIS_2004": _sjis_mblen, "GB18030": _gb18030_mblen,
}


class EncodingError(SqlStateError, ValueError):
    """Bytes that do not split into characters exactly as PostgreSQL would split them, or text
    the session's encoding cannot represent (SQLSTATE 22021)."""

    def __init__(self, message: str) -> None:
        super().__init__("22021", message, "encoding")


def _single_byte_faithful(codec: str) -> bool:
    """Every byte is one character, and a byte is ASCII exactly when its character is."""
    for b in range(256):
        try:
            c = bytes([b]).decode(codec)
        except UnicodeDecodeError:
            continue  # PostgreSQL rejects or maps it; the proxy refuses it
        if len(c) != 1 or (c != chr(b) if b < 0x80 else c.isascii()):
            return False
    return True


class ClientEncoding:
    """One PostgreSQL client encoding: decode what a client sent, encode what the proxy sends."""

    __slots__ = ("codec", "mblen", "name")

    def __init__(self, name: str, codec: str) -> None:
        self.name = name
        self.codec = codec
        self.mblen = _MBLEN.get(name)  # None: UTF-8 or a single-byte encoding, split as Python splits

    def __repr__(self) -> str:
        return f"ClientEncoding({self.name})"

    def decode(self, raw: bytes) -> str:
        """The characters PostgreSQL sees in ``raw``, or EncodingError."""
        if raw.isascii():
            return raw.decode("ascii")
        mblen = self.mblen
        if mblen is None:
            try:
                return raw.decode(self.codec)
            except UnicodeDecodeError as exc:
                raise self._invalid(raw[exc.start : exc.start + 4]) from None
        out: list[str] = []
        i, n = 0, len(raw)
        while i < n:
            b = raw[i]
            if b < 0x80:
                out.append(chr(b))
                i += 1
                continue
            size = mblen(b, raw[i + 1] if i + 1 < n else 0)
            chunk = raw[i : i + size]
            try:
                char = chunk.decode(self.codec) if len(chunk) == size else ""
            except UnicodeDecodeError:
                char = ""
            if len(char) != 1 or char.isascii():  # PostgreSQL's character is not exactly one of Python's
                raise self._invalid(chunk)
            out.append(char)
            i += size
        return "".join(out)

    def encode(self, text: str) -> bytes:
        """``text`` in this encoding, proven to split back into exactly ``text``; else EncodingError."""
        if text.isascii():
            return text.encode("ascii")
        try:
            raw = text.encode(self.codec)
        except UnicodeEncodeError as exc:
            raise EncodingError(
                f'character {text[exc.start]!a} has no equivalent in encoding "{self.name}"'
            ) from None
        if self.mblen is not None and self.decode(raw) != text:
            raise EncodingError(f'text does not round-trip through encoding "{self.name}"')
        return raw

    def _invalid(self, chunk: bytes) -> EncodingError:
        shown = " ".join(f"0x{b:02x}" for b in chunk)
        return EncodingError(f'invalid byte sequence for encoding "{self.name}": {shown}')


UTF8 = ClientEncoding("UTF8", "utf-8")
_SUPPORTED: dict[str, ClientEncoding] = {}
for _name, _codec in _CODECS.items():
    if _codec is None:
        continue
    codecs.lookup(_codec)
    if _name not in _MBLEN and _name != "UTF8" and not _single_byte_faithful(_codec):
        continue  # not provably ASCII-transparent: refused like MULE_INTERNAL
    _SUPPORTED[_name] = UTF8 if _name == "UTF8" else ClientEncoding(_name, _codec)


def client_encoding(name: str) -> ClientEncoding:
    """The encoding a client asked for (any PostgreSQL spelling), or EncodingError if unsupported."""
    canonical = canonical_name(name)
    enc = _SUPPORTED.get(canonical) if canonical is not None else None
    if enc is None:
        raise EncodingError(f'client_encoding "{name}" is not supported by tenantgate')
    return enc
