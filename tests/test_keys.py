"""The key ceremony (issue 12, "Keys as TUF means them"): encrypted keys, an offline root, k-of-n thresholds, rotation.

Real Ed25519 keys, real signatures, and the real client: python-tuf's ngclient over HTTP on 127.0.0.1
(`ReleaseClient`) and the offline chain check behind `cairn release verify`. Operator steps go through the CLI,
so each refusal is also checked to be one line with nothing written.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from cairn.coordinator.publishing.keys import (
    PASSPHRASE_ENV,
    generate_signer,
    is_encrypted,
    load_signer,
    read_passphrase,
    save_signer,
)
from cairn.coordinator.publishing.repository import ReleaseRepository
from cairn.coordinator.publishing.server import make_repository_app
from cairn.protocol.errors import ReleaseError
from cairn.releases.client import ReleaseClient
from cairn.releases.verify import verify_installed
from tests.test_releases import make_release, run_cli, serve

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "coordinator"


@pytest.fixture
def root_v1(workdir: Path) -> bytes:
    """A plain (development) repository; root v1 as a user would receive it out of band."""
    ReleaseRepository(workdir).init()
    return (workdir / "repository" / "metadata" / "1.root.json").read_bytes()


def keys_cli(monkeypatch, capsys, workdir: Path, *args) -> tuple[int, str, str]:
    return run_cli(monkeypatch, capsys, "coordinator", "keys", args[0], "--workdir", workdir, *args[1:])


def snapshot_of(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_one_line_refusal(code: int, out: str, err: str, match: str) -> None:
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err
    assert "Traceback" not in err + out


def built_release(workdir: Path, version: str) -> Path:
    """A release built into the workdir's releases/VERSION, as `cut_release` leaves it before signing."""
    release = make_release(workdir / "build", version)
    final = workdir / "releases" / version
    final.parent.mkdir(parents=True, exist_ok=True)
    return release.rename(final)


# ---- encrypted keys at rest -----------------------------------------------------------------


def test_encrypted_key_round_trip_and_one_line_refusals(tmp_path, monkeypatch, capsys):
    signer = generate_signer()
    path = tmp_path / "keys" / "targets.pem"
    save_signer(signer, path, PASSPHRASE)
    assert path.stat().st_mode & 0o777 == 0o600 and is_encrypted(path)
    assert b"PRIVATE KEY" in path.read_bytes() and signer.private_bytes not in path.read_bytes()
    assert load_signer(path, PASSPHRASE).public_key.keyid == signer.public_key.keyid
    with pytest.raises(ReleaseError, match="is encrypted and no passphrase was given: give it with --passphrase-file"):
        load_signer(path)
    with pytest.raises(ReleaseError, match=r"^wrong passphrase for signing key .*targets\.pem$"):
        load_signer(path, b"not it")
    plain = tmp_path / "keys" / "timestamp.pem"
    save_signer(signer, plain)
    assert not is_encrypted(plain)
    assert load_signer(plain, PASSPHRASE).public_key.keyid == signer.public_key.keyid  # a plain key ignores the passphrase


def test_passphrase_sources(tmp_path):
    file = tmp_path / "pass"
    file.write_bytes(PASSPHRASE + b"\n")
    assert read_passphrase(file, {PASSPHRASE_ENV: "from the environment"}) == PASSPHRASE  # the file wins
    assert read_passphrase(None, {PASSPHRASE_ENV: "from the environment"}) == b"from the environment"
    assert read_passphrase(None, {}) is None
    file.write_bytes(b"\n")
    with pytest.raises(ReleaseError, match="is empty"):
        read_passphrase(file, {})
    with pytest.raises(ReleaseError, match="cannot read the passphrase file"):
        read_passphrase(tmp_path / "missing", {})


def test_init_encrypts_root_and_targets_only_and_a_wrong_passphrase_is_one_line(workdir, tmp_path, monkeypatch, capsys):
    ReleaseRepository(workdir, passphrase=PASSPHRASE).init()
    encrypted = {path.name.split("-")[0]: is_encrypted(path) for path in (workdir / "keys").iterdir()}
    assert encrypted == {"root": True, "targets": True, "snapshot": False, "timestamp": False}
    ReleaseRepository(workdir).refresh_timestamp()  # the online roles work unattended, without the passphrase
    ReleaseRepository(workdir, passphrase=PASSPHRASE).publish_release(make_release(tmp_path / "src", "1.0.0"))

    before = snapshot_of(workdir / "repository")
    with pytest.raises(ReleaseError, match="is encrypted and no passphrase was given"):
        ReleaseRepository(workdir).publish_release(make_release(tmp_path / "src2", "1.1.0"))
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "rotate", "--role", "timestamp")
    assert_one_line_refusal(code, out, err, "wrong passphrase for signing key")
    monkeypatch.delenv(PASSPHRASE_ENV)
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "rotate", "--role", "timestamp")
    assert_one_line_refusal(code, out, err, "is encrypted and no passphrase was given")
    assert snapshot_of(workdir / "repository") == before  # nothing published by any refusal

    (tmp_path / "pass").write_bytes(PASSPHRASE + b"\n")
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "rotate", "--role", "timestamp", "--passphrase-file", tmp_path / "pass")
    assert code == 0, err
    assert "published root v2" in out


def test_encrypt_an_existing_plain_workdir(workdir, root_v1, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE.decode())
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "encrypt")
    assert code == 0, err
    assert "encrypted 2 key files" in out
    assert sorted(p.name.split("-")[0] for p in (workdir / "keys").iterdir() if is_encrypted(p)) == ["root", "targets"]
    monkeypatch.delenv(PASSPHRASE_ENV)
    release = make_release(tmp_path / "src", "1.0.0")
    with pytest.raises(ReleaseError, match="is encrypted"):
        ReleaseRepository(workdir).publish_release(release)
    ReleaseRepository(workdir, passphrase=PASSPHRASE).publish_release(release)


# ---- the offline root -----------------------------------------------------------------------


def test_export_root_removes_the_key_and_releases_still_publish(workdir, root_v1, tmp_path, monkeypatch, capsys):
    offline = tmp_path / "usb"
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "export-root", "--out", offline)
    assert code == 0, err
    [exported] = offline.iterdir()
    assert exported.name.startswith("root-") and exported.stat().st_mode & 0o777 == 0o600
    assert not list((workdir / "keys").glob("root*"))
    root = Metadata[Root].from_bytes(root_v1).signed
    assert load_signer(exported).public_key.keyid in root.roles["root"].keyids

    ReleaseRepository(workdir).publish_release(make_release(tmp_path / "src", "1.0.0"))  # online roles keep working
    ReleaseRepository(workdir).refresh_timestamp()
    with serve(make_repository_app(workdir / "repository")) as url:
        assert str(ReleaseClient(url, tmp_path / "cache", root=root_v1).pull(tmp_path / "installed").version) == "1.0.0"

    before = snapshot_of(workdir)
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "rotate", "--role", "timestamp")
    assert_one_line_refusal(code, out, err, "bring the offline root keys with --offline-root DIR")
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "export-root", "--out", offline)
    assert_one_line_refusal(code, out, err, "holds no root key (already exported?)")
    assert snapshot_of(workdir) == before


def test_root_rotation_offline_is_followed_by_a_client_that_pinned_the_old_root(workdir, root_v1, tmp_path, monkeypatch, capsys):
    """TUF's rule: root N+1 is signed by a threshold of root N's keys and of its own; a client holding v1 walks to v2."""
    offline = tmp_path / "usb"
    keys_cli(monkeypatch, capsys, workdir, "export-root", "--out", offline)
    [old_root_key] = offline.iterdir()
    repository = ReleaseRepository(workdir)
    repository.publish_release(make_release(tmp_path / "src", "1.0.0"))
    with serve(make_repository_app(workdir / "repository")) as url:
        installed = tmp_path / "installed"
        ReleaseClient(url, tmp_path / "cache", root=root_v1).pull(installed)  # caches metadata under root v1

        code, out, err = keys_cli(
            monkeypatch, capsys, workdir, "rotate", "--role", "root", "--role", "timestamp", "--offline-root", offline
        )
        assert code == 0, err
        assert "published root v2" in out
        assert not list((workdir / "keys").glob("root*"))  # the new root key went to the offline directory, not the server
        new_root_key = next(p for p in offline.iterdir() if p != old_root_key)
        v2 = Metadata[Root].from_file(str(workdir / "repository" / "metadata" / "2.root.json"))
        old_id, new_id = load_signer(old_root_key).public_key.keyid, load_signer(new_root_key).public_key.keyid
        assert set(v2.signatures) == {old_id, new_id} and v2.signed.roles["root"].keyids == [new_id]
        v2.signed.verify_delegate("root", v2.signed_bytes, v2.signatures)  # the new root's own threshold
        Metadata[Root].from_bytes(root_v1).signed.verify_delegate("root", v2.signed_bytes, v2.signatures)  # and the old one's

        repository.publish_release(make_release(tmp_path / "src", "1.1.0", landmarks_version=2, previous="1.0.0"))
        assert str(ReleaseClient(url, tmp_path / "cache", root=root_v1).pull(installed).version) == "1.1.0"
        assert str(verify_installed(installed, root_v1).version) == "1.1.0"


def test_a_root_signed_by_the_new_key_alone_is_refused_by_python_tuf(workdir, root_v1, tmp_path):
    """The check the rotation test relies on can fail: without the old root key's signature, v2 is not accepted."""
    repository = ReleaseRepository(workdir)
    repository.publish_release(make_release(tmp_path / "src", "1.0.0"))
    repository.rotate_root({"root": generate_signer()})
    path = workdir / "repository" / "metadata" / "2.root.json"
    v2 = Metadata[Root].from_file(str(path))
    old_id = Metadata[Root].from_bytes(root_v1).signed.roles["root"].keyids[0]
    del v2.signatures[old_id]
    path.write_bytes(v2.to_bytes(JSONSerializer(compact=False)))
    with serve(make_repository_app(workdir / "repository")) as url, pytest.raises(ReleaseError, match="root was signed by 0/1 keys"):
        ReleaseClient(url, tmp_path / "cache", root=root_v1).pull(tmp_path / "installed")


def test_a_two_of_two_root_needs_both_keys(workdir, root_v1, tmp_path, monkeypatch, capsys):
    offline = tmp_path / "usb"
    keys_cli(monkeypatch, capsys, workdir, "export-root", "--out", offline)
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "add", "--role", "root", "--threshold", "2", "--offline-root", offline)
    assert code == 0, err
    assert "root is now 2-of-2" in out and len(list(offline.iterdir())) == 2
    one_key = tmp_path / "one-key"
    one_key.mkdir()
    first = sorted(offline.iterdir())[0]
    (one_key / first.name).write_bytes(first.read_bytes())
    before = snapshot_of(workdir)
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "rotate", "--role", "timestamp", "--offline-root", one_key)
    assert_one_line_refusal(code, out, err, "root metadata needs 2 of the 2 root keys the current root v2 trusts, but only 1 is at hand")
    assert snapshot_of(workdir) == before
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "rotate", "--role", "timestamp", "--offline-root", offline)
    assert code == 0, err
    with serve(make_repository_app(workdir / "repository")) as url:
        ReleaseRepository(workdir).publish_release(make_release(tmp_path / "src", "1.0.0"))
        assert str(ReleaseClient(url, tmp_path / "cache", root=root_v1).pull(tmp_path / "installed").version) == "1.0.0"


# ---- k-of-n targets -------------------------------------------------------------------------


def two_of_three_targets(workdir: Path, tmp_path: Path, monkeypatch, capsys) -> tuple[Path, Path]:
    """Targets made 2-of-3 through the CLI: one key stays in the workdir, two go to other holders' files."""
    holders = tmp_path / "holder-b.pem", tmp_path / "holder-c.pem"
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "add", "--role", "targets", "--threshold", "2", "--out", holders[0])
    assert code == 0, err
    assert "targets is now 2-of-2" in out
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "add", "--role", "targets", "--out", holders[1])
    assert code == 0, err
    assert "targets is now 2-of-3" in out
    assert len(list((workdir / "keys").glob("targets*"))) == 1 and all(h.stat().st_mode & 0o777 == 0o600 for h in holders)
    return holders


def test_two_of_three_targets_collects_two_signatures_and_clients_follow(workdir, root_v1, tmp_path, monkeypatch, capsys):
    holder_b, _ = two_of_three_targets(workdir, tmp_path, monkeypatch, capsys)
    built_release(workdir, "1.0.0")
    before = snapshot_of(workdir / "repository")
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "sign-release", "--version", "1.0.0")
    assert_one_line_refusal(code, out, err, "targets metadata needs 2 of the 3 targets keys root v3 trusts, but only 1 is at hand")
    assert snapshot_of(workdir / "repository") == before

    code, out, err = keys_cli(monkeypatch, capsys, workdir, "sign-release", "--version", "1.0.0", "--targets-key", holder_b)
    assert code == 0, err
    assert "signed and published release 1.0.0" in out
    metadata = workdir / "repository" / "metadata"
    targets = Metadata[Targets].from_file(str(max(metadata.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))))
    assert len(targets.signatures) == 2
    with serve(make_repository_app(workdir / "repository")) as url:
        installed = tmp_path / "installed"
        assert str(ReleaseClient(url, tmp_path / "cache", root=root_v1).pull(installed).version) == "1.0.0"
    assert str(verify_installed(installed, root_v1).version) == "1.0.0"


def forge_release_with_one_targets_key(workdir: Path, release: Path) -> None:
    """What a compromised server can do: it holds the snapshot and timestamp keys and one targets key, and writes
    a consistent repository state (hashes and versions all right) whose targets carry that one signature."""
    from cairn.coordinator.publishing import repository as repository_module

    repository = ReleaseRepository(workdir)
    state = repository._load()
    online = {role: [load_signer(next((workdir / "keys").glob(f"{role}-*.pem")))] for role in ("targets", "snapshot", "timestamp")}
    targets = copy.deepcopy(state.targets.signed)
    for name in sorted(p.name for p in release.iterdir()):
        target = repository._store_target(f"releases/1.0.0/{name}", release / name)
        target.unrecognized_fields["custom"] = repository_module.release_custom(repository_module.check_release_dir(release))
        targets.targets[target.path] = target
    targets.version += 1

    def write(signed, filename: str, role: str) -> bytes:
        metadata = Metadata(signed)
        for signer in online[role]:
            metadata.sign(signer, append=True)
        data = metadata.to_bytes(JSONSerializer(compact=False))
        (workdir / "repository" / "metadata" / filename).write_bytes(data)
        return data

    data = write(targets, f"{targets.version}.targets.json", "targets")
    snapshot: Snapshot = copy.deepcopy(state.snapshot.signed)
    snapshot.meta["targets.json"] = MetaFile.from_data(targets.version, data, ["sha256"])
    snapshot.version += 1
    data = write(snapshot, f"{snapshot.version}.snapshot.json", "snapshot")
    timestamp: Timestamp = copy.deepcopy(state.timestamp.signed)
    timestamp.snapshot_meta = MetaFile.from_data(snapshot.version, data, ["sha256"])
    timestamp.version += 1
    write(timestamp, "timestamp.json", "timestamp")


def test_a_release_signed_by_one_of_two_required_targets_keys_is_refused(workdir, root_v1, tmp_path, monkeypatch, capsys):
    two_of_three_targets(workdir, tmp_path, monkeypatch, capsys)
    forge_release_with_one_targets_key(workdir, make_release(tmp_path / "src", "1.0.0"))
    with serve(make_repository_app(workdir / "repository")) as url, pytest.raises(ReleaseError, match="targets was signed by 1/2 keys"):
        ReleaseClient(url, tmp_path / "cache", root=root_v1).pull(tmp_path / "installed")
    assert not (tmp_path / "installed").exists()


def test_the_forgery_is_otherwise_valid(workdir, root_v1, tmp_path):
    """Control for the test above: under a 1-of-1 targets role the same forgery installs, so the refusal is the threshold."""
    forge_release_with_one_targets_key(workdir, make_release(tmp_path / "src", "1.0.0"))
    with serve(make_repository_app(workdir / "repository")) as url:
        assert str(ReleaseClient(url, tmp_path / "cache", root=root_v1).pull(tmp_path / "installed").version) == "1.0.0"


def test_keys_list_and_revoke(workdir, root_v1, tmp_path, monkeypatch, capsys):
    holders = two_of_three_targets(workdir, tmp_path, monkeypatch, capsys)
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "list")
    assert code == 0, err
    assert "targets: 2 of 3 (root v3)" in out and out.count("not in the workdir") == 2
    status = ReleaseRepository(workdir).key_status()["targets"]
    away = [keyid for keyid, local in status["keys"].items() if local is None]
    before = snapshot_of(workdir)
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "revoke", "--role", "targets", "--key-id", away[0][:12])
    # targets is re-signed under the new root: 2 of the 2 remaining keys, one of them another holder's
    assert_one_line_refusal(code, out, err, "targets metadata needs 2 of the 2 targets keys root v4 trusts, but only 1 is at hand")
    assert snapshot_of(workdir) == before
    code, out, err = keys_cli(
        monkeypatch, capsys, workdir, "revoke", "--role", "targets", "--key-id", away[0][:12], "--key", holders[0], "--key", holders[1]
    )
    assert code == 0, err
    assert ReleaseRepository(workdir).key_status()["targets"]["threshold"] == 2
    assert len(ReleaseRepository(workdir).key_status()["targets"]["keys"]) == 2
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "revoke", "--role", "targets", "--key-id", away[1][:12])
    assert_one_line_refusal(code, out, err, "targets threshold 2 is impossible with 1 key")
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "add", "--role", "targets", "--count", "0", "--threshold", "3")
    assert_one_line_refusal(code, out, err, "targets threshold 3 is impossible with 2 keys")
    code, out, err = keys_cli(monkeypatch, capsys, workdir, "rotate", "--role", "targets")
    assert_one_line_refusal(code, out, err, "targets is 2-of-2: rotate its keys one at a time")


def test_the_running_coordinator_checks_its_online_keys_at_start(workdir, tmp_path):
    """`cairn coordinator run` without the passphrase: serving goes on, releases are announced as waiting; a missing
    timestamp key stops it at once instead of an hour later, when the first refresh would fail."""
    ReleaseRepository(workdir, passphrase=PASSPHRASE).init()
    warnings: list[str] = []
    ReleaseRepository(workdir).check_online_keys(warnings.append)
    assert len(warnings) == 1 and "releases will be built but not signed" in warnings[0] and "is encrypted" in warnings[0]
    ReleaseRepository(workdir, passphrase=PASSPHRASE).check_online_keys(warnings.append)
    assert len(warnings) == 1
    next((workdir / "keys").glob("timestamp-*.pem")).unlink()
    with pytest.raises(ReleaseError, match="timestamp metadata needs 1 of the 1 timestamp keys"):
        ReleaseRepository(workdir, passphrase=PASSPHRASE).check_online_keys(warnings.append)
