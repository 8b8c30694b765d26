"""Peer <-> coordinator RPC: the signed run configuration over hivemind's libp2p transport."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from cairn.protocol import PROTOCOL_VERSION
from cairn.protocol.errors import CairnError, ProtocolMismatch
from cairn.protocol.identity import load_or_create_identity
from cairn.protocol.proto import cairn_pb2
from cairn.protocol.rpc import sign_run_config, verify_run_config
from cairn.protocol.run_config import RunConfig

ROOT = Path(__file__).resolve().parent.parent


def make_config(**changes) -> RunConfig:
    fields = dict(
        run_id="rpc-test",
        corpus="wordnet",
        corpus_digest="c" * 64,
        tokenizer_digest="t" * 64,
        landmarks_digest="l" * 64,
        landmarks_version=1,
    )
    fields.update(changes)
    return RunConfig(**fields)


def test_signed_config_round_trips_and_tampering_is_refused(tmp_path: Path):
    key = load_or_create_identity(tmp_path / "key.pem")
    response = sign_run_config(make_config(), key)
    assert verify_run_config(response) == make_config()
    tampered = cairn_pb2.RunConfigResponse()
    tampered.CopyFrom(response)
    tampered.config_json = response.config_json.replace(b"rpc-test", b"rpc-evil")
    with pytest.raises(CairnError, match="signature"):
        verify_run_config(tampered)
    other = load_or_create_identity(tmp_path / "other.pem")
    forged = sign_run_config(make_config(run_id="rpc-evil"), other)
    forged.public_key = response.public_key  # claims to be the coordinator, signed by someone else
    with pytest.raises(CairnError, match="signature"):
        verify_run_config(forged)
    with pytest.raises(ProtocolMismatch, match="refused"):
        verify_run_config(cairn_pb2.RunConfigResponse(error="protocol v9"))


def test_mismatched_digests_or_protocol_are_refused_with_a_clear_message():
    config = make_config()
    config.check_compatible("t" * 64, "l" * 64, "c" * 64)
    with pytest.raises(ProtocolMismatch, match="landmark set digest"):
        config.check_compatible("t" * 64, "x" * 64, "c" * 64)
    with pytest.raises(ProtocolMismatch, match="tokenizer digest"):
        config.check_compatible("x" * 64, "l" * 64, "c" * 64)
    with pytest.raises(ProtocolMismatch, match="protocol"):
        make_config(protocol_version=PROTOCOL_VERSION + 1).check_compatible("t" * 64, "l" * 64, "c" * 64)


def test_malformed_config_documents_raise_the_project_error():
    for document in (b"", b"{", b"[]", b'{"run_id": 1}', b"\xff\xfe"):
        with pytest.raises(CairnError):
            RunConfig.from_json_bytes(document)


@pytest.mark.slow  # real libp2p daemons
@pytest.mark.timeout(120)
def test_a_peer_fetches_the_config_from_the_coordinator_over_libp2p(tmp_path: Path, caplog):

    import hivemind

    from swarm_util import wait_for

    from cairn.network.trusted_state import CoordinatorEpochBound, _ask_epoch_bound
    from cairn.peer.run_setup import coordinator_peer_id, fetch_config

    key = load_or_create_identity(tmp_path / "coordinator.pem")
    signed = sign_run_config(make_config(), key)

    coordinator = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    peer = None
    try:
        coordinator.run_coroutine(partial(_register, signed=signed.SerializeToString()))
        join = str(coordinator.get_visible_maddrs()[0])
        peer = hivemind.DHT(start=True, initial_peers=[join], host_maddrs=["/ip4/127.0.0.1/tcp/0"], client_mode=True)
        assert fetch_config(peer, coordinator_peer_id(join)) == make_config()
        # the epoch bound (issue 12): asked at start, then again in the background, grown by the clock meanwhile
        bound = CoordinatorEpochBound(peer, coordinator_peer_id(join), refresh_seconds=0.0)
        assert bound.limit() is None  # nothing asked yet: hivemind's unbounded behaviour
        bound.refresh()
        assert FixedBackend.EPOCH_LIMIT <= bound.limit() <= FixedBackend.EPOCH_LIMIT + 20
        bound.bound.set(0)
        bound.maybe_refresh()  # asks
        wait_for(lambda: (bound.maybe_refresh(), (bound.limit() or 0) >= FixedBackend.EPOCH_LIMIT)[1], timeout=30, interval=0.2)
        with pytest.raises(CairnError, match="must end with /p2p/"):
            coordinator_peer_id("/ip4/127.0.0.1/tcp/1")
        # a coordinator that cannot be reached (down or restarting): the answer is the cause in one line, returned by
        # the coroutine in the DHT's process rather than raised there (hivemind logs a raised one with its traceback)
        unreachable = "QmSxMqyywb46sCvpqikY1rw19UTWYFXmhAwhMWaihmjTaL"
        answer = peer.run_coroutine(partial(_ask_epoch_bound, coordinator=unreachable))
        assert isinstance(answer, str) and answer.startswith("P2PDaemonError: ") and "\n" not in answer, answer
        gone = CoordinatorEpochBound(peer, unreachable)
        gone.refresh()
        assert gone.limit() is None
        assert f"did not say how far the swarm can be ({answer})" in caplog.text, caplog.text
    finally:
        if peer is not None:
            peer.shutdown()
        coordinator.shutdown()


class FixedBackend:
    """Answers like a coordinator would, from a pre-signed configuration."""

    EPOCH_LIMIT = 42

    def __init__(self, signed: bytes):
        self.signed = cairn_pb2.RunConfigResponse.FromString(signed)

    async def run_config(self, request):
        if request.protocol_version != PROTOCOL_VERSION:
            return cairn_pb2.RunConfigResponse(error="wrong protocol")
        return self.signed

    async def latest_release(self):
        return cairn_pb2.ReleaseAnnouncement(version="0.1.0")

    async def epoch_bound(self):
        return cairn_pb2.EpochBound(limit=self.EPOCH_LIMIT)


async def _register(dht, node, signed: bytes) -> None:
    """Runs inside the coordinator's DHT process: serve the RPC on its libp2p host."""
    from cairn.protocol.rpc import CoordinatorService

    await CoordinatorService(FixedBackend(signed)).add_p2p_handlers(node.p2p)


def test_generated_protobuf_code_is_current(tmp_path: Path):
    proto_dir = ROOT / "cairn" / "protocol" / "proto"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(proto_dir), f"--python_out={tmp_path}", str(proto_dir / "cairn.proto")],
        check=True,
    )
    assert (tmp_path / "cairn_pb2.py").read_text() == (proto_dir / "cairn_pb2.py").read_text(), "run bash scripts/gen_proto.sh"
