"""The MAC encoding: the fast path for common types gives the bytes the format defines."""

from __future__ import annotations

import hashlib
import hmac
from enum import Enum

from bridgic_coldmail.signing import MacValue, SnapshotSigner

KEY = b"k" * 32


class Kind(str, Enum):
    PAUSED = "paused"


def reference(domain: bytes, values: list[MacValue]) -> bytes:
    """The encoding as written down: a type tag, the length in 8 bytes, the data."""
    mac = hmac.new(KEY, domain, hashlib.sha256)
    for value in values:
        if value is None:
            tag, data = b"n", b""
        elif isinstance(value, bool):
            tag, data = b"b", b"1" if value else b"0"
        elif isinstance(value, int):
            tag, data = b"i", str(value).encode()
        elif isinstance(value, bytes):
            tag, data = b"y", value
        else:
            tag, data = b"s", value.encode()
        mac.update(tag + len(data).to_bytes(8, "big") + data)
    return mac.digest()


def test_every_kind_of_value_macs_as_the_format_defines() -> None:
    signer = SnapshotSigner(KEY, "test")
    values: list[MacValue] = [
        "run-1",
        "",
        "é ✓ \x00",
        None,
        0,
        -7,
        2**70,
        True,
        False,
        b"",
        b"\x00\xff" * 40,
        Kind.PAUSED,  # a str subclass: text, like its value
    ]
    for domain in (b"bridgic-coldmail row v1", b"d"):
        assert signer.mac_values(domain, values) == reference(domain, values)
        for value in values:  # each alone too: no value may shift into its neighbour's
            assert signer.mac_values(domain, [value]) == reference(domain, [value])
    assert signer.mac_values(b"d", [True]) != signer.mac_values(b"d", [1])
    assert signer.mac_values(b"d", ["1"]) != signer.mac_values(b"d", [1])
    assert signer.mac_values(b"d", [b"x"]) != signer.mac_values(b"d", ["x"])
