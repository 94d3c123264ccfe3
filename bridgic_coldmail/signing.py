"""HMAC-SHA256 signatures on snapshots, so that only this installation's own bytes are loaded.

Bridgic's ``load_from_snapshot`` decodes pickle and cloudpickle and imports classes by name:
whoever can write to the database could otherwise make the loader run code. Every snapshot
is stored with an HMAC over its interaction id, serialization version and bytes, and the
HMAC is checked (in constant time) before a single byte reaches Bridgic.

The key comes from ``COLDMAIL_SECRET_KEY`` or from a key file beside the database
(``<db>.key``, mode 0600), created on first use. The database records a fingerprint of the
key, so a missing or changed key is an error rather than a silent re-key that would orphan
every paused run.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigurationError

KEY_ENV = "COLDMAIL_SECRET_KEY"
MIN_KEY_CHARS = 32
_FINGERPRINT_MESSAGE = b"bridgic-coldmail key fingerprint v1"


class SnapshotSigner:
    """Signs and verifies snapshots with one secret key."""

    def __init__(self, key: bytes, source: str) -> None:
        self._key = key
        self.source = source
        """Where the key came from, for error messages (never the key itself)."""

    def sign(self, interaction_id: str, serialization_version: str, data: bytes) -> bytes:
        """HMAC-SHA256 of the three fields, each length-prefixed so none bleeds into another."""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (interaction_id.encode(), serialization_version.encode(), data):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()

    def verify(
        self, interaction_id: str, serialization_version: str, data: bytes, signature: bytes
    ) -> bool:
        """True when ``signature`` is this key's signature of the fields (constant-time)."""
        expected = self.sign(interaction_id, serialization_version, data)
        return hmac.compare_digest(expected, signature)

    @property
    def fingerprint(self) -> str:
        """A value that identifies the key without revealing it; stored in the database."""
        return hmac.new(self._key, _FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()[:32]


def key_file_for(db_path: Path) -> Path:
    """The key file that belongs to a database: ``<db>.key`` beside it."""
    return db_path.with_name(db_path.name + ".key")


def load_signer(
    db_path: Path, *, may_create: bool, env: Mapping[str, str] | None = None
) -> SnapshotSigner:
    """The signer for ``db_path``: from ``COLDMAIL_SECRET_KEY``, else from the key file.

    The key file is created (mode 0600) only when ``may_create`` is true, that is when the
    database has never recorded a key: a missing file for a database that has one is an error.
    """
    env = os.environ if env is None else env
    from_env = env.get(KEY_ENV, "")
    if from_env:
        if len(from_env) < MIN_KEY_CHARS:
            raise ConfigurationError(
                f"{KEY_ENV} is {len(from_env)} characters; use at least {MIN_KEY_CHARS} random "
                'ones, e.g. python -c "import secrets; print(secrets.token_hex(32))"'
            )
        return SnapshotSigner(from_env.encode(), f"${KEY_ENV}")

    path = key_file_for(db_path)
    if not path.exists():
        if not may_create:
            raise ConfigurationError(
                f"the signing key file {path} is missing, but {db_path} has runs signed with a "
                f"key; restore the file or set {KEY_ENV} to that key (a new key could not "
                "verify the stored runs)"
            )
        _create_key_file(path)
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the signing key file {path}: {exc}") from None
    if len(text) < MIN_KEY_CHARS:
        raise ConfigurationError(
            f"the signing key file {path} holds {len(text)} characters, fewer than "
            f"{MIN_KEY_CHARS}; restore the original file"
        )
    return SnapshotSigner(text.encode(), str(path))


def _create_key_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process created it first; use theirs
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the signing key file {path} ({exc.strerror}); make the folder "
            f"writable or set {KEY_ENV}"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
