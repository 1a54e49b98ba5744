"""The encryption runs' hook: ciphertext in ``accounts_enc`` and the question whether the proxy encrypts.

The copy is encrypted with tenantgate's own migration (``keyring.encrypt_column``) under a
KEK and key file in the bench's work directory, so the data is what the proxy would read.
Whether the proxy itself can serve it is decided by :func:`proxy_support` and
:func:`check_decrypts`: the variant ``tenantgate-scoped-encrypted`` runs only when
``load_config`` accepts an ``[encryption]`` section, hands it to the proxy
(``Config.encryption``), and the proxy then returns the decrypted value; otherwise the
results say why.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from tenantgate.config import ConfigError, load_config
from tenantgate.keyring import FileKeyStore, Keyring, encrypt_column, load_encryption, provider_from_uri
from tenantgate.keyring.kek import create_kek_file

from .workload import ENCRYPTED_COLUMN, ENCRYPTED_TABLE


def section(workdir: Path) -> str:
    """The ``[encryption]`` TOML (creating the KEK file): randomized AES-GCM over ``accounts_enc.abalance``."""
    kek = workdir / "kek.hex"
    if not kek.exists():
        create_kek_file(kek)
    return (
        f'[encryption]\nkek = "file:{kek}"\nstore = "file:{workdir / "keys.json"}"\n\n'
        f'[[encryption.columns]]\ntable = "{ENCRYPTED_TABLE}"\ncolumn = "{ENCRYPTED_COLUMN}"\n'
        'mode = "randomized"\ntype = "int"\n'
    )


def encrypt_copy(config_path: Path, superuser_dsn: str, *, batch_size: int = 5000) -> int:
    """Turn ``accounts_enc.abalance`` into per-tenant ciphertext; returns the rows encrypted."""
    settings = load_encryption(config_path)
    if settings.store_path is None:
        raise ValueError(f"{config_path}: [encryption] store must be a key file for the bench")
    store_path = settings.store_path

    async def go() -> int:
        keyring = Keyring(provider_from_uri(settings.kek), FileKeyStore(store_path))
        await keyring.store.initialize()
        conn = await asyncpg.connect(superuser_dsn)
        try:
            return await encrypt_column(keyring, conn, settings.columns[0], batch_size=batch_size)
        finally:
            await conn.close()
            await keyring.close()

    return asyncio.run(go())


def check_decrypts(port: int, user: str, password: str, database: str) -> str | None:
    """None when the proxy serves ``accounts_enc.abalance`` as the plaintext int (every balance is
    loaded as 0); else what it returned instead, so a proxy passing ciphertext through is not timed."""

    async def go() -> object:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, password=password, database=database,
                                     ssl=False)
        try:
            return await conn.fetchval(f"SELECT {ENCRYPTED_COLUMN} FROM {ENCRYPTED_TABLE} WHERE aid = 1")
        finally:
            await conn.close()

    try:
        value = asyncio.run(go())
    except (OSError, asyncpg.PostgresError) as exc:
        return f"reading {ENCRYPTED_TABLE}.{ENCRYPTED_COLUMN} through the proxy failed: {type(exc).__name__}: {exc}"
    if type(value) is not int or value != 0:
        return (f"the proxy returned a {type(value).__name__} for {ENCRYPTED_TABLE}.{ENCRYPTED_COLUMN}, not the "
                "decrypted int: the encryption data path is not wired in the proxy yet")
    return None


def proxy_support(config_path: Path) -> str | None:
    """None when the proxy takes the ``[encryption]`` section in ``config_path``; else why not."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return f"the proxy refuses [encryption]: {exc.problems[0]}"
    if getattr(config, "encryption", None) is None:
        return ("the proxy's config accepts [encryption] but does not use it (Config has no encryption "
                "settings; the encryption data path is not wired in the proxy yet)")
    return None
