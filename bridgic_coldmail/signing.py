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
import tempfile
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
_SNAPSHOT_DOMAIN = b"bridgic-coldmail snapshot v2"
_LEGACY_DOMAIN = b"bridgic-coldmail stored before 0.5"
_TRUSTED_DOMAIN = b"bridgic-coldmail trusted by an operator"
SIGNATURE_TRUSTED = b"\x03"
"""The first byte of a signature an operator gave an unsigned legacy snapshot
(``trust_unsigned``): valid only on a legacy row, never mistaken for this release's own."""
SIGNATURE_V2 = b"\x02"
"""The first byte of a snapshot signature written by 0.5 and later (older ones are 32 bare
bytes), so a row of this release stripped of its row MAC is recognisable as such."""

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
        """The snapshot signature: ``0x02`` and an HMAC-SHA256 of the three fields."""
        return SIGNATURE_V2 + self.mac_values(
            _SNAPSHOT_DOMAIN, [interaction_id, serialization_version, data]
        )

    def _sign_v1(self, interaction_id: str, serialization_version: str, data: bytes) -> bytes:
        """The signature releases 0.2 to 0.4 wrote: the fields, each length-prefixed."""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (interaction_id.encode(), serialization_version.encode(), data):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()

    def verify(
        self,
        interaction_id: str,
        serialization_version: str,
        data: bytes,
        signature: bytes,
        *,
        legacy: bool = False,
    ) -> bool:
        """True when ``signature`` is this key's signature of the fields (constant-time).

        A signature of releases before 0.5 is accepted only for a ``legacy`` row (one stored
        before this database was upgraded to 0.5)."""
        if is_v2_signature(signature):
            expected = self.sign(interaction_id, serialization_version, data)
        elif not legacy:
            return False
        elif len(signature) == 33 and bytes(signature)[:1] == SIGNATURE_TRUSTED:
            expected = self.sign_trusted(interaction_id, serialization_version, data)
        else:
            expected = self._sign_v1(interaction_id, serialization_version, data)
        return hmac.compare_digest(expected, bytes(signature))

    def sign_trusted(self, interaction_id: str, serialization_version: str, data: bytes) -> bytes:
        """The signature ``trust_unsigned`` gives a legacy snapshot, on an operator's word."""
        return SIGNATURE_TRUSTED + self.mac_values(
            _TRUSTED_DOMAIN, [interaction_id, serialization_version, data]
        )

    def legacy_mark(self, interaction_id: str) -> bytes:
        """What the 0.5 upgrade writes beside each run already stored: a MAC of its id alone.

        It says "this run existed before this database was upgraded", nothing about the run's
        text — which stays unsigned, and is shown flagged. A row without a row MAC and
        without a valid mark was stripped of its MAC."""
        return self.mac_values(_LEGACY_DOMAIN, [interaction_id])

    def mac_values(self, domain: bytes, values: Sequence[MacValue]) -> bytes:
        """HMAC of a list of values, encoded unambiguously (type-tagged, length-prefixed).

        The encoding is built in one buffer and hashed in one call (the same bytes as
        updating value by value, at a fraction of the Python calls)."""
        parts = [domain]
        append = parts.append
        for value in values:
            kind = type(value)  # the common exact types first: the same bytes as _encode
            if kind is str:
                data = value.encode()  # type: ignore[union-attr]
                append(b"s" + len(data).to_bytes(8, "big"))
                append(data)
            elif value is None:
                append(_NONE)
            elif kind is bytes:
                append(b"y" + len(value).to_bytes(8, "big"))  # type: ignore[arg-type]
                append(value)  # type: ignore[arg-type]
            else:
                tag, data = _encode(value)
                append(tag + len(data).to_bytes(8, "big"))
                append(data)
        return hmac.digest(self._key, b"".join(parts), "sha256")

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


def is_v2_signature(signature: bytes | None) -> bool:
    """Whether a stored snapshot signature was written by 0.5 or later."""
    return signature is not None and len(signature) == 33 and bytes(signature)[:1] == SIGNATURE_V2


_NONE = b"n" + (0).to_bytes(8, "big")
"""How :meth:`SnapshotSigner.mac_values` encodes None (see :func:`_encode`)."""


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
    """Read a key file that is a regular file of ours, readable only by us.

    Opened without following a symlink and without blocking (a FIFO would otherwise wait
    for a writer forever), then checked on the open descriptor, so a file swapped between the
    check and the read cannot slip through.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise ConfigurationError(
                f"the signing key file {path} is a symbolic link; keys are read only from a "
                "regular file (replace the link with the file it points to)"
            ) from None
        raise ConfigurationError(
            f"cannot read the signing key file {path}: {exc.strerror}"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(
                f"the signing key file {path} is not a regular file; give the path of the key "
                "file, or remove what is there to have a new key made for a new database"
            )
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
        raw = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigurationError(
            f"the signing key file {path} is not a key written by bridgic-coldmail (it is not "
            "text); restore the original file"
        ) from None
    if len(text) < MIN_KEY_CHARS or len(raw) > _MAX_KEY_FILE_BYTES:
        raise ConfigurationError(
            f"the signing key file {path} holds {len(text)} characters, not a key of "
            f"{MIN_KEY_CHARS} to {_MAX_KEY_FILE_BYTES}; restore the original file"
        )
    return text


_MAX_KEY_FILE_BYTES = 4096


def _create_key_file(path: Path) -> None:
    """Write a new key file atomically: a private temporary file, fsynced, then linked to
    ``path`` — so a concurrent opener either finds no file or the whole key, and a crash
    leaves no empty key file behind."""
    folder = path.parent
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the signing key file {path} ({exc.strerror}); make the folder "
            f"writable or set {KEY_ENV}"
        ) from None
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)  # whatever the umask
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first; theirs is read (and checked) next
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the signing key file {path} ({exc.strerror}); make the folder "
                f"writable or set {KEY_ENV}"
            ) from None
    finally:
        os.unlink(temporary)
