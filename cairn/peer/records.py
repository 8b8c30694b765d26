"""Publishing and reading contribution records: the numbers a peer reports about its own work.

Each peer writes one record under its owner-tagged subkey, so nobody else can overwrite it (see
cairn/protocol/dht_keys.py). A record expires unless republished, so the set of records is also the set of
peers alive within the last `ttl_seconds`.
"""

from __future__ import annotations

import logging

import hivemind
import pydantic.v1 as pydantic
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from cairn.protocol.dht_keys import ContributionRecord, RunKeys, decode_contributions, owner_subkey

logger = logging.getLogger("cairn.peer")


def build_record(**fields) -> ContributionRecord | None:
    """The record of these fields, or None with one warning when they break the schema (a NaN probe loss after a poisoned
    round raised a ValidationError out of the training loop: issue 12, attack 3). The peer keeps training; its next
    record, once its numbers are sane again, is published as usual."""
    try:
        return ContributionRecord(**fields)
    except pydantic.ValidationError as error:
        problems = ", ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        logger.warning("no contribution record this time (%s)", problems)
        return None


def publish_record(dht: hivemind.DHT, run_id: str, record: ContributionRecord, ttl_seconds: float, *, identity: RSAPrivateKey) -> bool:
    """Store `record` for `ttl_seconds` under `identity`'s owner subkey; False when it was refused.

    `identity` must be the key the DHT's validators sign with (make_validators), since the subkey
    names it and the DHT signs for that key only. A record that fails the schema or the signature is
    refused everywhere and returns False. True/False is hivemind's verdict from the last replica to
    answer, so under concurrent readers (which copy records between nodes) a stored record can still
    come back False; read_records is the authority.
    """
    return bool(
        dht.store(
            RunKeys(run_id).contributions,
            subkey=owner_subkey(identity),
            value=record.dict(),
            expiration_time=get_dht_time() + ttl_seconds,
        )
    )


def read_records(dht: hivemind.DHT, run_id: str) -> dict[str, ContributionRecord]:
    """The live contribution records of the run by public id; records that fail the schema are skipped."""
    found = dht.get(RunKeys(run_id).contributions, latest=True)
    return decode_contributions(found.value if found is not None else None)


def shards_in_use(dht: hivemind.DHT, run_id: str) -> dict[str, int]:
    """Public id -> the shard its live contribution record says it trains on: how a lease holder shows it is not a
    squatter (cairn/peer/leases.py). Peers without a shard yet are left out."""
    return {owner: record.shard for owner, record in read_records(dht, run_id).items() if record.shard is not None}
