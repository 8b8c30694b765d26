"""Ed25519 signing keys for the TUF roles, stored as unencrypted PKCS#8 PEM files with mode 0600.

Only the timestamp key needs to be online; the others can be moved offline (see
ReleaseRepository.export_root_key) and brought back for the rare operation that needs them.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

from cairn.protocol.errors import ReleaseError
from cairn.protocol.fsutil import atomic_write_bytes

MAX_KEY_BYTES = 16 << 10


def generate_signer() -> CryptoSigner:
    """A fresh Ed25519 key pair."""
    return CryptoSigner.generate_ed25519()


def save_signer(signer: CryptoSigner, path: Path) -> None:
    """Write the private key atomically, readable by its owner only."""
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), signer.private_bytes, mode=0o600)


def load_signer(path: Path) -> CryptoSigner:
    """Load an Ed25519 private key saved by `save_signer`; anything else is a ReleaseError."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            pem = handle.read(MAX_KEY_BYTES + 1)
        if len(pem) > MAX_KEY_BYTES:
            raise ValueError("too large")
        private_key = load_pem_private_key(pem, password=None)
    except FileNotFoundError:
        raise ReleaseError(f"signing key {path} does not exist") from None
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ReleaseError(f"cannot read signing key {path}: {error}") from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ReleaseError(f"signing key {path} is not an Ed25519 key")
    return CryptoSigner(private_key)
