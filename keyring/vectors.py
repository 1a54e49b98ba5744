"""Known-answer vectors for the ciphertext format and the file/env KEK wrap.

``keyring/vectors.json`` was generated once with fixed DEKs, KEKs and nonces::

    python -m tenantgate.keyring.vectors > keyring/vectors.json

and is checked in. The tests decrypt every vector and re-encrypt each one (with
its recorded nonce) byte for byte, so any change to the format, the subkey
derivation or the associated data shows up. Regenerate only for a new format.
"""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files
from typing import Any

from .format import DataKey, Mode, encrypt_value
from .kek import AesKwKek


def _fixed(label: str, size: int) -> bytes:
    return hashlib.sha256(b"tenantgate test vector " + label.encode()).digest()[:size]


def generate() -> dict[str, Any]:
    cases = [
        ("acme", "customers", "ssn", Mode.DETERMINISTIC, 1, b"123-45-6789"),
        ("acme", "customers", "ssn", Mode.DETERMINISTIC, 1, b""),
        ("acme", "customers", "email", Mode.DETERMINISTIC, 1, b"alice@example.com"),
        ("globex", "customers", "ssn", Mode.DETERMINISTIC, 3, b"123-45-6789"),
        ("acme", "customers", "notes", Mode.RANDOMIZED, 1, "h\u00e9llo \u2603".encode()),
        ("acme", "customers", "notes", Mode.RANDOMIZED, 2, b""),
        ("acme", "sales.orders", "amount", Mode.RANDOMIZED, 7, b"1234.50"),
        ("t\u00e9nant", "Mixed Case", "col", Mode.RANDOMIZED, 4294967295, bytes(range(256))),
    ]
    vectors = []
    for i, (tenant, table, column, mode, version, plaintext) in enumerate(cases):
        dek = _fixed(f"dek {tenant} {version}", 32)
        nonce = _fixed(f"nonce {i}", 12) if mode is Mode.RANDOMIZED else None
        ciphertext = encrypt_value(DataKey(version, dek), mode, tenant, table, column, plaintext, nonce=nonce)
        vectors.append({
            "tenant": tenant, "table": table, "column": column, "mode": mode.value, "version": version,
            "dek": dek.hex(), "nonce": nonce.hex() if nonce else None,
            "plaintext": plaintext.hex(), "ciphertext": ciphertext.hex(),
        })
    kek = _fixed("kek", 32)
    deks = [_fixed(f"wrapped dek {j}", 32) for j in range(2)]
    wraps = [{"kek": kek.hex(), "dek": dek.hex(), "wrapped": AesKwKek(kek).wrap(dek).hex()} for dek in deks]
    return {
        "format": "tenantgate ciphertext format 1 (see tenantgate.keyring.format)",
        "ciphertexts": vectors,
        "kek_wrap": wraps,
    }


def load() -> dict[str, Any]:
    """The checked-in vectors."""
    data: dict[str, Any] = json.loads(files(__package__).joinpath("vectors.json").read_text())
    return data


if __name__ == "__main__":
    print(json.dumps(generate(), indent=1, ensure_ascii=True))
