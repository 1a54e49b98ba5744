"""Keyring core without a database: format vectors, AAD binding, modes, KEKs, rotation, shredding."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.keyring import (
    AesKwKek,
    DecryptError,
    FileKeyStore,
    KekError,
    KekProvider,
    Keyring,
    KeysNotLoadedError,
    KeyStoreError,
    Mode,
    ShreddedError,
    provider_from_uri,
)
from tenantgate.keyring.format import DataKey, decrypt_value, encrypt_value, parse_header
from tenantgate.keyring.kek import create_kek_file, load_file_kek
from tenantgate.keyring.vectors import load as load_vectors


class Events(list[tuple[str, dict[str, Any]]]):
    def __call__(self, kind: str, **fields: Any) -> None:
        self.append((kind, fields))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kek() -> AesKwKek:
    return AesKwKek(os.urandom(32))


@pytest.fixture
def ring(tmp_path: Path, kek: AesKwKek) -> Iterator[Keyring]:
    store = FileKeyStore(tmp_path / "keys.json")
    keyring = Keyring(kek, store, on_event=Events(), clock=Clock())
    asyncio.run(store.initialize())
    for tenant in ("acme", "globex"):
        asyncio.run(keyring.ensure_loaded(tenant))
    yield keyring


# -- known-answer vectors ---------------------------------------------------------------------------


def test_vectors_decrypt_and_reencrypt_byte_for_byte() -> None:
    vectors = load_vectors()["ciphertexts"]
    assert {v["mode"] for v in vectors} == {"randomized", "deterministic"}
    for v in vectors:
        key = DataKey(v["version"], bytes.fromhex(v["dek"]))
        ciphertext = bytes.fromhex(v["ciphertext"])
        assert decrypt_value(key, v["tenant"], v["table"], v["column"], ciphertext) == bytes.fromhex(v["plaintext"])
        nonce = bytes.fromhex(v["nonce"]) if v["nonce"] else None
        again = encrypt_value(
            key, Mode(v["mode"]), v["tenant"], v["table"], v["column"], bytes.fromhex(v["plaintext"]), nonce=nonce
        )
        assert again == ciphertext
        assert parse_header(ciphertext) == (Mode(v["mode"]), v["version"])


def _documented_aad(header: bytes, *names: str) -> bytes:
    return header + b"".join(len(n.encode()).to_bytes(2, "big") + n.encode() for n in names)


def test_vectors_match_the_documented_construction() -> None:
    """Rebuild each vector straight from the format docstring with raw primitives."""
    for v in load_vectors()["ciphertexts"]:
        dek, ct = bytes.fromhex(v["dek"]), bytes.fromhex(v["ciphertext"])
        header = bytes([0xE1, 1 if v["mode"] == "randomized" else 2]) + v["version"].to_bytes(4, "big")
        aad = _documented_aad(header, v["tenant"], v["table"], v["column"])
        assert ct[:6] == header
        if v["mode"] == "randomized":
            key = HKDF(hashes.SHA256(), 32, None, b"tenantgate/v1/aes-256-gcm").derive(dek)
            plain = AESGCM(key).decrypt(ct[6:18], ct[18:], aad)
        else:
            key = HKDF(hashes.SHA256(), 64, None, b"tenantgate/v1/aes-256-siv").derive(dek)
            plain = AESSIV(key).decrypt(ct[6:], [aad])
        assert plain == bytes.fromhex(v["plaintext"])


def test_kek_wrap_vectors() -> None:
    for v in load_vectors()["kek_wrap"]:
        kek = AesKwKek(bytes.fromhex(v["kek"]))
        assert kek.wrap(bytes.fromhex(v["dek"])).hex() == v["wrapped"]
        assert kek.unwrap(bytes.fromhex(v["wrapped"])).hex() == v["dek"]


# -- binding, modes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(Mode))
def test_ciphertext_is_bound_to_tenant_table_and_column(ring: Keyring, mode: Mode) -> None:
    ct = ring.encrypt("acme", "customers", "ssn", mode, b"123-45-6789")
    assert ring.decrypt("acme", "customers", "ssn", ct) == b"123-45-6789"
    elsewhere = (("globex", "customers", "ssn"), ("acme", "orders", "ssn"), ("acme", "customers", "email"))
    for tenant, table, column in elsewhere:
        with pytest.raises(DecryptError) as caught:
            ring.decrypt(tenant, table, column, ct)
        assert caught.value.reason in ("tampered", "unknown_version")
        assert "123-45-6789" not in str(caught.value)


def test_a_tampered_header_or_body_fails(ring: Keyring) -> None:
    ct = bytearray(ring.encrypt("acme", "t", "c", Mode.RANDOMIZED, b"secret value"))
    for i in range(len(ct)):
        bad = bytearray(ct)
        bad[i] ^= 0x01
        with pytest.raises(DecryptError):
            ring.decrypt("acme", "t", "c", bytes(bad))
    with pytest.raises(DecryptError):
        ring.decrypt("acme", "t", "c", bytes(ct[:-1]))


def test_deterministic_equality(ring: Keyring) -> None:
    a1 = ring.encrypt("acme", "customers", "ssn", "deterministic", b"42")
    assert a1 == ring.encrypt("acme", "customers", "ssn", Mode.DETERMINISTIC, b"42")
    assert a1 != ring.encrypt("acme", "customers", "ssn", Mode.DETERMINISTIC, b"43")
    assert a1 != ring.encrypt("globex", "customers", "ssn", Mode.DETERMINISTIC, b"42")
    assert a1 != ring.encrypt("acme", "customers", "tax_id", Mode.DETERMINISTIC, b"42")
    assert a1 != ring.encrypt("acme", "people", "ssn", Mode.DETERMINISTIC, b"42")
    r1 = ring.encrypt("acme", "customers", "ssn", Mode.RANDOMIZED, b"42")
    assert r1 != ring.encrypt("acme", "customers", "ssn", Mode.RANDOMIZED, b"42")
    assert len(r1) == 34 + 2 and len(a1) == 22 + 2


def test_empty_plaintext_both_modes(ring: Keyring) -> None:
    for mode in Mode:
        assert ring.decrypt("acme", "t", "c", ring.encrypt("acme", "t", "c", mode, b"")) == b""


@pytest.fixture(scope="module")
def static_ring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    """One loaded keyring shared by the hypothesis examples (key version 1 of tenant acme)."""
    store = FileKeyStore(tmp_path_factory.mktemp("static") / "keys.json")
    keyring = Keyring(AesKwKek(os.urandom(32)), store, cache_ttl=86400)
    asyncio.run(store.initialize())
    asyncio.run(keyring.ensure_loaded("acme"))
    return keyring


HEADERS = [b"", b"\xe1\x01\x00\x00\x00\x01", b"\xe1\x02\x00\x00\x00\x01", b"\xe1\x01\x00\x00\x00\x07"]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80), prefix=st.sampled_from(HEADERS))
def test_arbitrary_bytes_only_raise_decrypt_error(static_ring: Keyring, data: bytes, prefix: bytes) -> None:
    with pytest.raises(DecryptError):
        static_ring.decrypt("acme", "t", "c", prefix + data)


# -- cache, rotation, rewrap, shred -----------------------------------------------------------------


def test_cache_ttl_expires_and_fails_closed(ring: Keyring) -> None:
    clock = ring._clock
    assert isinstance(clock, Clock)
    ct = ring.encrypt("acme", "t", "c", Mode.RANDOMIZED, b"x")
    clock.now += ring.cache_ttl
    with pytest.raises(KeysNotLoadedError):
        ring.encrypt("acme", "t", "c", Mode.RANDOMIZED, b"x")
    with pytest.raises(DecryptError) as caught:
        ring.decrypt("acme", "t", "c", ct)
    assert caught.value.reason == "not_loaded"
    asyncio.run(ring.ensure_loaded("acme"))
    assert ring.decrypt("acme", "t", "c", ct) == b"x"


def test_unloaded_tenant_is_refused(ring: Keyring) -> None:
    with pytest.raises(KeysNotLoadedError):
        ring.encrypt("initech", "t", "c", Mode.RANDOMIZED, b"x")


def test_rotation_keeps_old_versions_readable(ring: Keyring) -> None:
    old = ring.encrypt("acme", "t", "c", Mode.DETERMINISTIC, b"v")
    assert asyncio.run(ring.rotate("acme")) == 2
    new = ring.encrypt("acme", "t", "c", Mode.DETERMINISTIC, b"v")
    assert parse_header(new)[1] == 2 and parse_header(old)[1] == 1
    assert ring.decrypt("acme", "t", "c", old) == ring.decrypt("acme", "t", "c", new) == b"v"
    assert ring.current_version("globex") == 1
    # Another process that loaded before the rotation sees an unknown version until it reloads.
    other = Keyring(ring._kek, ring.store, clock=Clock())
    asyncio.run(other.ensure_loaded("acme"))
    assert other.decrypt("acme", "t", "c", new) == b"v"
    assert ("key.rotated", {"tenant": "acme", "version": 2, "kek_id": ring.kek_id}) in ring._on_event  # type: ignore[operator]


def test_unknown_version_reason(ring: Keyring) -> None:
    foreign = encrypt_value(DataKey(9, os.urandom(32)), Mode.RANDOMIZED, "acme", "t", "c", b"x")
    with pytest.raises(DecryptError) as caught:
        ring.decrypt("acme", "t", "c", foreign)
    assert caught.value.reason == "unknown_version"


def test_rewrap_moves_every_key_to_the_new_kek(ring: Keyring, kek: AesKwKek) -> None:
    asyncio.run(ring.rotate("acme"))
    cts = {t: ring.encrypt(t, "t", "c", Mode.RANDOMIZED, t.encode()) for t in ("acme", "globex")}
    new_kek = AesKwKek(os.urandom(32))
    assert asyncio.run(ring.rewrap(new_kek)) == 3
    assert asyncio.run(ring.rewrap(new_kek)) == 0  # idempotent: a rerun finds nothing left
    fresh = Keyring(new_kek, ring.store)
    for tenant, ct in cts.items():
        asyncio.run(fresh.ensure_loaded(tenant))
        assert fresh.decrypt(tenant, "t", "c", ct) == tenant.encode()
    stale = Keyring(kek, ring.store)
    with pytest.raises(KekError) as caught:
        asyncio.run(stale.ensure_loaded("acme"))
    assert kek.key_id in str(caught.value)
    records = asyncio.run(ring.list_keys())
    assert {r.kek_id for r in records} == {new_kek.key_id}


def test_shred_destroys_one_tenant_only(ring: Keyring) -> None:
    asyncio.run(ring.rotate("acme"))
    acme = ring.encrypt("acme", "t", "c", Mode.DETERMINISTIC, b"a")
    globex = ring.encrypt("globex", "t", "c", Mode.DETERMINISTIC, b"g")
    with pytest.raises(ValueError, match="confirm"):
        asyncio.run(ring.shred("acme", confirm="globex"))
    assert asyncio.run(ring.shred("acme", confirm="acme")) == [1, 2]
    with pytest.raises(DecryptError, match="crypto-shredded") as caught:
        ring.decrypt("acme", "t", "c", acme)
    assert caught.value.reason == "destroyed"
    with pytest.raises(ShreddedError):
        ring.encrypt("acme", "t", "c", Mode.RANDOMIZED, b"new")
    assert ring.decrypt("globex", "t", "c", globex) == b"g"
    # A fresh process cannot bring the keys back.
    fresh = Keyring(ring._kek, ring.store)
    asyncio.run(fresh.ensure_loaded("acme"))
    with pytest.raises(DecryptError, match="crypto-shredded"):
        fresh.decrypt("acme", "t", "c", acme)
    records = [r for r in asyncio.run(ring.list_keys()) if r.tenant == "acme"]
    assert all(r.wrapped is None and r.destroyed_at is not None for r in records)
    assert ("key.shredded", {"tenant": "acme", "versions": [1, 2]}) in ring._on_event  # type: ignore[operator]
    # Rotating afterwards starts a new, unrelated key; the old data stays gone.
    assert asyncio.run(ring.rotate("acme")) == 3
    with pytest.raises(DecryptError, match="crypto-shredded"):
        ring.decrypt("acme", "t", "c", acme)


def test_key_file_has_no_plaintext_keys_and_is_private(ring: Keyring, kek: AesKwKek) -> None:
    store = ring.store
    assert isinstance(store, FileKeyStore)
    assert store.path.stat().st_mode & 0o077 == 0
    text = store.path.read_text()
    assert kek._kek.hex() not in text
    for r in asyncio.run(ring.list_keys()):
        assert r.wrapped is not None
        assert base64.b64encode(kek.unwrap(r.wrapped)).decode() not in text


def test_reprs_hide_key_material(ring: Keyring, kek: AesKwKek) -> None:
    texts = [repr(ring), repr(kek), repr(DataKey(1, bytes(32))), *map(repr, asyncio.run(ring.list_keys()))]
    for text in texts:
        assert kek._kek.hex() not in text and "wrapped=" not in text


def test_corrupt_key_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"format": "tenantgate-keys/1", "keys": [{"tenant": 1}]}')
    with pytest.raises(KeyStoreError, match=str(path)):
        asyncio.run(FileKeyStore(path).load("acme"))
    with pytest.raises(KeyStoreError, match="keys init"):
        asyncio.run(FileKeyStore(tmp_path / "missing.json").load("acme"))


# -- KEK providers ----------------------------------------------------------------------------------


def test_file_kek_formats_and_permissions(tmp_path: Path) -> None:
    hex_file, raw_file = tmp_path / "hex.kek", tmp_path / "raw.kek"
    create_kek_file(hex_file)
    assert hex_file.stat().st_mode & 0o777 == 0o600
    with pytest.raises(KekError, match="exists"):
        create_kek_file(hex_file)
    key = bytes.fromhex(hex_file.read_text())
    raw_file.write_bytes(key)
    raw_file.chmod(0o600)
    assert load_file_kek(raw_file).key_id == provider_from_uri(f"file:{hex_file}").key_id
    raw_file.chmod(0o640)
    with pytest.raises(KekError, match="group or others") as caught:
        provider_from_uri(f"file:{raw_file}")
    assert str(raw_file) in str(caught.value)
    short = tmp_path / "short.kek"
    short.write_text("abcd\n")
    short.chmod(0o600)
    with pytest.raises(KekError, match=str(short)):
        load_file_kek(short)
    with pytest.raises(KekError, match="cannot open"):
        provider_from_uri(f"file:{tmp_path / 'nope'}")


def test_env_kek_hex_and_base64(monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv("TG_KEK_HEX", key.hex())
    monkeypatch.setenv("TG_KEK_B64", base64.b64encode(key).decode())
    monkeypatch.setenv("TG_KEK_BAD", "not a key at all")
    a, b = provider_from_uri("env:TG_KEK_HEX"), provider_from_uri("env:TG_KEK_B64")
    assert a.key_id == b.key_id
    assert b.unwrap(a.wrap(bytes(32))) == bytes(32)
    with pytest.raises(KekError, match="TG_KEK_BAD") as caught:
        provider_from_uri("env:TG_KEK_BAD")
    assert "not a key at all" not in str(caught.value)
    with pytest.raises(KekError, match="TG_KEK_UNSET"):
        provider_from_uri("env:TG_KEK_UNSET")


def test_wrong_kek_cannot_unwrap(kek: AesKwKek) -> None:
    blob = kek.wrap(os.urandom(32))
    with pytest.raises(KekError):
        AesKwKek(os.urandom(32)).unwrap(blob)
    with pytest.raises(KekError):
        kek.unwrap(b"\x02" + blob[1:])


def test_unknown_scheme_and_non_uri(tmp_path: Path) -> None:
    with pytest.raises(KekError, match="unknown KEK provider scheme 'vault'"):
        provider_from_uri("vault:transit/keys/tg")
    secret = os.urandom(32).hex()
    with pytest.raises(KekError) as caught:
        provider_from_uri(secret)
    assert secret not in str(caught.value)


def test_plugin_provider_from_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution that registers `tenantgate.kek_providers` = {fakekms = module:factory}."""
    (tmp_path / "tg_fakekms.py").write_text(
        "from tenantgate.keyring.kek import AesKwKek\n"
        "import hashlib\n"
        "def factory(uri):\n"
        "    return AesKwKek(hashlib.sha256(uri.encode()).digest(), key_id='fakekms:' + uri.split(':', 1)[1])\n"
    )
    dist = tmp_path / "tg_fakekms-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tg-fakekms\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tenantgate.kek_providers]\nfakekms = tg_fakekms:factory\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    provider = provider_from_uri("fakekms:projects/p/keys/k")
    assert isinstance(provider, KekProvider)
    assert provider.key_id == "fakekms:projects/p/keys/k"
    dek = os.urandom(32)
    assert provider.unwrap(provider.wrap(dek)) == dek
    sys.modules.pop("tg_fakekms", None)


def test_kek_fingerprint_is_one_way() -> None:
    key = os.urandom(32)
    kid = AesKwKek(key).key_id
    assert kid.startswith("kek:") and key.hex()[:16] not in kid
    assert kid != "kek:" + hashlib.sha256(key).hexdigest()[:16]
