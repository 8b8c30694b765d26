"""Ed25519 signing keys for the TUF roles, as PKCS#8 PEM files with mode 0600, encrypted when a passphrase is given.

Which keys are encrypted: with a passphrase (`--passphrase-file FILE` or $CAIRN_KEY_PASSPHRASE), the root and
targets keys are written encrypted (PKCS#8 with cryptography's BestAvailableEncryption). The snapshot and
timestamp keys never are: the running coordinator re-signs the timestamp every hour and the snapshot at every
release, unattended, and a passphrase it could read by itself would protect nothing. TUF accepts that
trade-off for its online roles: their metadata expires (one day for the timestamp), and the worst their theft
allows is a freeze or a mix of already-signed targets, never a file the targets keys did not sign.

Without a passphrase every key is plain PEM: a development run (the README's) needs no ceremony. Loading a key
never needs to know how it was saved: the PEM header says whether it is encrypted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.signer import CryptoSigner

from cairn.protocol.errors import ReleaseError
from cairn.protocol.fsutil import atomic_write_bytes, read_at_most

MAX_KEY_BYTES = 16 << 10
MAX_PASSPHRASE_BYTES = 4 << 10
PASSPHRASE_ENV = "CAIRN_KEY_PASSPHRASE"
ENCRYPTED_ROLES = ("root", "targets")
"""The roles whose keys a passphrase encrypts: the ones that are meant to be offline or held by people."""
_ENCRYPTED_HEADER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_HOW_TO_GIVE = f"give it with --passphrase-file FILE or ${PASSPHRASE_ENV}"


def generate_signer() -> CryptoSigner:
    """A fresh Ed25519 key pair."""
    return CryptoSigner.generate_ed25519()


def read_passphrase(passphrase_file: Path | None = None, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key passphrase: from `passphrase_file` if given, else from $CAIRN_KEY_PASSPHRASE, else None.

    A file wins over the environment so that an operator can override a stale variable explicitly. One trailing
    newline is dropped (what `echo secret > file` leaves); an empty passphrase is refused rather than used,
    since encrypting with "" would look protected and not be.
    """
    if passphrase_file is not None:
        try:
            read = read_at_most(passphrase_file, MAX_PASSPHRASE_BYTES)
        except OSError as error:
            raise ReleaseError(f"cannot read the passphrase file {passphrase_file}: {error.strerror or error}") from None
        if read is None:
            raise ReleaseError(f"passphrase file {passphrase_file} is larger than {MAX_PASSPHRASE_BYTES} bytes")
        data = read
        source = str(passphrase_file)
    else:
        value = (os.environ if environ is None else environ).get(PASSPHRASE_ENV)
        if value is None:
            return None
        data, source = value.encode("utf-8"), f"${PASSPHRASE_ENV}"
    passphrase = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
    if not passphrase:
        raise ReleaseError(f"the key passphrase from {source} is empty")
    return passphrase


def save_signer(signer: CryptoSigner, path: Path, passphrase: bytes | None = None) -> None:
    """Write the private key atomically, readable by its owner only; encrypted with `passphrase` if given."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_bytes(path, key_bytes(signer, passphrase), mode=0o600)


def key_bytes(signer: CryptoSigner, passphrase: bytes | None = None) -> bytes:
    """The PEM a key file holds: plain PKCS#8, or PKCS#8 encrypted with `passphrase`."""
    if passphrase is None:
        return signer.private_bytes
    private_key = load_pem_private_key(signer.private_bytes, password=None)
    return private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(passphrase))


def is_encrypted(path: Path) -> bool:
    """Whether the key file at `path` is an encrypted PKCS#8 PEM (False if it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_ENCRYPTED_HEADER) + 64).lstrip().startswith(_ENCRYPTED_HEADER)
    except OSError:
        return False


def load_signer(path: Path, passphrase: bytes | None = None) -> CryptoSigner:
    """Load an Ed25519 private key saved by `save_signer`; anything else is a ReleaseError of one line.

    A plain key loads whether or not a passphrase is given (the online roles are never encrypted); an encrypted
    one needs it, and a wrong one is reported as such, not as a corrupt file.
    """
    path = Path(path)
    try:
        pem = read_at_most(path, MAX_KEY_BYTES)
    except FileNotFoundError:
        raise ReleaseError(f"signing key {path} does not exist") from None
    except OSError as error:
        raise ReleaseError(f"cannot read signing key {path}: {error.strerror or error}") from None
    if pem is None:
        raise ReleaseError(f"cannot read signing key {path}: larger than {MAX_KEY_BYTES} bytes")
    encrypted = pem.lstrip().startswith(_ENCRYPTED_HEADER)
    if encrypted and passphrase is None:
        raise ReleaseError(f"signing key {path} is encrypted and no passphrase was given: {_HOW_TO_GIVE}")
    try:
        private_key = load_pem_private_key(pem, password=passphrase if encrypted else None)
    except ValueError as error:
        if encrypted:
            raise ReleaseError(f"wrong passphrase for signing key {path}") from None
        raise ReleaseError(f"cannot read signing key {path}: {error}") from None
    except (TypeError, UnsupportedAlgorithm) as error:
        raise ReleaseError(f"cannot read signing key {path}: {error}") from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ReleaseError(f"signing key {path} is not an Ed25519 key")
    return CryptoSigner(private_key)
