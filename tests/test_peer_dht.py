"""The peer's DHT primitives against real hivemind nodes (p2pd on 127.0.0.1), no mocks.

One small swarm (a coordinator and three peers) is shared by the module to keep the machine's two
cores free; each test uses its own run id, so the tests do not see each other's records.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import stat
import threading
import time
import urllib.request
from functools import partial
from pathlib import Path

import hivemind
import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils import MSGPackSerializer, get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from cairn.peer.dht_util import _behind_nat, check_reachable, make_dht
from cairn.protocol.identity import load_or_create_identity, peer_public_id
from cairn.peer.leases import ShardLease
from cairn.peer.metrics import create_peer_metrics, start_metrics_server
from cairn.peer.records import publish_record, read_records, shards_in_use
from cairn.peer.start_barrier import ready_peers, wait_for_peers
from cairn.protocol.dht_keys import ContributionRecord, LeaseRecord, RunKeys, lease_subkey, make_validators, owner_subkey
from cairn.protocol.errors import CairnError

pytestmark = pytest.mark.timeout(120)
slow = pytest.mark.slow  # starts real hivemind nodes

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
RUNS = ("t-records", "t-owner", "t-schema", "t-race", "t-expiry", "t-release", "t-squat", "t-ready", "t-ready-short")


def _validators(key: RSAPrivateKey) -> list:
    return [validator for run in RUNS for validator in make_validators(run, key)]


@dataclasses.dataclass
class Swarm:
    coordinator: hivemind.DHT
    peers: list[hivemind.DHT]
    keys: list[RSAPrivateKey]  # peers' keys, same order
    initial_peers: list[str]


def _p2pd_processes() -> dict[int, int]:
    """Live (not zombie) p2pd processes descending from this test process: pid -> parent pid."""
    table: dict[int, tuple[str, int, str]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        name = stat_line[stat_line.index("(") + 1 : stat_line.rindex(")")]
        state, parent = stat_line[stat_line.rindex(")") + 2 :].split()[:2]
        table[int(entry)] = (name, int(parent), state)

    def descends(pid: int) -> bool:
        while pid in table and pid > 1:
            pid = table[pid][1]
            if pid == os.getpid():
                return True
        return False

    return {pid: info[1] for pid, info in table.items() if info[0] == "p2pd" and info[2] != "Z" and descends(pid)}


def _assert_gone(pids) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
        if not alive:
            return
        time.sleep(0.2)
    pytest.fail(f"p2pd processes left running: {alive}")


def _state(pid: int) -> str:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "Z"
    return stat_line[stat_line.rindex(")") + 2 :].split()[0]


@pytest.fixture(scope="module")
def swarm():
    dhts: list[hivemind.DHT] = []
    try:
        coordinator = make_dht([], validators=_validators(RSAPrivateKey()), host_maddrs=LOCAL)
        dhts.append(coordinator)
        initial_peers = [str(addr) for addr in coordinator.get_visible_maddrs()]
        keys = [RSAPrivateKey() for _ in range(3)]
        for key in keys:
            dhts.append(make_dht(initial_peers, validators=_validators(key), host_maddrs=LOCAL))
        yield Swarm(coordinator, dhts[1:], keys, initial_peers)
    finally:
        started = _p2pd_processes()
        for dht in reversed(dhts):
            dht.shutdown()
        _assert_gone(started)


def _record(dht: hivemind.DHT, **changes) -> ContributionRecord:
    fields = dict(
        display_name="alice's laptop",
        peer_id=dht.peer_id.to_base58(),
        samples=3200,
        steps=100,
        loss=1.25,
        samples_per_second=42.5,
        device="cpu",
        uptime_seconds=600.0,
        shard=1,
        protocol_version=1,
        reported_at=time.time(),
        epoch=7,
        shards_completed=0,
        probe_epoch=-1,
        probe_shard=-1,
        probe_offset=0,
        probe_count=0,
        probe_loss=0.0,
    )
    return ContributionRecord(**{**fields, **changes})


# identity


def test_identity_persists_with_private_mode(tmp_path):
    path = tmp_path / "keys" / "identity.pem"
    first = load_or_create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_or_create_identity(path)
    assert again.get_public_key().to_bytes() == first.get_public_key().to_bytes()
    assert peer_public_id(again) == peer_public_id(first.get_public_key())
    assert len(peer_public_id(first)) == 16
    assert peer_public_id(RSAPrivateKey()) != peer_public_id(first)


def test_identity_refuses_unsafe_or_broken_files(tmp_path):
    path = tmp_path / "identity.pem"
    load_or_create_identity(path)
    path.chmod(0o644)
    with pytest.raises(CairnError, match="chmod 600"):
        load_or_create_identity(path)
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(CairnError, match="not an unencrypted PEM"):
        load_or_create_identity(path)


# contribution records


@slow
def test_record_round_trip_between_nodes(swarm):
    alice, alice_key = swarm.peers[0], swarm.keys[0]
    record = _record(alice)
    assert publish_record(alice, "t-records", record, ttl_seconds=60, identity=alice_key)
    assert read_records(swarm.coordinator, "t-records") == {peer_public_id(alice_key): record}
    assert read_records(swarm.peers[1], "t-records") == {peer_public_id(alice_key): record}


@slow
def test_only_the_owner_can_write_its_record(swarm):
    alice, alice_key = swarm.peers[0], swarm.keys[0]
    mallory, mallory_key = swarm.peers[1], swarm.keys[1]
    honest = _record(alice, samples=10)
    assert publish_record(alice, "t-owner", honest, ttl_seconds=60, identity=alice_key)
    key = RunKeys("t-owner").contributions
    inflated = _record(alice, samples=10**6).dict()
    later = get_dht_time() + 120  # a later expiration would win if the record were accepted

    # through the normal API: mallory's node signs for mallory's key only, so the record goes out unsigned
    assert not mallory.store(key, inflated, later, subkey=owner_subkey(alice_key))

    # forged on the wire, straight to the coordinator: a garbage signature, then mallory's own signature
    garbage = _signed_value(inflated, key, alice_key, later, signer=None)
    wrong_signer = _signed_value(inflated, key, alice_key, later, signer=mallory_key)
    correct = _signed_value(_record(alice, samples=11).dict(), key, alice_key, later, signer=alice_key)
    target = swarm.coordinator.peer_id
    assert mallory.run_coroutine(_raw_store(target, key, owner_subkey(alice_key), garbage, later)) == [False]
    assert mallory.run_coroutine(_raw_store(target, key, owner_subkey(alice_key), wrong_signer, later)) == [False]
    assert read_records(swarm.coordinator, "t-owner")[peer_public_id(alice_key)] == honest

    # the same forged path with the owner's signature is accepted: the refusals above were the signature's doing
    assert mallory.run_coroutine(_raw_store(target, key, owner_subkey(alice_key), correct, later)) == [True]


def _signed_value(value: dict, key: str, owner: RSAPrivateKey, expiration: float, signer: RSAPrivateKey | None) -> bytes:
    """`value` as it travels for `owner`'s subkey, with a signature by `signer` (None: garbage bytes)."""
    value_bytes = MSGPackSerializer.dumps(value)
    record = DHTRecord(
        key=DHTID.generate(source=key).to_bytes(),
        subkey=MSGPackSerializer.dumps(owner_subkey(owner)),
        value=value_bytes,
        expiration_time=expiration,
    )
    if signer is None:
        signature = base64.b64encode(b"\x00" * 256)
    else:
        signature = signer.sign(MSGPackSerializer.dumps(dataclasses.astuple(record)))
    return value_bytes + b"[signature:" + signature + b"]"


def _raw_store(target, key: str, subkey: bytes, value: bytes, expiration: float):
    """A function for dht.run_coroutine that sends one store RPC, bypassing the sender's own validators."""
    return partial(_send_store, target=target, key=key, subkey=subkey, value=value, expiration=expiration)


async def _send_store(_dht, node, target, key: str, subkey: bytes, value: bytes, expiration: float):
    key_id = DHTID.generate(source=key)
    accepted = await node.protocol.call_store(target, [key_id], [value], expiration, subkeys=[subkey])
    return list(accepted)  # a protobuf repeated field does not pickle, and run_coroutine would then hang


@slow
@pytest.mark.parametrize(
    "change",
    [
        {"extra_field": 1},
        {"loss": 1},  # an int where a float belongs
        {"samples": 3200.0},
        {"samples": "3200"},
        {"shard": True},
        {"device": "tpu"},
        {"display_name": "x" * 65},
        {"display_name": "\x1b[31mred"},
        {"samples_per_second": -1.0},
        {"samples": 2**63},  # issue 12: overflowed the coordinator's SQLite ledger
        {"samples": 10**15},  # issue 12: more than 600 s of uptime allow
        {"uptime_seconds": float("inf")},
    ],
)
def test_schema_rejects_malformed_records(swarm, change):
    alice, alice_key = swarm.peers[0], swarm.keys[0]
    value = {**_record(alice).dict(), **change}
    key = RunKeys("t-schema").contributions
    assert not alice.store(key, value, get_dht_time() + 60, subkey=owner_subkey(alice_key))
    assert read_records(swarm.coordinator, "t-schema") == {}


@slow
def test_schema_covers_cairn_keys_and_leaves_hivemind_keys_alone(swarm):
    alice = swarm.peers[0]
    keys = RunKeys("t-schema")
    expiration = get_dht_time() + 60
    assert not alice.store(keys.contributions, {"samples": 1}, expiration)  # needs an owner subkey
    assert not alice.store(keys.contributions, _record(alice).dict(), expiration, subkey="plain")  # only under the owner's tag
    tag = owner_subkey(swarm.keys[0])
    for padded in (b"x" + tag, tag + b"x"):  # the same key (signed: the tag is in it) under other subkeys: another identity
        assert not alice.store(keys.contributions, _record(alice).dict(), expiration, subkey=padded), padded[-12:]
    alice_tag, bob_tag = owner_subkey(swarm.keys[0]), owner_subkey(swarm.keys[1])
    lease = LeaseRecord(claimed_at=expiration - 60, expires_at=expiration - 30, offset=5, updated_at=expiration - 60).dict()
    assert not alice.store(keys.shard_leases, lease, expiration, subkey="0")  # a plain shard number: anyone could overwrite it
    assert not alice.store(keys.shard_leases, lease, expiration, subkey=lease_subkey(0, bob_tag))  # bob's lease: only bob
    assert not alice.store(keys.shard_leases, lease, expiration, subkey=b"01" + alice_tag)  # one spelling per shard
    assert not alice.store(keys.shard_leases, {**lease, "offset": -1}, expiration, subkey=lease_subkey(1, alice_tag))
    assert not alice.store(keys.shard_leases, {"holder": "x", "expires_at": 1.0}, expiration, subkey=lease_subkey(1, alice_tag))  # v2
    assert alice.store(keys.shard_leases, lease, expiration, subkey=lease_subkey(1, alice_tag))
    # hivemind.Optimizer's own records share the prefix and must pass
    assert alice.store("t-schema_grad_averager.0b01", b"anything", expiration)


# shard leases


@slow
def test_three_peers_racing_for_two_shards(swarm):
    leases = [
        ShardLease(dht, "t-race", owner_subkey(key), num_shards=2, lease_seconds=20, settle_seconds=0.5)
        for dht, key in zip(swarm.peers, swarm.keys)
    ]
    results: dict[int, int | None] = {}
    start = threading.Barrier(len(leases))

    def race(index: int) -> None:
        start.wait()
        results[index] = leases[index].acquire(preferred=0)  # all want the same shard first

    threads = [threading.Thread(target=race, args=(index,)) for index in range(len(leases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    held = [shard for shard in results.values() if shard is not None]
    assert sorted(held) == [0, 1], results
    loser = next(lease for index, lease in enumerate(leases) if results[index] is None)
    winners = [lease for lease in leases if lease is not loser]
    assert all(lease.renew() for lease in winners)
    assert loser.acquire() is None

    freed = winners[0].shard
    winners[0].release()
    assert loser.acquire() == freed
    assert sorted(lease.shard for lease in (loser, winners[1])) == [0, 1]
    for lease in leases:
        lease.release()


@slow
def test_departed_holders_shard_returns_to_the_pool_and_keeps_its_progress(swarm):
    departing_key = RSAPrivateKey()
    departing = make_dht(swarm.initial_peers, validators=_validators(departing_key), host_maddrs=LOCAL)
    try:
        own_p2pd = [pid for pid, parent in _p2pd_processes().items() if parent == departing.pid]
        assert len(own_p2pd) == 1
        holder = ShardLease(departing, "t-expiry", owner_subkey(departing_key), num_shards=1, lease_seconds=3, settle_seconds=0.3)
        assert holder.acquire() == 0
        holder.save_progress(0, 1234)
    finally:
        departing.shutdown()  # gone without releasing, like a crashed peer
    _assert_gone(own_p2pd)

    successor = ShardLease(swarm.peers[0], "t-expiry", owner_subkey(swarm.keys[0]), num_shards=1, lease_seconds=3, settle_seconds=0.3)
    assert successor.acquire() is None  # still leased
    deadline = time.monotonic() + 10
    while successor.acquire() is None:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.5)
    assert successor.progress(0) == 1234
    successor.save_progress(0, 2000)
    assert ShardLease(swarm.peers[1], "t-expiry", owner_subkey(swarm.keys[1]), num_shards=1).progress(0) == 2000
    successor.release()


@slow
def test_release_frees_the_shard_at_once_and_renewal_keeps_it(swarm):
    first = ShardLease(swarm.peers[0], "t-release", owner_subkey(swarm.keys[0]), num_shards=1, lease_seconds=1.5, settle_seconds=0.2)
    second = ShardLease(swarm.peers[1], "t-release", owner_subkey(swarm.keys[1]), num_shards=1, lease_seconds=1.5, settle_seconds=0.2)
    assert first.acquire() == 0
    with first.renewing():
        time.sleep(3)  # twice the lease: only the background renewals keep it
        assert second.acquire() is None
        assert not first.lost
    first.release()
    assert second.acquire() == 0
    assert first.acquire() is None
    second.release()


# metrics


def test_metrics_server_serves_the_peer_metrics():
    metrics = create_peer_metrics()
    metrics.samples.inc(32)
    metrics.observe_round("success", 1.5)
    server = start_metrics_server(0, metrics.registry, host="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read().decode()
    finally:
        server.stop()
    for name in (
        "cairn_samples_total 32.0",
        "cairn_steps_total",
        "cairn_loss",
        'cairn_allreduce_rounds_total{outcome="success"} 1.0',
        'cairn_allreduce_rounds_total{outcome="timeout"} 0.0',
        "cairn_allreduce_duration_seconds_bucket",
        "cairn_bytes_sent_total",
        "cairn_bytes_received_total",
        "cairn_visible_peers",
        "cairn_global_step",
    ):
        assert name in body
    with pytest.raises(ValueError):
        metrics.observe_round("weird", 1.0)


# make_dht and reachability


@slow
def test_make_dht_keeps_the_peer_id_of_an_identity_and_checks_reachability(swarm, tmp_path):
    identity = tmp_path / "identity.pem"
    validators = _validators(load_or_create_identity(identity))
    start = partial(make_dht, swarm.initial_peers, validators=validators, host_maddrs=LOCAL, identity_path=identity)
    server = start()
    try:
        reachability = check_reachable(server)
        assert reachability, reachability.reason
        with pytest.raises(CairnError, match="another running peer uses the identity"):
            start()
        peer_id = server.peer_id
    finally:
        server.shutdown()
    client = start(client_mode=True)
    try:
        assert client.peer_id == peer_id  # the same key gives the same PeerID after a restart
        reachability = check_reachable(client)
        assert not reachability and "client mode" in reachability.reason
    finally:
        client.shutdown()


@slow
def test_a_second_node_with_an_identity_in_use_is_refused_without_asking_the_network(tmp_path):
    """Issue 18: the guard was hivemind's DHT lookup for the PeerID, which misses under load (the test above failed
    with "DID NOT RAISE"). A lock on the identity file refuses a second node on this machine at once: even with no
    initial peers, where hivemind does not check at all. The lock goes with the first node's shutdown."""
    identity = tmp_path / "identity.pem"
    validators = _validators(load_or_create_identity(identity))
    start = partial(make_dht, [], validators=validators, host_maddrs=LOCAL, identity_path=identity)
    first = start()
    try:
        with pytest.raises(CairnError, match="another running peer uses the identity"):
            start()
    finally:
        first.shutdown()
    start().shutdown()


@slow
def test_unreachable_initial_peer_is_a_clear_error():
    dead = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWLVdzfEbZ9KCMP99yLSivPmiXaan4gd6bShm5cLwFDxmU"
    with pytest.raises(CairnError, match="could not reach any initial peer"):
        make_dht([dead], validators=[], host_maddrs=LOCAL)


def test_private_addresses_behind_public_initial_peers_mean_nat():
    coordinator = ["/ip4/93.184.216.34/tcp/31337/p2p/12D3KooWLVdzfEbZ9KCMP99yLSivPmiXaan4gd6bShm5cLwFDxmU"]
    assert _behind_nat(["/ip4/192.168.1.20/tcp/4000", "/ip4/127.0.0.1/tcp/4000"], coordinator)
    assert not _behind_nat(["/ip4/192.168.1.20/tcp/4000", "/ip4/8.8.8.8/tcp/4000"], coordinator)
    assert not _behind_nat(["/ip4/192.168.1.20/tcp/4000"], ["/ip4/192.168.1.2/tcp/31337"])  # a LAN swarm


@slow
def test_a_squatter_renewing_ordinary_leases_on_every_shard_does_not_stop_an_honest_peer(swarm):
    """Issue 12, attack 4, on real nodes: every shard leased and renewed like an honest holder's lease. The holder of
    shard 0 trains there (its signed record says so) and keeps it; the holder of shard 1 trains on nothing, so after
    the grace an honest newcomer trains on shard 1, through the squatter's renewals."""
    busy_key = swarm.keys[1]
    busy = ShardLease(swarm.peers[1], "t-squat", owner_subkey(busy_key), num_shards=2, lease_seconds=3, settle_seconds=0.3)
    squatter = ShardLease(swarm.peers[2], "t-squat", owner_subkey(swarm.keys[2]), num_shards=2, lease_seconds=3, settle_seconds=0.3)
    assert busy.acquire(preferred=0) == 0 and squatter.acquire(preferred=1) == 1
    assert publish_record(swarm.peers[1], "t-squat", _record(swarm.peers[1], shard=0), 60, identity=busy_key)
    newcomer = ShardLease(
        swarm.peers[0],
        "t-squat",
        owner_subkey(swarm.keys[0]),
        num_shards=2,
        lease_seconds=3,
        settle_seconds=0.3,
        shards_in_use=partial(shards_in_use, swarm.peers[0], "t-squat"),
        idle_grace_seconds=2.0,
    )
    with busy.renewing(), squatter.renewing():
        assert newcomer.acquire() is None  # both held; the watch on shard 1's holder starts now
        deadline = time.monotonic() + 20
        while (shard := newcomer.acquire()) is None:
            assert time.monotonic() < deadline, "the idle squatter kept its shard"
            time.sleep(0.5)
        assert shard == 1  # never the shard whose holder trains on it
        for _ in range(3):  # through three of the squatter's renewals
            time.sleep(1.0)
            assert newcomer.renew() and newcomer.shard == 1 and not newcomer.lost
        assert not busy.lost
    for lease in (newcomer, busy, squatter):
        lease.release()


@slow
def test_peers_at_the_start_barrier_see_each_other_and_start_together(swarm):
    """The barrier behind `--wait-for-peers`: hivemind's tracker shows no peer before its first samples, so peers
    waiting there must see each other through the run's `ready` key and leave the wait together, long before its
    time-out; with fewer peers than asked for, the wait ends at its time-out with the count it saw."""
    returned: dict[int, tuple[float, int]] = {}

    def wait(index: int, expected: int, timeout: float) -> None:
        seen = wait_for_peers(
            swarm.peers[index], "t-ready", swarm.keys[index], expected, running_peers=lambda: 0, stopped=lambda: False, timeout=timeout
        )
        returned[index] = (time.monotonic(), seen)

    first = threading.Thread(target=wait, args=(0, 2, 60.0))
    first.start()
    time.sleep(2.0)  # the other peer's start-up takes longer: the first must still be waiting, not gone
    assert first.is_alive()
    arrived = time.monotonic()
    wait(1, 2, 60.0)
    first.join(timeout=30)
    assert not first.is_alive()
    assert returned[0][1] == 2 and returned[1][1] == 2, returned
    assert max(at for at, _ in returned.values()) - arrived < 10.0, returned  # neither waited out its 60 s
    assert abs(returned[0][0] - returned[1][0]) < 2.0, returned  # they start within a round's matchmaking time
    assert ready_peers(swarm.peers[2], "t-ready") == {peer_public_id(swarm.keys[0]), peer_public_id(swarm.keys[1])}

    started = time.monotonic()
    assert (
        wait_for_peers(swarm.peers[2], "t-ready-short", swarm.keys[2], 2, running_peers=lambda: 0, stopped=lambda: False, timeout=2.0) == 1
    )
    assert 2.0 <= time.monotonic() - started < 10.0
    # a late joiner counts the peers already training, whose entries are long gone
    assert (
        wait_for_peers(swarm.peers[2], "t-ready-short", swarm.keys[2], 3, running_peers=lambda: 3, stopped=lambda: False, timeout=60.0) == 3
    )
    # an entry under a subkey that names no owner is refused: one identity, one place at the start line
    assert not swarm.peers[2].store(RunKeys("t-ready-short").ready, 1.0, get_dht_time() + 30, subkey="anyone")
