"""The DHT records of a Cairn run: their key names, their schemas and the validators every node applies.

Peers, the coordinator and the dashboard read the same records, so the names and types live here and
nowhere else. A record is accepted by a DHT node only if it matches these schemas, so every node of a
run must be created with `make_validators(run_id, key)` (a node without them stores anything and reads
signed values with their signature still attached).

Why pydantic.v1: hivemind's SchemaValidator is written against pydantic.v1 models, and it rejects any
value that pydantic had to convert, so every number field below is strict (3 is not accepted for 3.0,
True is not accepted for 1). No `from __future__ import annotations` here: pydantic.v1 would have to
re-evaluate the constrained types from strings.

Keys, all `f"{run_id}_{name}"`, name being a field of `RunSchema`:
- contributions: subkey = the writer's `[owner:<public key>]` tag, so hivemind's RSASignatureValidator
  lets only the key's owner write it; value = ContributionRecord. Signatures prove who wrote a record,
  not that it is true: the ledger still has to treat the numbers as claims.
- shard_leases: subkey = the shard number followed by the writer's owner tag, so each peer writes only its own lease
  on a shard, and its progress there (LeaseRecord.offset); see cairn/peer/leases.py for the protocol on top.
- ready: subkey = the writer's owner tag, value = the DHT time it started waiting for the others (the start
  barrier, cairn/peer/start_barrier.py); a forged entry can only end someone's bounded wait early.
"""

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Dict, Literal, Mapping, Optional

import pydantic.v1 as pydantic
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator, conbytes
from hivemind.dht.validation import RecordValidatorBase
from hivemind.utils.crypto import RSAPrivateKey

logger = logging.getLogger(__name__)

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")
_BASE58 = r"^[1-9A-HJ-NP-Za-km-z]{1,128}$"
_NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]+$"  # names end up in terminals and log files


# Bounds on what a record may claim (issue 12, attack 2): the ledger stores these numbers in SQLite INTEGER
# columns (64-bit, and SUM overflows), and signatures prove only who wrote a record. Each bound is far
# above any honest value, so no honest peer meets one.
MAX_COUNT = 2**40  # steps, epochs, offsets, shard numbers: about 10^12, and 2^23 peers at the bound still fit a SUM
MAX_UPTIME_SECONDS = 366 * 24 * 3600.0  # a peer process running for a year
MAX_SAMPLES_PER_SECOND = 20_000.0  # measured: ~100 samples/s on a CPU core, a few thousand on a GPU (docs/benchmarks.md)
SAMPLES_SLACK = 4096  # one batch counted before the first second of uptime
MAX_LOSS = 1e6  # InfoNCE is ln(batch) at chance; anything this large is garbage
MAX_TIMESTAMP = 1e11  # unix seconds, year 5138


def _finite(ge: float | None = None, le: float | None = None) -> type:
    bounds = {name: value for name, value in (("ge", ge), ("le", le)) if value is not None}  # None: unbounded on that side
    return pydantic.confloat(strict=True, allow_inf_nan=False, **bounds)


def _count(ge: int = 0, le: int = MAX_COUNT) -> type:
    return pydantic.conint(strict=True, ge=ge, le=le)


_OWNER_TAG = rb"\[owner:ssh-rsa [A-Za-z0-9+/]+=*\]"
OwnerTag = conbytes(regex=_OWNER_TAG + rb"\Z")
"""A subkey that is exactly a writer's owner tag as hivemind writes it (OpenSSH `ssh-rsa` and base64, nothing after).
hivemind's own BytesWithPublicKey accepts anything around the tag, and RSA key parsing ignores trailing bytes, so one key
could write under many subkeys: many ledger identities, many lease holders, from one key."""
_LEASE_SUBKEY = rb"(0|[1-9][0-9]{0,8})(" + _OWNER_TAG + rb")"
ShardWithOwner = conbytes(regex=_LEASE_SUBKEY + rb"\Z")
"""A lease's subkey: the shard number (decimal, no leading zeros, so one spelling per shard), then the writer's owner tag."""


class ContributionRecord(pydantic.BaseModel):
    """What a peer says about its own work; published under its owner-tagged subkey."""

    display_name: pydantic.constr(strict=True, max_length=64, regex=_NO_CONTROL_CHARACTERS)
    peer_id: pydantic.constr(strict=True, regex=_BASE58)  # the hivemind PeerID as a base58 string
    samples: _count()  # also at most uptime_seconds x MAX_SAMPLES_PER_SECOND (see _plausible_samples)
    steps: _count()
    loss: _finite(ge=-MAX_LOSS, le=MAX_LOSS)  # NaN would never equal itself, and hivemind would reject the record anyway
    samples_per_second: _finite(ge=0.0, le=MAX_SAMPLES_PER_SECOND)
    device: Literal["cpu", "cuda"]
    uptime_seconds: _finite(ge=0.0, le=MAX_UPTIME_SECONDS)
    shard: _count(ge=-1)  # -1: no shard leased
    protocol_version: _count()
    reported_at: _finite(ge=0.0, le=MAX_TIMESTAMP)  # unix time on the writer's clock
    epoch: _count()  # the peer's hivemind epoch (global step) when it wrote this record
    shards_completed: _count()  # passes over a leased shard finished by this peer
    # the spot-checkable claim: eval-mode loss on (shard, offset, count) right after epoch probe_epoch's
    # averaged update; the coordinator recomputes it from the averaged state (-1: no probe yet)
    probe_epoch: _count(ge=-1)
    probe_shard: _count(ge=-1)
    probe_offset: _count()
    probe_count: pydantic.conint(strict=True, ge=0, le=4096)
    probe_loss: _finite(ge=-MAX_LOSS, le=MAX_LOSS)
    collapsed: pydantic.StrictBool = False  # the peer's collapse detector fired (cairn.training.task.CollapseDetector)

    class Config:
        extra = pydantic.Extra.forbid

    @pydantic.root_validator(skip_on_failure=True)
    def _plausible_samples(cls, values: dict) -> dict:
        """A samples counter no process could have reached in its claimed uptime is refused outright."""
        if values["samples"] > max_samples_for(values["uptime_seconds"]):
            raise ValueError(f"samples {values['samples']} exceed what {values['uptime_seconds']:.0f} s of uptime allow")
        return values


def max_samples_for(seconds: float) -> int:
    """The most samples a peer can have trained in `seconds` (MAX_SAMPLES_PER_SECOND, plus one batch)."""
    return int(max(seconds, 0.0) * MAX_SAMPLES_PER_SECOND) + SAMPLES_SLACK


class LeaseRecord(pydantic.BaseModel):
    """One holder's lease on one shard, under that holder's own owner-tagged subkey (cairn/peer/leases.py). Times are DHT
    times on the writer's clock."""

    claimed_at: _finite(ge=0.0, le=MAX_TIMESTAMP)  # when this holder's tenure began: of two racing claims, the earlier wins
    expires_at: _finite(ge=0.0, le=MAX_TIMESTAMP)  # the lease ends then unless renewed; the DHT keeps the entry longer
    released: pydantic.StrictBool = False  # given back: it holds nothing, and still carries its offset
    offset: Optional[_count()] = None  # the next sample of the shard in this holder's reading; None: it read none yet
    updated_at: _finite(ge=0.0, le=MAX_TIMESTAMP)  # when this was written: a shard resumes from its latest offset

    class Config:
        extra = pydantic.Extra.forbid


class RunSchema(pydantic.BaseModel):
    """One field per DHT key of a run; SchemaValidator maps field `name` to key `f"{run_id}_{name}"`."""

    contributions: Dict[OwnerTag, ContributionRecord]
    shard_leases: Dict[ShardWithOwner, LeaseRecord]  # one entry per (shard, holder), written by that holder only
    ready: Dict[OwnerTag, _finite()]  # peers waiting at the start barrier: owner tag -> DHT time


@dataclass(frozen=True)
class RunKeys:
    """The DHT key names of one run."""

    run_id: str

    def __post_init__(self) -> None:
        # "_" would let run "a_shard" collide with run "a" ("a_shard" + "_progress" is "a" + "_shard_progress"),
        # and hivemind.Optimizer derives its own keys from the run id the same way
        if not _RUN_ID.fullmatch(self.run_id):
            raise ValueError(f"run id {self.run_id!r} must be 1-64 letters, digits, '.' or '-' (no '_'), starting with a letter or digit")

    def _key(self, name: str) -> str:
        return f"{self.run_id}_{name}"

    @property
    def contributions(self) -> str:
        return self._key("contributions")

    @property
    def shard_leases(self) -> str:
        return self._key("shard_leases")

    @property
    def ready(self) -> str:
        return self._key("ready")


def make_validators(run_id: str, private_key: RSAPrivateKey) -> list[RecordValidatorBase]:
    """The record validators for `hivemind.DHT(record_validators=...)` on every node of the run.

    Keys outside RunSchema stay allowed (allow_extra_keys=True) on purpose: hivemind.Optimizer stores
    its own records under the same prefix ({run_id}_progress, {run_id}_grad_averager.0b..., ...), and a
    coordinator that refused them could neither replicate them nor read the swarm's progress. On a peer,
    the Optimizer's own SchemaValidator would switch extra keys back on anyway (merged validators OR the
    flag). Strictness is per key instead: every Cairn key is fully typed, and its records forbid extra
    fields.

    The signature validator signs with `private_key`. hivemind keeps only the first RSASignatureValidator
    of a DHT, so anything else that signs records on the same DHT must use the same key: pass
    `tracker_opts=dict(private_key=private_key)` to hivemind.Optimizer, or its progress reports (signed
    for its own process-wide key) are rejected and the swarm never sees this peer's progress.
    """
    RunKeys(run_id)  # validates the run id
    return [
        SchemaValidator(RunSchema, allow_extra_keys=True, prefix=run_id),
        RSASignatureValidator(private_key),
    ]


def owner_subkey(private_key: RSAPrivateKey) -> bytes:
    """The `[owner:<public key>]` subkey under which only `private_key`'s holder can write."""
    return RSASignatureValidator(private_key).local_public_key


def public_id(public_key: bytes) -> str:
    """A short stable id for an OpenSSH-encoded RSA public key: 64 bits of its SHA-256, in hex.

    Short enough to show and to key a ledger by; forging a collision would take about 2**32 RSA key
    generations per target, far more than just making a new identity.
    """
    return hashlib.sha256(public_key).hexdigest()[:16]


def owner_public_id(subkey: bytes) -> str | None:
    """The public id of the key in an `[owner:...]` subkey, or None when the subkey carries no owner tag."""
    match = re.search(RSASignatureValidator.PUBLIC_KEY_REGEX, subkey) if isinstance(subkey, bytes) else None
    return public_id(match.group(1)) if match else None


def lease_subkey(shard: int, owner: bytes) -> bytes:
    """The subkey of `owner`'s lease entry for `shard` (ShardWithOwner): the shard number, then the owner tag."""
    return str(shard).encode() + owner


def parse_lease_subkey(subkey: Any) -> tuple[int, str] | None:
    """(shard, holder public id) of a lease subkey, None for anything ShardWithOwner would refuse."""
    match = re.fullmatch(_LEASE_SUBKEY, subkey) if isinstance(subkey, bytes) else None
    holder = owner_public_id(match.group(2)) if match else None
    return (int(match.group(1)), holder) if match and holder else None


def decode_contributions(entries: Mapping[Any, Any] | None) -> dict[str, ContributionRecord]:
    """Valid contribution records by public id, from the value of `dht.get(keys.contributions)`.

    Takes the `.value` dict of subkey -> ValueWithExpiration. Entries that do not parse are skipped:
    the local validators already filtered what this node received, this guards readers that lack them.
    """
    records: dict[str, ContributionRecord] = {}
    if not isinstance(entries, Mapping):
        return records
    for subkey, item in entries.items():
        owner = owner_public_id(subkey)
        if owner is None:
            continue
        try:
            records[owner] = ContributionRecord.parse_obj(getattr(item, "value", item))
        except (pydantic.ValidationError, TypeError, ValueError) as error:
            logger.warning("skipped the contribution record of %s: %s", owner, _first_line(error))
            continue
    return records


def _first_line(error: Exception) -> str:
    """A validation error in one log line (pydantic's own message spans several)."""
    return " ".join(str(error).split())[:300]
