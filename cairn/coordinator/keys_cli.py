"""`cairn coordinator keys`: the TUF key ceremony (docs/operating.md, "Keys ceremony").

Every command that changes which keys are trusted publishes a new root version signed by a threshold of the
current root keys and of the new ones, so clients that pinned an older root follow it. Root keys can stay on
offline media (`--offline-root DIR`, what `export-root` filled): they are read from there for the one signature
and never copied into the workdir. Keys held by other people are passed one file each with `--key FILE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from cairn.cli_options import key_passphrase, passphrase_option
from cairn.protocol.errors import ReleaseError

_ALL_ROLES = ("root", "targets", "snapshot", "timestamp")
_THRESHOLD_ROLES = ("root", "targets")


def _workdir(function):
    return click.option("--workdir", type=click.Path(path_type=Path), required=True)(function)


def _offline_root(function):
    return click.option(
        "--offline-root",
        type=click.Path(file_okay=False, path_type=Path),
        help="directory holding the offline root keys (what `keys export-root --out` wrote); read, never copied",
    )(function)


def _extra_keys(function):
    return click.option(
        "--key",
        "--targets-key",
        "key_files",
        multiple=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="another private key file to sign with (a targets key another holder brought, a root key file); repeatable",
    )(function)


def _repository(workdir: Path, passphrase_file: Path | None):
    from cairn.coordinator.publishing.repository import ReleaseRepository

    if not (workdir / "repository" / "metadata").is_dir():
        raise ReleaseError(f"{workdir} holds no release repository; run `cairn coordinator init --workdir {workdir}` first")
    return ReleaseRepository(workdir, passphrase=key_passphrase(passphrase_file))


def _load(key_files: Sequence[Path], passphrase: bytes | None) -> list:
    from cairn.coordinator.publishing.keys import load_signer

    return [load_signer(path, passphrase) for path in key_files]


@click.group()
def keys() -> None:
    """The TUF keys: list, export the root offline, add keys for k-of-n, revoke, rotate, encrypt, sign a release."""


@keys.command("list")
@_workdir
def list_keys(workdir: Path) -> None:
    """Each role's threshold and key ids, and which private keys are in the workdir (encrypted or plain)."""
    repository = _repository(workdir, None)
    for role, status in repository.key_status().items():
        click.echo(f"{role}: {status['threshold']} of {len(status['keys'])} (root v{status['version']})")
        for keyid, encrypted in status["keys"].items():
            where = "not in the workdir" if encrypted is None else "in the workdir, " + ("encrypted" if encrypted else "unencrypted")
            click.echo(f"  {keyid[:16]}  {where}")


@keys.command("export-root")
@_workdir
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="directory on offline media; the key files are created there 0600, never overwritten",
)
def export_root(workdir: Path, out_dir: Path) -> None:
    """Move every root key out of the workdir to DIR (copied, read back, then deleted); releases keep publishing."""
    written = _repository(workdir, None).export_root_keys(out_dir)
    for path in written:
        click.echo(f"root key written to {path}")
    click.echo(f"the workdir holds no root key now; keep {out_dir} offline and bring it back with --offline-root for root changes")


@keys.command()
@_workdir
@click.option("--role", "roles", multiple=True, required=True, type=click.Choice(_ALL_ROLES), help="role whose key to replace; repeatable")
@_offline_root
@_extra_keys
@passphrase_option
def rotate(
    workdir: Path, roles: tuple[str, ...], offline_root: Path | None, key_files: tuple[Path, ...], passphrase_file: Path | None
) -> None:
    """Replace the key of each --role with a new one and publish the next root version, signed by old and new root keys.

    A new root key is written to --offline-root when given (else the workdir); other new keys to the workdir.
    """
    from cairn.coordinator.publishing.keys import generate_signer

    repository = _repository(workdir, passphrase_file)
    new_keys = {role: generate_signer() for role in dict.fromkeys(roles)}
    version = repository.rotate_root(new_keys, offline_root=offline_root, extra_signers=_load(key_files, repository.passphrase))
    for role, signer in new_keys.items():
        click.echo(f"{role}: new key {signer.public_key.keyid[:16]}")
    click.echo(f"published root v{version}; clients that trust an older root follow it on their next pull")
    if "root" in new_keys and offline_root is not None:
        click.echo(f"the old root key in {offline_root} is revoked: destroy it")


@keys.command()
@_workdir
@click.option("--role", required=True, type=click.Choice(_THRESHOLD_ROLES))
@click.option(
    "--count", type=click.IntRange(0, 16), default=1, show_default=True, help="new keys to generate (0: only change the threshold)"
)
@click.option("--threshold", type=click.IntRange(min=1), help="signatures the role needs from now on (default: unchanged)")
@click.option(
    "--out",
    "key_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the (one) new private key to this file for its holder instead of the workdir (root: --offline-root)",
)
@_offline_root
@_extra_keys
@passphrase_option
def add(
    workdir: Path,
    role: str,
    count: int,
    threshold: int | None,
    key_out: Path | None,
    offline_root: Path | None,
    key_files: tuple[Path, ...],
    passphrase_file: Path | None,
) -> None:
    """Trust COUNT new keys for --role and set its --threshold (k-of-n); publish the next root version."""
    from cairn.coordinator.publishing.keys import generate_signer

    repository = _repository(workdir, passphrase_file)
    new_keys = [generate_signer() for _ in range(count)]
    version = repository.add_keys(
        role, new_keys, threshold, offline_root=offline_root, key_out=key_out, extra_signers=_load(key_files, repository.passphrase)
    )
    status = repository.key_status()[role]
    for signer in new_keys:
        click.echo(f"{role}: new key {signer.public_key.keyid[:16]}")
    click.echo(f"published root v{version}: {role} is now {status['threshold']}-of-{len(status['keys'])}")
    if key_out is not None:
        click.echo(f"hand {key_out} to its holder and delete it here")


@keys.command()
@_workdir
@click.option("--role", required=True, type=click.Choice(_ALL_ROLES))
@click.option("--key-id", required=True, help="the key id, or its first 8+ hex digits (`keys list`)")
@_offline_root
@_extra_keys
@passphrase_option
def revoke(
    workdir: Path, role: str, key_id: str, offline_root: Path | None, key_files: tuple[Path, ...], passphrase_file: Path | None
) -> None:
    """Stop trusting one key of --role (a lost or leaked one); publish the next root version."""
    repository = _repository(workdir, passphrase_file)
    version = repository.revoke_key(role, key_id, offline_root=offline_root, extra_signers=_load(key_files, repository.passphrase))
    click.echo(f"published root v{version}: {role} key {key_id} is no longer trusted")


@keys.command()
@_workdir
@passphrase_option
def encrypt(workdir: Path, passphrase_file: Path | None) -> None:
    """Encrypt the plain root and targets keys in the workdir with the passphrase (snapshot and timestamp stay plain)."""
    rewritten = _repository(workdir, passphrase_file).encrypt_keys()
    click.echo(f"encrypted {len(rewritten)} key file{'s' if len(rewritten) != 1 else ''}")


@keys.command("sign-release")
@_workdir
@click.option("--version", "version", required=True, help="a release built into WORKDIR/releases/VERSION but not yet signed")
@_extra_keys
@passphrase_option
def sign_release(workdir: Path, version: str, key_files: tuple[Path, ...], passphrase_file: Path | None) -> None:
    """Publish a built release with the targets keys in the workdir plus --key files (a k-of-n targets role)."""
    from cairn.releases.version import ReleaseVersion

    release_dir = workdir / "releases" / str(ReleaseVersion.parse(version))
    if not release_dir.is_dir():
        raise ReleaseError(f"{release_dir} does not exist: no release {version} was built in this workdir")
    repository = _repository(workdir, passphrase_file)
    published = repository.publish_release(release_dir, extra_signers=_load(key_files, repository.passphrase))
    click.echo(f"signed and published release {published}")
