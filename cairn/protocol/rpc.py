"""Peer <-> coordinator RPC over hivemind's libp2p transport (protobuf handlers via ServicerBase).

The service's wire names are fixed here, in the contract; the coordinator plugs its behaviour in as a
backend, so peers can build a stub without importing coordinator code.
"""

from __future__ import annotations

from typing import Protocol

from hivemind.p2p import P2P, P2PContext, PeerID, ServicerBase
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from cairn.protocol.errors import CairnError, ProtocolMismatch
from cairn.protocol.proto import cairn_pb2
from cairn.protocol.run_config import RunConfig


class CoordinatorBackend(Protocol):
    async def run_config(self, request: cairn_pb2.RunConfigRequest) -> cairn_pb2.RunConfigResponse: ...

    async def latest_release(self) -> cairn_pb2.ReleaseAnnouncement: ...

    async def epoch_bound(self) -> cairn_pb2.EpochBound: ...


class CoordinatorService(ServicerBase):
    """Handlers registered on the coordinator's P2P instance as `CoordinatorService.rpc_*`."""

    def __init__(self, backend: CoordinatorBackend):
        self.backend = backend

    async def rpc_get_run_config(self, request: cairn_pb2.RunConfigRequest, context: P2PContext) -> cairn_pb2.RunConfigResponse:
        return await self.backend.run_config(request)

    async def rpc_latest_release(self, request: cairn_pb2.LatestReleaseRequest, context: P2PContext) -> cairn_pb2.ReleaseAnnouncement:
        return await self.backend.latest_release()

    async def rpc_epoch_bound(self, request: cairn_pb2.EpochBoundRequest, context: P2PContext) -> cairn_pb2.EpochBound:
        return await self.backend.epoch_bound()


def sign_run_config(config: RunConfig, key: RSAPrivateKey) -> cairn_pb2.RunConfigResponse:
    document = config.to_json_bytes()
    return cairn_pb2.RunConfigResponse(config_json=document, signature=key.sign(document), public_key=key.get_public_key().to_bytes())


def verify_run_config(response: cairn_pb2.RunConfigResponse) -> RunConfig:
    """Check the coordinator's signature over the document, then parse it."""
    if response.error:
        raise ProtocolMismatch(f"the coordinator refused: {response.error}")
    try:
        public_key = RSAPublicKey.from_bytes(response.public_key)
        valid = public_key.verify(response.config_json, response.signature)
    except Exception:  # malformed key bytes from a remote party
        valid = False
    if not valid:
        raise CairnError("the run configuration's signature does not verify; refusing to join")
    return RunConfig.from_json_bytes(response.config_json)


async def fetch_run_config(p2p: P2P, coordinator: PeerID, protocol_version: int, timeout: float = 10.0) -> RunConfig:
    stub = CoordinatorService.get_stub(p2p, coordinator)
    response = await stub.rpc_get_run_config(cairn_pb2.RunConfigRequest(protocol_version=protocol_version), timeout=timeout)
    return verify_run_config(response)


async def fetch_latest_release(p2p: P2P, coordinator: PeerID, timeout: float = 10.0) -> cairn_pb2.ReleaseAnnouncement:
    stub = CoordinatorService.get_stub(p2p, coordinator)
    return await stub.rpc_latest_release(cairn_pb2.LatestReleaseRequest(), timeout=timeout)


async def fetch_epoch_bound(p2p: P2P, coordinator: PeerID, timeout: float = 10.0) -> int:
    """The highest global step the coordinator says the swarm can have reached now (cairn/protocol/epoch_bound.py)."""
    stub = CoordinatorService.get_stub(p2p, coordinator)
    return int((await stub.rpc_epoch_bound(cairn_pb2.EpochBoundRequest(), timeout=timeout)).limit)
