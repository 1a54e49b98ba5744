"""tenantgate.keyring: field-level envelope encryption with per-tenant keys.

A KEK (file, env, PKCS#11 HSM or a plug-in KMS) wraps one random 256-bit DEK per
tenant and version; wrapped DEKs live in ``tenantgate.keys`` or a key file.
Values are sealed with AES-256-GCM (randomized) or AES-SIV (deterministic) in
the format documented in :mod:`tenantgate.keyring.format`, bound to tenant,
table and column.
"""

from .errors import CodecError, DecryptError, KekError, KeyringError, KeysNotLoadedError, KeyStoreError, ShreddedError
from .format import Mode
from .kek import AesKwKek, provider_from_uri
from .keyring import Keyring
from .migrate import encrypt_column, reencrypt
from .pgtypes import BY_OID, TYPES, PgType
from .provider import KekProvider
from .settings import EncryptedColumn, EncryptionSettings, SettingsError, load_encryption, parse_encryption
from .store import KeyRecord, KeyStore
from .store_db import DatabaseKeyStore
from .store_file import FileKeyStore

__all__ = [
    "BY_OID",
    "TYPES",
    "AesKwKek",
    "CodecError",
    "DatabaseKeyStore",
    "DecryptError",
    "EncryptedColumn",
    "EncryptionSettings",
    "FileKeyStore",
    "KekError",
    "KekProvider",
    "KeyRecord",
    "KeyStore",
    "KeyStoreError",
    "Keyring",
    "KeyringError",
    "KeysNotLoadedError",
    "Mode",
    "PgType",
    "SettingsError",
    "ShreddedError",
    "encrypt_column",
    "load_encryption",
    "parse_encryption",
    "provider_from_uri",
    "reencrypt",
]
