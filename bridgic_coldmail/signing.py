"""HMAC-SHA256 signatures, so that only this installation's own bytes are loaded or shown.

Bridgic's ``load_from_snapshot`` decodes pickle and cloudpickle and imports classes by name:
whoever can write to the database could otherwise make the loader run code. Every snapshot
is stored with an HMAC over its interaction id, serialization version and bytes, checked in
constant time before a single byte reaches Bridgic. The text people and host applications
read (brief, draft, feedback, sequences, status, history) carries a second MAC per row and
one per history event, so an edited column is refused or flagged, never shown as genuine.

The rule: **this package only signs what it produced itself, in this process.** Opening or
migrating a database never signs anything that is already in it; runs stored unsigned (by
release 0.1, or by anyone else) stay unloadable until an operator trusts them explicitly
(``ColdMailAgent.trust_unsigned``).

The key comes from ``COLDMAIL_SECRET_KEY`` or a key file: ``COLDMAIL_KEY_FILE``, else
``<db>.key`` beside an SQLite database (its real path, so a symlinked database finds the same
key). A key file must be a regular file (not a symlink), owned by the user running this
process, and readable by nobody else (mode 0600); it is created that way on first use.
The database records a fingerprint of the key, so a missing or changed key is an error rather
than a silent re-key that would orphan every paused run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigurationError

KEY_ENV = "COLDMAIL_SECRET_KEY"
KEY_FILE_ENV = "COLDMAIL_KEY_FILE"
MIN_KEY_CHARS = 32
_FINGERPRINT_MESSAGE = b"bridgic-coldmail key fingerprint v1"
_ROW_DOMAIN = b"bridgic-coldmail row v1"
_EVENT_DOMAIN = b"bridgic-coldmail event v1"

MacValue = str | int | bool | bytes | None


class SnapshotSigner:
    """Signs and verifies snapshots, rows and events with one secret key."""

    def __init__(self, key: bytes, source: str) -> None:
        self._key = key
        self.source = source
        """Where the key came from, for error messages (never the key itself)."""

    def __repr__(self) -> str:
        return f"SnapshotSigner(source={self.source!r})"

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

    def mac_values(self, domain: bytes, values: Sequence[MacValue]) -> bytes:
        """HMAC of a list of values, encoded unambiguously (type-tagged, length-prefixed)."""
        mac = hmac.new(self._key, domain, hashlib.sha256)
        for value in values:
            tag, data = _encode(value)
            mac.update(tag + len(data).to_bytes(8, "big"))
            mac.update(data)
        return mac.digest()

    def row_mac(self, values: Sequence[MacValue]) -> bytes:
        """The MAC of a run's readable columns (see the store for which)."""
        return self.mac_values(_ROW_DOMAIN, values)

    def event_mac(self, values: Sequence[MacValue]) -> bytes:
        """The MAC of one history event, including its run and its place in the history."""
        return self.mac_values(_EVENT_DOMAIN, values)

    def check_mac(self, domain_mac: bytes | None, expected: bytes) -> bool:
        """Constant-time comparison of a stored MAC with the expected one."""
        return domain_mac is not None and hmac.compare_digest(bytes(domain_mac), expected)

    @property
    def fingerprint(self) -> str:
        """A value that identifies the key without revealing it; stored in the database."""
        return hmac.new(self._key, _FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()[:32]


def _encode(value: MacValue) -> tuple[bytes, bytes]:
    if value is None:
        return b"n", b""
    if isinstance(value, bool):
        return b"b", b"1" if value else b"0"
    if isinstance(value, int):
        return b"i", str(value).encode()
    if isinstance(value, bytes):
        return b"y", value
    return b"s", value.encode()


def json_text(value: object) -> str:
    """Canonical JSON for values that are MACed as text (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class KeySource:
    """Where a database's key comes from: the environment, or a file."""

    secret: str | None
    """``COLDMAIL_SECRET_KEY`` (already checked for length by the settings)."""
    file: Path | None
    """The key file: explicit, or ``<db>.key`` beside an SQLite file; None for a URL."""


def key_file_for(db_path: Path) -> Path:
    """The key file that belongs to an SQLite database: ``<real path of db>.key``."""
    real = db_path.resolve()
    return real.with_name(real.name + ".key")


def load_signer(source: KeySource, *, may_create: bool, holds_runs: bool) -> SnapshotSigner:
    """The signer for a database.

    Args:
        source: the environment's key, or the key file to read.
        may_create: the database records no key yet, so a new key file may be created.
        holds_runs: the database already holds runs (with ``may_create``: a 0.1 database,
            or one someone replaced); an existing key file is then not adopted, because
            whoever planted the database could have planted the file.

    Raises:
        ConfigurationError: no usable key, with what to do.
    """
    if source.secret:
        return SnapshotSigner(source.secret.encode(), f"${KEY_ENV}")
    path = source.file
    if path is None:
        raise ConfigurationError(
            f"no signing key for this database: set {KEY_ENV} to at least {MIN_KEY_CHARS} "
            f"random characters, or {KEY_FILE_ENV} to a key file"
        )
    exists = os.path.lexists(path)
    if may_create and exists and holds_runs:
        raise ConfigurationError(
            f"the database holds runs but records no signing key, and a key file {path} "
            "already exists: the database may have been replaced by someone who also placed "
            "that file; restore the database from a backup, or move the key file away if you "
            "know both are genuine"
        )
    if not exists:
        if not may_create:
            raise ConfigurationError(
                f"the signing key file {path} is missing, but the database has runs signed "
                f"with a key; restore the file or set {KEY_ENV} to that key (a new key could "
                "not verify the stored runs)"
            )
        _create_key_file(path)
    return SnapshotSigner(_read_key_file(path).encode(), str(path))


def _read_key_file(path: Path) -> str:
    """Read a key file that is a regular file of ours, readable only by us."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if os.path.islink(path):
            raise ConfigurationError(
                f"the signing key file {path} is a symbolic link; keys are read only from a "
                "regular file (replace the link with the file it points to)"
            ) from None
        raise ConfigurationError(
            f"cannot read the signing key file {path}: {exc.strerror}"
        ) from None
    with os.fdopen(fd, "r") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(f"the signing key file {path} is not a regular file")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise ConfigurationError(
                f"the signing key file {path} belongs to user id {info.st_uid}, not to the "
                f"user running this ({os.getuid()}); whoever owns it could change the key. "
                "Run as its owner, or recreate it as yours"
            )
        if info.st_mode & 0o077:
            raise ConfigurationError(
                f"the signing key file {path} can be read or changed by other users (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); make it private with chmod 600 {path}"
            )
        text = handle.read().strip()
    if len(text) < MIN_KEY_CHARS:
        raise ConfigurationError(
            f"the signing key file {path} holds {len(text)} characters, fewer than "
            f"{MIN_KEY_CHARS}; restore the original file"
        )
    return text


def _create_key_file(path: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return  # another process created it first; theirs is read (and checked) next
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the signing key file {path} ({exc.strerror}); make the folder "
            f"writable or set {KEY_ENV}"
        ) from None
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # whatever the umask
        handle.write(secrets.token_hex(32) + "\n")
