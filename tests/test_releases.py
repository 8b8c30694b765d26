"""Signed releases end to end: a real repository, real Ed25519 signatures, real HTTP on 127.0.0.1.

Each attack is served by an aiohttp app (the repository server, plus a middleware that tampers with
chosen paths) and must be refused with a clear ReleaseError while the release already installed
in the destination directory stays exactly as it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import shutil
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiohttp import web
from tuf.api.metadata import Metadata

import cairn.cli
from cairn.coordinator.publishing import repository as repository_module
from cairn.coordinator.publishing.keys import generate_signer
from cairn.coordinator.publishing.repository import ReleaseRepository
from cairn.coordinator.publishing.server import make_repository_app
from cairn.protocol.errors import ReleaseError
from cairn.releases.client import ReleaseClient
from cairn.releases.files import file_sha256
from cairn.releases.layout import REQUIRED_FILES
from cairn.releases.manifest import check_release_dir, parse_manifest, write_manifest
from cairn.releases.trust import TrustStore
from cairn.releases.verify import verify_installed
from cairn.releases.version import ReleaseVersion

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ANCHORS_V1 = ["a cat sat on the mat", "stock markets fell sharply", "the protein folds"]
ANCHORS_V2 = ANCHORS_V1 + ["rain is expected tomorrow"]


# ---- fake releases --------------------------------------------------------------------------


def landmarks_bytes(version: int, anchors: list[str]) -> bytes:
    canonical = json.dumps({"version": version, "anchors": anchors}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return json.dumps({"version": version, "anchors": anchors, "digest": digest}).encode("utf-8")


def make_release(parent: Path, version: str, landmarks_version: int = 1, previous: str | None = None) -> Path:
    """A small, valid release directory: random weights, tiny config/tokenizer, a real landmark file."""
    directory = parent / f"release-{version}"
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(os.urandom(4096))
    (directory / "config.json").write_bytes(b'{"dim": 8}')
    (directory / "tokenizer.json").write_bytes(b'{"vocab": ["a", "b"]}')
    landmarks = landmarks_bytes(landmarks_version, ANCHORS_V1 if landmarks_version == 1 else ANCHORS_V2)
    (directory / "landmarks.json").write_bytes(landmarks)
    files = {}
    for name in REQUIRED_FILES:
        sha256, length = file_sha256(directory / name)
        files[name] = {"sha256": sha256, "length": length}
    document = {
        "version": version,
        "parent_version": previous,
        "run_id": "run-test",
        "global_step": 100,
        "landmarks_version": landmarks_version,
        "landmarks_digest": json.loads(landmarks)["digest"],
        "files": files,
        "metrics": {"loss": 0.5},
        "compatibility": {"protocol": 1},
    }
    write_manifest(parse_manifest(json.dumps(document).encode("utf-8")), directory / "manifest.json")
    return directory


# ---- serving --------------------------------------------------------------------------------


@contextmanager
def serve(app: web.Application) -> Iterator[str]:
    """Run `app` on 127.0.0.1 in a background thread (the client under test is synchronous)."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def tampering(repository_dir: Path, overrides: dict[str, Handler]) -> web.Application:
    """The real repository server, except that paths in `overrides` are answered by an attacker."""

    @web.middleware
    async def tamper(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await overrides.get(request.path, handler)(request)

    app = make_repository_app(repository_dir)
    app.middlewares.append(tamper)
    return app


def body(data: bytes) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=data)

    return handler


def target_url(release_dir: Path, name: str) -> str:
    """The URL path of a release file as the repository serves it (consistent-snapshot name)."""
    version = json.loads((release_dir / "manifest.json").read_bytes())["version"]
    return f"/targets/releases/{version}/{file_sha256(release_dir / name)[0]}.{name}"


# ---- fixtures -------------------------------------------------------------------------------


class Clock:
    """The publisher's clock, movable so a test can sign metadata that is already stale."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def repo(tmp_path: Path, clock: Clock) -> ReleaseRepository:
    repository = ReleaseRepository(tmp_path / "coordinator", clock=clock)
    repository.init()
    return repository


@pytest.fixture
def releases(tmp_path: Path) -> dict[str, Path]:
    return {
        "1.0.0": make_release(tmp_path / "src", "1.0.0", landmarks_version=1),
        "1.1.0": make_release(tmp_path / "src", "1.1.0", landmarks_version=2, previous="1.0.0"),
    }


@pytest.fixture
def root(repo: ReleaseRepository) -> bytes:
    """Root v1 as a user would receive it out of band."""
    return (repo.metadata_dir / "1.root.json").read_bytes()


@pytest.fixture
def url(repo: ReleaseRepository) -> Iterator[str]:
    with serve(make_repository_app(repo.repository_dir)) as base:
        yield base


def client(base: str, tmp_path: Path, root: bytes | None) -> ReleaseClient:
    return ReleaseClient(base, tmp_path / "cache", root=root)


def installed_version(directory: Path) -> str:
    return json.loads((directory / "manifest.json").read_bytes())["version"]


def assert_refused_and_intact(pull: Callable[[], object], destination: Path, match: str) -> None:
    """The pull raises ReleaseError matching `match`; the installed release is byte-for-byte unchanged."""
    before = {p.relative_to(destination): p.read_bytes() for p in destination.rglob("*") if p.is_file()}
    with pytest.raises(ReleaseError, match=match):
        pull()
    after = {p.relative_to(destination): p.read_bytes() for p in destination.rglob("*") if p.is_file()}
    assert after == before
    assert not [p.name for p in destination.parent.iterdir() if ".partial-" in p.name or p.name.endswith(".previous")]


# ---- happy path -----------------------------------------------------------------------------


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["cairn", *map(str, args)])
    try:
        cairn.cli.main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_publish_list_pull_verify_through_the_cli(repo, releases, root, url, tmp_path, monkeypatch, capsys):
    repo.publish_release(releases["1.0.0"])
    repo.publish_release(releases["1.1.0"])
    assert [str(v) for v in repo.list_versions()] == ["1.0.0", "1.1.0"]
    root_file = tmp_path / "root.json"
    root_file.write_bytes(root)
    cache = ["--cache-dir", tmp_path / "cache"]

    code, out, err = run_cli(monkeypatch, capsys, "release", "list", url, "--root", root_file, *cache)
    assert code == 0, err
    assert "1.0.0" in out and "1.1.0" in out and "latest" in out

    destination = tmp_path / "installed"
    code, out, err = run_cli(monkeypatch, capsys, "release", "pull", url, "--root", root_file, "--to", destination, *cache)
    assert code == 0, err
    assert "installed release 1.1.0" in out
    for name in [*REQUIRED_FILES, "manifest.json"]:
        assert (destination / name).read_bytes() == (releases["1.1.0"] / name).read_bytes()
    assert {p.name for p in (destination / ".tuf").iterdir()} >= {"root_history", "timestamp.json", "snapshot.json", "targets.json"}

    code, out, err = run_cli(monkeypatch, capsys, "release", "verify", destination, *cache)
    assert code == 0, err
    assert "ok: release 1.1.0" in out


def test_pull_replaces_an_installed_release_with_a_newer_one(repo, releases, root, url, tmp_path):
    destination = tmp_path / "installed"
    repo.publish_release(releases["1.0.0"])
    assert str(client(url, tmp_path, root).pull(destination).version) == "1.0.0"
    repo.publish_release(releases["1.1.0"])
    assert str(client(url, tmp_path, root).pull(destination).version) == "1.1.0"
    assert str(verify_installed(destination, root).version) == "1.1.0"


def test_standalone_landmark_sets_are_signed_and_immutable(repo, releases, root, url, tmp_path):
    path = repo.publish_landmarks(releases["1.1.0"] / "landmarks.json", 2)
    assert path == "landmarks/v2/landmarks.json"
    assert repo.publish_landmarks(releases["1.1.0"] / "landmarks.json", 2) == path  # same bytes: no-op
    other = tmp_path / "other.json"
    other.write_bytes(landmarks_bytes(2, ["something else entirely"]))
    with pytest.raises(ReleaseError, match="already published with different content"):
        repo.publish_landmarks(other, 2)
    with pytest.raises(ReleaseError, match="not v3"):
        repo.publish_landmarks(other, 3)
    fetched = client(url, tmp_path, root).download_landmarks(2, tmp_path / "landmarks-v2.json")
    assert fetched.read_bytes() == (releases["1.1.0"] / "landmarks.json").read_bytes()


def test_publisher_refuses_versions_not_above_the_latest(repo, releases, tmp_path):
    repo.publish_release(releases["1.1.0"])
    with pytest.raises(ReleaseError, match="not newer than the latest published release 1.1.0"):
        repo.publish_release(releases["1.0.0"])
    assert repo.latest_version() == ReleaseVersion(1, 1, 0)
    with pytest.raises(ReleaseError, match="already initialised"):
        repo.init()


def test_keys_are_private_and_the_root_key_can_go_offline(repo, releases, root, url, tmp_path):
    for role in ("root", "targets", "snapshot", "timestamp"):
        [key] = repo.keys_dir.glob(f"{role}-*.pem")
        assert key.stat().st_mode & 0o777 == 0o600
    offline = tmp_path / "offline-root.pem"
    repo.export_root_key(offline)
    assert offline.stat().st_mode & 0o777 == 0o600
    assert not list(repo.keys_dir.glob("root*.pem"))
    repo.publish_release(releases["1.0.0"])  # publishing needs no root key
    with pytest.raises(ReleaseError, match="needs 1 of the 1 root keys .* but only 0 are at hand"):
        repo.rotate_root({"timestamp": generate_signer()})
    assert repo.rotate_root({"timestamp": generate_signer()}, root_key=offline) == 2
    assert str(client(url, tmp_path, root).pull(tmp_path / "installed").version) == "1.0.0"


def test_periodic_timestamp_refresh_keeps_clients_working(repo, releases, root, url, tmp_path):
    repo.publish_release(releases["1.0.0"])
    first = Metadata.from_file(str(repo.metadata_dir / "timestamp.json")).signed
    assert repo.refresh_timestamp(timedelta(hours=2)) == first.version + 1
    refreshed = Metadata.from_file(str(repo.metadata_dir / "timestamp.json")).signed
    assert refreshed.expires - datetime.now(timezone.utc) < timedelta(hours=2, minutes=1)
    assert [str(r.version) for r in client(url, tmp_path, root).list_releases()] == ["1.0.0"]


# ---- attacks --------------------------------------------------------------------------------


@pytest.fixture
def installed(repo, releases, root, url, tmp_path) -> Path:
    """Release 1.0.0 installed from the honest server; 1.1.0 published afterwards."""
    destination = tmp_path / "installed"
    repo.publish_release(releases["1.0.0"])
    client(url, tmp_path, root).pull(destination)
    repo.publish_release(releases["1.1.0"])
    return destination


def test_flipped_byte_in_weights_is_refused(repo, releases, root, installed, tmp_path):
    weights = bytearray((releases["1.1.0"] / "model.safetensors").read_bytes())
    weights[100] ^= 0x01
    app = tampering(repo.repository_dir, {target_url(releases["1.1.0"], "model.safetensors"): body(bytes(weights))})
    with serve(app) as evil:
        assert_refused_and_intact(lambda: client(evil, tmp_path, root).pull(installed), installed, "does not match its signed hash")
    assert installed_version(installed) == "1.0.0"


def test_metadata_signed_by_a_key_not_in_root_is_refused(repo, root, installed, tmp_path):
    forged = Metadata.from_file(str(repo.metadata_dir / "timestamp.json"))
    forged.signed.version += 1
    forged.sign(generate_signer())  # mallory's key replaces the real signature
    with serve(tampering(repo.repository_dir, {"/metadata/timestamp.json": body(forged.to_bytes())})) as evil:
        assert_refused_and_intact(
            lambda: client(evil, tmp_path, root).pull(installed), installed, "not signed by the keys the trusted root names"
        )


def test_rollback_to_a_lower_version_is_refused(repo, releases, root, tmp_path):
    destination = tmp_path / "installed"
    served = tmp_path / "served"
    repo.publish_release(releases["1.0.0"])
    old_repository = tmp_path / "old-repository"
    shutil.copytree(repo.repository_dir, old_repository)  # the repository as it was when only 1.0.0 existed
    repo.publish_release(releases["1.1.0"])
    shutil.copytree(repo.repository_dir, served)
    with serve(make_repository_app(served)) as base:
        client(base, tmp_path, root).pull(destination)
        # Asking for the older release explicitly.
        assert_refused_and_intact(
            lambda: client(base, tmp_path, root).pull(destination, "1.0.0"), destination, r"refusing release 1\.0\.0.*rollback"
        )
        # The server starts replaying the old, validly signed repository: TUF's metadata versions catch it...
        shutil.rmtree(served)
        shutil.copytree(old_repository, served)
        assert_refused_and_intact(lambda: client(base, tmp_path, root).pull(destination), destination, "went backwards")
        # ...and with TUF's metadata cache gone, the release-level record of what was installed still does.
        shutil.rmtree(TrustStore(tmp_path / "cache", base).metadata_dir)
        assert_refused_and_intact(lambda: client(base, tmp_path, root).pull(tmp_path / "elsewhere"), destination, "rollback")
    # A mirror this machine never used, replaying the old repository: the installed release itself is the record.
    with serve(make_repository_app(old_repository)) as mirror:
        assert_refused_and_intact(lambda: client(mirror, tmp_path, root).pull(destination), destination, "already holds release 1.1.0")
    assert installed_version(destination) == "1.1.0"


def test_an_older_release_asked_for_by_version_installs_beside_a_newer_one(repo, releases, root, url, tmp_path, monkeypatch, capsys):
    """Rollback protection guards each directory's own history (issue 18): after 1.1.0, the dashboard's own command
    for 1.0.0 (`--version 1.0.0 --to ./cairn-1.0.0`) installs it in another directory; the newer one is untouched."""
    repo.publish_release(releases["1.0.0"])
    repo.publish_release(releases["1.1.0"])
    newer = tmp_path / "cairn-1.1.0"
    client(url, tmp_path, root).pull(newer)
    root_file = tmp_path / "root.json"
    root_file.write_bytes(root)
    older = tmp_path / "cairn-1.0.0"
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "release",
        "pull",
        url,
        "--version",
        "1.0.0",
        "--to",
        older,
        "--root",
        root_file,
        "--cache-dir",
        tmp_path / "cache",
    )
    assert code == 0, err
    assert installed_version(older) == "1.0.0" and installed_version(newer) == "1.1.0"
    assert str(verify_installed(older, root, tmp_path / "cache").version) == "1.0.0"
    # the directory holding 1.1.0 still refuses to go back, with the way out in the message
    assert_refused_and_intact(lambda: client(url, tmp_path, root).pull(newer, "1.0.0"), newer, "already holds release 1.1.0.*another --to")
    # the machine still remembers 1.1.0: a repository whose latest went back is refused anywhere
    assert TrustStore(tmp_path / "cache", url).installed().version == ReleaseVersion(1, 1, 0)


def test_same_version_with_different_content_is_refused(tmp_path):
    trust = TrustStore(tmp_path / "cache", "http://127.0.0.1:1")
    trust.record_installed(ReleaseVersion(1, 1, 0), "a" * 64)
    trust.check_not_rollback(ReleaseVersion(1, 1, 0), "a" * 64)
    trust.check_not_rollback(ReleaseVersion(1, 2, 0), "b" * 64)
    with pytest.raises(ReleaseError, match="different manifest"):
        trust.check_not_rollback(ReleaseVersion(1, 1, 0), "b" * 64)


def test_expired_timestamp_is_refused(repo, releases, root, installed, clock, url, tmp_path):
    clock.now -= timedelta(days=3)  # everything signed now expired two days ago: a frozen server
    repo.refresh_timestamp()
    assert_refused_and_intact(lambda: client(url, tmp_path, root).pull(installed), installed, "expired.*freeze")


def test_weights_with_another_releases_landmarks_are_refused(repo, releases, root, installed, tmp_path):
    # On the wire: release 1.0.0's landmark file swapped for 1.1.0's.
    swapped = (releases["1.1.0"] / "landmarks.json").read_bytes()
    app = tampering(repo.repository_dir, {target_url(releases["1.0.0"], "landmarks.json"): body(swapped)})
    fresh = tmp_path / "fresh"
    with serve(app) as evil:
        with pytest.raises(ReleaseError, match=r"refused releases/1\.0\.0/landmarks\.json .*signed length"):
            client(evil, tmp_path / "other-user", root).pull(fresh, "1.0.0")
    assert not fresh.exists()

    # On disk: the content-level check refuses the mix, and so does the publisher.
    mixed = tmp_path / "mixed"
    shutil.copytree(releases["1.0.0"], mixed)
    shutil.copy(releases["1.1.0"] / "landmarks.json", mixed / "landmarks.json")
    manifest = json.loads((mixed / "manifest.json").read_bytes())
    manifest["files"]["landmarks.json"] = dict(zip(("sha256", "length"), file_sha256(mixed / "landmarks.json")))
    (mixed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ReleaseError, match="refusing to mix weights and landmarks"):
        check_release_dir(mixed)
    with pytest.raises(ReleaseError, match="refusing to mix"):
        repo.publish_release(mixed)


def test_a_signed_but_mixed_release_is_refused_by_the_client(repo, releases, root, installed, tmp_path, monkeypatch):
    """Even a compromised publisher that signs a mixed release cannot get it installed."""
    mixed = tmp_path / "mixed"
    shutil.copytree(releases["1.1.0"], mixed)
    manifest = json.loads((mixed / "manifest.json").read_bytes())
    manifest["version"] = "1.2.0"
    shutil.copy(releases["1.0.0"] / "landmarks.json", mixed / "landmarks.json")
    manifest["files"]["landmarks.json"] = dict(zip(("sha256", "length"), file_sha256(mixed / "landmarks.json")))
    (mixed / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(repository_module, "check_release_dir", lambda d: parse_manifest((d / "manifest.json").read_bytes()))
    repo.publish_release(mixed)
    with serve(make_repository_app(repo.repository_dir)) as base:
        assert_refused_and_intact(lambda: client(base, tmp_path, root).pull(installed), installed, "refusing to mix weights and landmarks")


def test_endless_data_is_cut_at_the_signed_length(repo, releases, root, installed, tmp_path):
    sent = []

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(4096):  # capped at 256 MiB so a broken client cannot hang the test
            await response.write(b"\0" * 65536)
            sent.append(65536)
        return response

    app = tampering(repo.repository_dir, {target_url(releases["1.1.0"], "model.safetensors"): endless})
    with serve(app) as evil:
        assert_refused_and_intact(lambda: client(evil, tmp_path, root).pull(installed), installed, "more than the signed length")
    assert sum(sent) < 64 << 20


def test_interrupted_download_leaves_the_installed_release(repo, releases, root, installed, tmp_path):
    weights = (releases["1.1.0"] / "model.safetensors").read_bytes()

    async def cut_short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(weights))})
        await response.prepare(request)
        await response.write(weights[: len(weights) // 2])
        request.transport.close()
        return response

    app = tampering(repo.repository_dir, {target_url(releases["1.1.0"], "model.safetensors"): cut_short})
    with serve(app) as evil:
        assert_refused_and_intact(lambda: client(evil, tmp_path, root).pull(installed), installed, "download failed")


def test_a_swap_interrupted_between_its_renames_is_undone(repo, releases, root, installed, tmp_path):
    """A crash after moving the old release aside but before moving the new one in."""
    aside = installed.parent / f".{installed.name}.previous"
    installed.rename(aside)
    weights = bytearray((releases["1.1.0"] / "model.safetensors").read_bytes())
    weights[0] ^= 1
    app = tampering(repo.repository_dir, {target_url(releases["1.1.0"], "model.safetensors"): body(bytes(weights))})
    with serve(app) as evil, pytest.raises(ReleaseError, match="signed hash"):
        client(evil, tmp_path, root).pull(installed)
    assert installed_version(installed) == "1.0.0" and not aside.exists()
    assert str(verify_installed(installed, root).version) == "1.0.0"


def test_root_rotation_is_followed_from_v1_to_v3(repo, releases, root, url, tmp_path):
    destination = tmp_path / "installed"
    repo.publish_release(releases["1.0.0"])
    client(url, tmp_path, root).pull(destination)  # this machine now caches metadata under root v1
    assert repo.rotate_root({"root": generate_signer(), "timestamp": generate_signer()}) == 2
    assert repo.rotate_root({"root": generate_signer(), "targets": generate_signer(), "snapshot": generate_signer()}) == 3
    repo.publish_release(releases["1.1.0"])

    assert str(client(url, tmp_path, root).pull(destination).version) == "1.1.0"
    assert (TrustStore(tmp_path / "cache", url).metadata_dir / "root_history" / "3.root.json").is_file()
    assert str(client(url, tmp_path / "new-user", root).pull(tmp_path / "new-user-release").version) == "1.1.0"
    assert str(verify_installed(destination, root).version) == "1.1.0"


def test_new_root_signed_only_by_the_new_keys_is_refused(repo, root, installed, tmp_path):
    forged = Metadata.from_file(str(repo.metadata_dir / "1.root.json"))
    attacker = generate_signer()
    for keyid in list(forged.signed.roles["root"].keyids):
        forged.signed.revoke_key(keyid, "root")
    forged.signed.add_key(attacker.public_key, "root")
    forged.signed.version = 2
    forged.sign(attacker)
    with serve(tampering(repo.repository_dir, {"/metadata/2.root.json": body(forged.to_bytes())})) as evil:
        assert_refused_and_intact(lambda: client(evil, tmp_path, root).pull(installed), installed, "root was signed by 0/1 keys")


# ---- trust on first use, offline verify, CLI errors -----------------------------------------


def test_trust_on_first_use_warns_pins_and_never_repins_silently(repo, releases, root, url, tmp_path):
    repo.publish_release(releases["1.0.0"])
    warnings: list[str] = []
    tofu = ReleaseClient(url, tmp_path / "cache", warn=warnings.append)
    assert str(tofu.pull(tmp_path / "installed").version) == "1.0.0"
    assert len(warnings) == 1 and "trusting root on first use" in warnings[0]
    assert tofu.trust.pinned_root() == root
    ReleaseClient(url, tmp_path / "cache", warn=warnings.append).list_releases()
    assert len(warnings) == 1  # pinned: no second fetch, no second warning

    other = ReleaseRepository(tmp_path / "other")
    other.init()
    with pytest.raises(ReleaseError, match="a different root is already pinned"):
        ReleaseClient(url, tmp_path / "cache", root=(other.metadata_dir / "1.root.json").read_bytes()).list_releases()


def test_verify_detects_edits_to_an_installed_release(repo, releases, root, installed, tmp_path):
    assert str(verify_installed(installed, root).version) == "1.0.0"
    weights = installed / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ReleaseError, match="model.safetensors does not match its signed hash"):
        verify_installed(installed, root)
    weights.write_bytes(original)

    (installed / "notes.txt").write_text("extra")
    with pytest.raises(ReleaseError, match="unexpected file 'notes.txt'"):
        verify_installed(installed, root)
    (installed / "notes.txt").unlink()

    other = ReleaseRepository(tmp_path / "other")
    other.init()
    with pytest.raises(ReleaseError, match="not signed by the keys"):
        verify_installed(installed, (other.metadata_dir / "1.root.json").read_bytes())

    # a machine that never pulled it has no pinned root for it: refused, unless only integrity is asked for by name
    with pytest.raises(ReleaseError, match="no pinned root vouches for it"):
        verify_installed(installed, cache_dir=tmp_path / "nowhere")
    warnings: list[str] = []
    assert str(verify_installed(installed, cache_dir=tmp_path / "nowhere", warn=warnings.append, integrity_only=True).version) == "1.0.0"
    assert "integrity, not origin" in warnings[0]
    # the machine that pulled it takes the anchor from its own record, not from the directory
    assert str(verify_installed(installed, cache_dir=tmp_path / "cache").version) == "1.0.0"


def test_a_directory_cannot_vouch_for_itself(repo, releases, root, url, tmp_path):
    """Issue 12, attack 6: an attacker-signed replacement, with a .tuf/source.json of its choosing, is refused; so is
    an older, validly signed release swapped into a directory that held a newer one."""
    cache = tmp_path / "cache"
    repo.publish_release(releases["1.0.0"])
    ReleaseClient(url, cache, root=root).pull(tmp_path / "old")
    repo.publish_release(releases["1.1.0"])
    installed = tmp_path / "installed"
    ReleaseClient(url, cache, root=root).pull(installed)
    assert str(verify_installed(installed, cache_dir=cache).version) == "1.1.0"

    # the attacker's own repository signs a release and the attacker rewrites source.json to point at it
    evil = ReleaseRepository(tmp_path / "evil")
    evil.init()
    evil.publish_release(make_release(tmp_path / "evil-src", "1.1.0", landmarks_version=2))
    with serve(make_repository_app(evil.repository_dir)) as evil_url:
        ReleaseClient(evil_url, tmp_path / "attacker-cache", root=(evil.metadata_dir / "1.root.json").read_bytes()).pull(
            tmp_path / "forged"
        )
    shutil.rmtree(installed)
    shutil.copytree(tmp_path / "forged", installed)
    with pytest.raises(ReleaseError, match="not signed by the keys|differs from the one installed"):
        verify_installed(installed, cache_dir=cache)

    # an older release, validly signed by the real keys, swapped in
    shutil.rmtree(installed)
    shutil.copytree(tmp_path / "old", installed)
    with pytest.raises(ReleaseError, match="an older release swapped in"):
        verify_installed(installed, cache_dir=cache)


def test_embed_verifies_a_pulled_release_before_using_it(repo, releases, root, url, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    repo.publish_release(releases["1.0.0"])
    installed = tmp_path / "installed"
    ReleaseClient(url, cache, root=root).pull(installed)
    weights = installed / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    monkeypatch.setenv("CAIRN_CACHE_DIR", str(cache))
    code, out, err = run_cli(monkeypatch, capsys, "embed", "--release", installed, "a text")
    assert code == 2 and out == "", (code, out, err)
    assert "does not match its signed hash" in err and "Traceback" not in err


def test_cli_reports_refusals_as_one_line(repo, releases, root, installed, tmp_path, monkeypatch, capsys):
    weights = bytearray((releases["1.1.0"] / "model.safetensors").read_bytes())
    weights[0] ^= 0xFF
    app = tampering(repo.repository_dir, {target_url(releases["1.1.0"], "model.safetensors"): body(bytes(weights))})
    root_file = tmp_path / "root.json"
    root_file.write_bytes(root)
    with serve(app) as evil:
        code, out, err = run_cli(
            monkeypatch, capsys, "release", "pull", evil, "--root", root_file, "--to", installed, "--cache-dir", tmp_path / "cache"
        )
    assert code != 0
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "does not match its signed hash" in error_lines[0]
    assert "Traceback" not in err
    assert installed_version(installed) == "1.0.0"


def test_pull_refuses_to_replace_a_directory_that_is_not_a_release(repo, releases, root, url, tmp_path):
    repo.publish_release(releases["1.0.0"])
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ReleaseError, match="holds no installed release"):
        client(url, tmp_path, root).pull(precious)
    assert (precious / "thesis.tex").read_text() == "years of work"


# ---- the server -----------------------------------------------------------------------------


def request(base: str, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
    """Send `path` exactly as given (no client-side normalisation of `..` or escapes)."""
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_server_refuses_traversal_and_serves_ranges(repo, releases, url):
    repo.publish_release(releases["1.0.0"])
    weights_path = target_url(releases["1.0.0"], "model.safetensors")
    weights = (releases["1.0.0"] / "model.safetensors").read_bytes()
    (repo.targets_dir / "releases" / "1.0.0" / f"{'0' * 64}.config.json").symlink_to(next(repo.keys_dir.glob("timestamp-*.pem")))
    for path in (
        "/metadata/../keys/root.pem",
        "/metadata/..%2f..%2fkeys%2froot.pem",
        "/metadata/%2e%2e/%2e%2e/keys/root.pem",
        "/targets/releases/1.0.0/../../../../keys/root.pem",
        "/targets/releases/1.0.0/..%2f..%2f..%2f..%2fkeys%2froot.pem",
        "/targets/releases/1.0.0/.hidden",
        f"/targets/releases/1.0.0/{'0' * 64}.config.json",
        "/metadata/root.json.bak",
        "/metadata/0.root.json",
        "/.lock",
    ):
        status, content = request(url, path)
        assert status == 404, path
        assert b"PRIVATE KEY" not in content
    assert request(url, weights_path, method="POST")[0] == 405
    assert request(url, weights_path) == (200, weights)
    assert request(url, weights_path, {"Range": "bytes=10-19"}) == (206, weights[10:20])
    assert request(url, weights_path, {"Range": "bytes=999999-"})[0] == 416
    assert request(url, "/metadata/1.root.json")[0] == 200


def test_server_answers_503_beyond_its_download_limit(repo):
    with serve(make_repository_app(repo.repository_dir, max_concurrent=0)) as base:
        assert request(base, "/metadata/timestamp.json")[0] == 503
