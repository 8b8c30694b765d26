"""A peer's persistent RSA identity: the key that signs its DHT records and names it in the ledger.

The key must survive restarts, or a restarted peer would become a new contributor and lose its
credit; and it must stay private, or anyone could publish records in its name. So it lives in one
PEM file, mode 0600, created atomically and exclusively (two peers started at once on one path end up
with the same key instead of one of them silently using a key that is not on disk).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from cairn.protocol.dht_keys import public_id
from cairn.protocol.errors import CairnError


def load_or_create_identity(path: Path) -> RSAPrivateKey:
    """Load the RSA key at `path`, creating a new 2048-bit key there first if there is none."""
    path = Path(path)
    if not path.exists():
        _create_exclusively(path, _to_pem(RSAPrivateKey()))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CairnError(f"identity file {path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise CairnError(f"identity file {path} is not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise CairnError(f"identity file {path} must hold an RSA key of at least 2048 bits")
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    return _from_der(der)


def peer_public_id(key: RSAPrivateKey | RSAPublicKey) -> str:
    """The short id that shows a peer in the ledger and the dashboard; the same for the same key."""
    public_key = key.get_public_key() if isinstance(key, RSAPrivateKey) else key
    return public_id(public_key.to_bytes())


def write_p2p_identity(key: RSAPrivateKey, path: Path) -> None:
    """Write `key` in libp2p's format (a protobuf PrivateKey) for hivemind's `identity_path`.

    The libp2p PeerID is then derived from the same key as the record signatures, so a restarted peer
    keeps its PeerID and a PeerID can be traced to the key that signs its records.
    """
    protobuf = crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=key.to_bytes())
    _create_exclusively(Path(path), protobuf.SerializeToString())


def _to_pem(key: RSAPrivateKey) -> bytes:
    loaded = serialization.load_der_private_key(key.to_bytes(), password=None)
    return loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _from_der(der: bytes) -> RSAPrivateKey:
    # hivemind's RSAPrivateKey has no constructor from bytes; its unpickling hook is the public way in
    key = RSAPrivateKey.__new__(RSAPrivateKey)
    key.__setstate__({"_private_key": der})
    return key


def _create_exclusively(path: Path, data: bytes) -> None:
    """Write a 0600 temp file, fsync it, then hard-link it into place: fails over to an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return  # someone else created it first: theirs is the identity
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the new name durable, not just the bytes
        finally:
            os.close(directory)
    finally:
        os.unlink(tmp_name)
