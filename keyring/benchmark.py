"""Micro-benchmark of the hot path: Keyring.encrypt/decrypt operations per second on one core.

``run()`` returns numbers only (bench/ plots them); nothing is asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .format import Mode
from .kek import AesKwKek
from .keyring import Keyring
from .store_file import FileKeyStore


def _rate(op: Callable[[], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            op()
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def run(*, value_sizes: tuple[int, ...] = (16, 256), seconds: float = 0.3) -> dict[str, Any]:
    """Encrypt/decrypt ops per second per core, for each mode and value size."""
    with tempfile.TemporaryDirectory() as tmp:
        keyring = Keyring(AesKwKek(os.urandom(32)), FileKeyStore(os.path.join(tmp, "keys.json")))

        async def load() -> None:
            await keyring.store.initialize()
            await keyring.ensure_loaded("bench")

        asyncio.run(load())
        results: dict[str, Any] = {}
        for mode in Mode:
            for size in value_sizes:
                plaintext = os.urandom(size)
                ciphertext = keyring.encrypt("bench", "t", "c", mode, plaintext)

                def encrypt(m: Mode = mode, p: bytes = plaintext) -> bytes:
                    return keyring.encrypt("bench", "t", "c", m, p)

                def decrypt(c: bytes = ciphertext) -> bytes:
                    return keyring.decrypt("bench", "t", "c", c)

                results[f"{mode.value}/{size}B"] = {
                    "encrypt_ops_per_s": round(_rate(encrypt, seconds)),
                    "decrypt_ops_per_s": round(_rate(decrypt, seconds)),
                }
    return {"benchmark": "keyring", "cores": 1, "results": results}


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
