"""PKCS#11 KEK provider against a real SoftHSM2 token (apt-get install softhsm2; pip install python-pkcs11)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantgate.keyring import AesKwKek, FileKeyStore, KekError, Keyring, Mode, provider_from_uri
from tenantgate.keyring.hsm import Pkcs11Kek, parse_pkcs11_uri

pkcs11 = pytest.importorskip("pkcs11", reason="python-pkcs11 is not installed")
SOFTHSM_UTIL = shutil.which("softhsm2-util")
MODULE = next((p for p in ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                           "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so") if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(SOFTHSM_UTIL is None or MODULE is None, reason="SoftHSM2 is not installed")
PIN = "4321"


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh token 'tg-test' holding two non-extractable AES-256 keys; yields the module path."""
    assert SOFTHSM_UTIL is not None and MODULE is not None
    tmp = tmp_path_factory.mktemp("softhsm")
    (tmp / "tokens").mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    saved = {k: os.environ.get(k) for k in ("SOFTHSM2_CONF", "TG_TEST_HSM_PIN")}
    # SoftHSM reads its config when the library initialises, so set it before python-pkcs11 loads it.
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ["TG_TEST_HSM_PIN"] = PIN
    subprocess.run(
        [SOFTHSM_UTIL, "--init-token", "--free", "--label", "tg-test", "--pin", PIN, "--so-pin", "87654321"],
        check=True, capture_output=True,
    )
    lib = pkcs11.lib(MODULE)
    with lib.get_token(token_label="tg-test").open(rw=True, user_pin=PIN) as session:
        for label in ("kek-a", "kek-b"):
            session.generate_key(
                pkcs11.KeyType.AES, 256, label=label, store=True,
                template={pkcs11.Attribute.EXTRACTABLE: False, pkcs11.Attribute.SENSITIVE: True},
            )
    yield MODULE
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def uri(module: str, label: str = "kek-a") -> str:
    return f"pkcs11:token=tg-test;object={label};pin-env=TG_TEST_HSM_PIN;module-path={module}"


def test_wrap_and_unwrap_happen_in_the_token(token: str) -> None:
    kek = provider_from_uri(uri(token))
    assert isinstance(kek, Pkcs11Kek) and kek.key_id == "pkcs11:tg-test/kek-a"
    dek = os.urandom(32)
    blob = kek.wrap(dek)
    assert len(blob) == 1 + 12 + 32 + 16 and dek not in blob
    assert kek.wrap(dek) != blob  # fresh IV each time
    assert kek.unwrap(blob) == dek
    other = provider_from_uri(uri(token, "kek-b"))
    with pytest.raises(KekError, match="does not unwrap"):
        other.unwrap(blob)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(KekError):
        kek.unwrap(tampered)
    assert "4321" not in repr(kek)


def test_the_kek_cannot_leave_the_token(token: str) -> None:
    kek = provider_from_uri(uri(token))
    assert isinstance(kek, Pkcs11Kek)
    assert kek._key[pkcs11.Attribute.EXTRACTABLE] is False
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        kek._key[pkcs11.Attribute.VALUE]


def test_keyring_with_hsm_kek_and_rewrap_to_file_kek(token: str, tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    hsm = provider_from_uri(uri(token))

    async def go() -> None:
        await store.initialize()
        ring = Keyring(hsm, store)
        await ring.ensure_loaded("acme")
        ct = ring.encrypt("acme", "t", "c", Mode.RANDOMIZED, b"in the hsm")
        soft = AesKwKek(os.urandom(32))
        assert await ring.rewrap(soft) == 1
        fresh = Keyring(soft, store)
        await fresh.ensure_loaded("acme")
        assert fresh.decrypt("acme", "t", "c", ct) == b"in the hsm"
        with pytest.raises(KekError):
            await Keyring(hsm, store).ensure_loaded("acme")
        assert await fresh.rewrap(hsm) == 1
        back = Keyring(hsm, store)
        await back.ensure_loaded("acme")
        assert back.decrypt("acme", "t", "c", ct) == b"in the hsm"

    asyncio.run(go())


def test_bad_token_pin_and_uri(token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KekError, match="pkcs11:nope/kek-a"):
        provider_from_uri(uri(token).replace("token=tg-test", "token=nope"))
    monkeypatch.setenv("TG_TEST_HSM_PIN", "0000")
    with pytest.raises(KekError) as caught:
        provider_from_uri(uri(token))
    assert "0000" not in str(caught.value)
    monkeypatch.delenv("TG_TEST_HSM_PIN")
    with pytest.raises(KekError, match="TG_TEST_HSM_PIN"):
        provider_from_uri(uri(token))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pkcs11:label=k;pin-env=P", "missing token"),
        ("pkcs11:token=t;pin-env=P", "missing label"),
        ("pkcs11:token=t;label=k", "exactly one of pin-env"),
        ("pkcs11:token=t;label=k;pin-env=P;pin-value=1234", "unknown attribute 'pin-value'"),
        ("pkcs11:token=t;label=k;label=j;pin-env=P", "given twice"),
    ],
)
def test_uri_errors(text: str, message: str) -> None:
    with pytest.raises(KekError, match=message):
        parse_pkcs11_uri(text)
