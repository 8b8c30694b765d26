"""Starting a peer's hivemind DHT with Cairn's defaults, and telling whether other peers can reach it.

A peer that others cannot connect to must run in client mode: it can still train and average, but it
must not announce itself as someone others can dial, or their matchmaking waits on it until timeouts.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from functools import partial
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Sequence

import hivemind
from hivemind.dht.node import DHTNode
from hivemind.dht.protocol import ValidationError
from hivemind.dht.validation import RecordValidatorBase
from hivemind.p2p import P2PDaemonError
from hivemind.utils.multiaddr import Multiaddr

from cairn.protocol.identity import load_or_create_identity, write_p2p_identity
from cairn.protocol.errors import CairnError
from cairn.network.logs import quiet_hivemind_logs


def make_dht(
    initial_peers: Sequence[str],
    *,
    validators: Sequence[RecordValidatorBase],
    host_maddrs: Sequence[str] = ("/ip4/0.0.0.0/tcp/0",),
    announce_maddrs: Sequence[str] = (),
    client_mode: bool = False,
    identity_path: Path | None = None,
    **dht_kwargs: Any,
) -> hivemind.DHT:
    """Start a DHT node with `validators` (cairn.protocol.dht_keys.make_validators) and join `initial_peers`.

    With `identity_path` (the peer's identity PEM, see peer.identity), the libp2p PeerID is derived
    from the same key, so it stays the same across restarts; hivemind then first checks that no
    running peer uses this identity, which stops two processes from sharing one contributor identity.
    Errors a user can fix (unreachable initial peers, identity in use, a clock far off) become a
    CairnError with the reason.
    """
    quiet_hivemind_logs()
    lock = IdentityLock.acquire(identity_path) if identity_path is not None else None
    with tempfile.TemporaryDirectory(prefix="cairn-p2p-") as scratch:
        p2p_identity = None
        if identity_path is not None:
            p2p_identity = Path(scratch) / "identity.p2p"  # p2pd reads it once, at start-up
            write_p2p_identity(load_or_create_identity(identity_path), p2p_identity)
        try:
            dht = hivemind.DHT(
                initial_peers=list(initial_peers) or None,
                start=True,
                record_validators=list(validators),
                host_maddrs=list(host_maddrs),
                announce_maddrs=list(announce_maddrs) or None,
                client_mode=client_mode,
                identity_path=str(p2p_identity) if p2p_identity is not None else None,
                **dht_kwargs,
            )
        except (P2PDaemonError, ValidationError, RuntimeError) as error:
            if lock is not None:
                lock.release()
            raise CairnError(_explain_start_failure(error, initial_peers, identity_path)) from None
        except BaseException:
            if lock is not None:
                lock.release()
            raise
    if lock is not None:
        lock.release_on_shutdown(dht)
    return dht


class IdentityLock:
    """An exclusive lock on IDENTITY.lock, held while a DHT node runs with that identity.

    hivemind's own guard asks the swarm whether the PeerID is already online, through a libp2p DHT lookup:
    under load the lookup can miss a peer that started a second earlier, and the duplicate starts. Two peers
    on one machine sharing an identity file (the common mistake) are refused by this lock at once and
    always; hivemind's check still covers a copy of the key on another machine.
    flock(2) locks belong to the open file: the DHT's forked processes share it, and the explicit unlock in
    shutdown releases it for all of them; after a crash it goes when the last of them exits.
    """

    def __init__(self, handle, path: Path):
        self.handle, self.path = handle, path

    @classmethod
    def acquire(cls, identity_path: Path) -> "IdentityLock | None":
        import fcntl

        path = Path(str(identity_path) + ".lock")
        try:
            handle = open(path, "a+b")
        except OSError:
            return None  # a read-only place for the key: hivemind's network check is all there is
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise CairnError(_explain_start_failure(RuntimeError("already taken"), (), identity_path)) from None
        return cls(handle, path)

    def release(self) -> None:
        import fcntl

        if not self.handle.closed:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()

    def release_on_shutdown(self, dht: hivemind.DHT) -> None:
        shutdown = dht.shutdown

        def shutdown_and_unlock(*args, **kwargs):
            try:
                return shutdown(*args, **kwargs)
            finally:
                self.release()

        dht.shutdown = shutdown_and_unlock


def _explain_start_failure(error: Exception, initial_peers: Sequence[str], identity_path: Path | None) -> str:
    text = str(error)
    if "already taken" in text:
        return (
            f"another running peer uses the identity in {identity_path}; give each peer its own identity file "
            "(if the previous run just stopped, its p2pd may still be exiting: wait a minute)"
        )
    if "bootstrap" in text:
        return f"could not reach any initial peer ({' '.join(initial_peers)}); check the addresses and the network"
    if "can't access this node" in text:
        return f"{_UNREACHABLE_ADVICE} ({text})"
    return f"could not start the DHT node: {text}"


_UNREACHABLE_ADVICE = (
    "other peers cannot connect to this machine (behind NAT or a firewall); run the peer in client mode, "
    "or forward a TCP port to it and announce that address with its public IP"
)


@dataclass(frozen=True)
class Reachability:
    """The answer of `check_reachable`: truthy when others can connect to this node; `reason` says why."""

    reachable: bool
    reason: str

    def __bool__(self) -> bool:
        return self.reachable


def check_reachable(dht: hivemind.DHT, max_peers: int = 3, timeout: float = 30.0) -> Reachability:
    """Whether other peers can open connections to `dht`; call before announcing it as a server.

    Two checks, both from what hivemind and libp2p already provide:
    1. If the initial peers have public addresses but no address of this node is public, it is behind
       NAT: libp2p lists only interface addresses until several peers confirm an observed public one.
    2. hivemind's own check (the one DHTNode runs at bootstrap): ask up to `max_peers` known peers to
       ping this node back, which also fails when our clock is more than a few seconds off.
    Check 2 alone is optimistic: libp2p answers over the connection this node opened, so it mostly
    proves that peer and clock work. A definite answer needs a third party dialing in on a fresh
    connection, which hivemind does not offer.
    """
    if dht.client_mode:
        return Reachability(False, "this node runs in client mode: it dials others and accepts no connections")
    if _behind_nat(dht.get_visible_maddrs(latest=True), dht.initial_peers or ()):
        return Reachability(False, f"{_UNREACHABLE_ADVICE} (no public address among this node's addresses)")
    asked, confirmed, failures = dht.run_coroutine(partial(_ask_for_ping_back, max_peers=max_peers, timeout=timeout))
    if failures:
        return Reachability(False, f"{_UNREACHABLE_ADVICE} ({failures[0]})")
    if asked == 0:
        return Reachability(True, "no other peer to ask yet (first node of the swarm?); assuming reachable")
    if confirmed == 0:
        return Reachability(False, f"none of the {asked} peer(s) asked answered; check the network")
    return Reachability(True, f"{confirmed} of {asked} peer(s) pinged this node back")


def _behind_nat(own_maddrs: Sequence[Any], initial_peers: Sequence[Any]) -> bool:
    """True when the initial peers are on the internet but this node has no public address of its own."""
    return any(_is_public(addr) for addr in initial_peers) and not any(_is_public(addr) for addr in own_maddrs)


def _is_public(maddr: Any) -> bool:
    addr = Multiaddr(str(maddr))
    if "p2p-circuit" in str(addr):  # a relayed address is the relay's, not ours
        return False
    for protocol in ("dns", "dns4", "dns6", "dnsaddr"):
        if protocol in addr:
            return addr[protocol] != "localhost"
    for protocol in ("ip4", "ip6"):
        if protocol in addr:
            return ip_address(addr[protocol]).is_global
    return False


async def _ask_for_ping_back(_dht: hivemind.DHT, node: DHTNode, max_peers: int, timeout: float) -> tuple[int, int, list[str]]:
    """Runs inside the DHT process: (peers asked, peers that pinged back, why the others could not)."""
    peers = [peer for peer in node.protocol.routing_table.peer_id_to_uid if peer != node.peer_id][:max_peers]

    async def ask(peer: Any) -> str | None:
        try:
            answered = await node.protocol.call_ping(peer, validate=True, strict=True)
        except ValidationError as error:
            return str(error)
        return None if answered is not None else _NO_ANSWER

    try:
        results = await asyncio.wait_for(asyncio.gather(*(ask(peer) for peer in peers)), timeout)
    except asyncio.TimeoutError:
        return len(peers), 0, []
    failures = [result for result in results if result not in (None, _NO_ANSWER)]
    return len(peers), results.count(None), failures


_NO_ANSWER = "no answer"
