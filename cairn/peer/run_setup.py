"""Before training: get the run configuration from the coordinator and rebuild the run locally.

The tokenizer and landmark set are deterministic functions of corpus + configuration, so the peer
rebuilds them from its own copy of the corpus (cached by digest in its workdir) and refuses to train
when any digest differs from the coordinator's.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import hivemind

from cairn.protocol import PROTOCOL_VERSION
from cairn.corpora import PairCorpus, load_corpus
from cairn.protocol.errors import CairnError
from cairn.protocol.landmarks import LANDMARKS_FILE, LandmarkSet
from cairn.protocol.rpc import fetch_run_config
from cairn.protocol.run_config import RunConfig
from cairn.protocol.tokenizer import TextTokenizer
from cairn.training.task import prepare_run
from cairn.protocol.encoder import config_for


async def _fetch(dht: hivemind.DHT, node, coordinator: str, protocol_version: int) -> RunConfig:
    from hivemind.p2p import PeerID

    return await fetch_run_config(node.p2p, PeerID.from_base58(coordinator), protocol_version)


def fetch_config(dht: hivemind.DHT, coordinator: str, attempts: int = 5) -> RunConfig:
    """Ask the coordinator (by PeerID, authenticated by libp2p) for the signed run configuration."""
    last_error: Exception | None = None
    for _ in range(attempts):
        try:
            return dht.run_coroutine(partial(_fetch, coordinator=coordinator, protocol_version=PROTOCOL_VERSION))
        except CairnError:
            raise
        except Exception as error:  # connection not yet established, coordinator restarting...
            last_error = error
    raise CairnError(f"could not fetch the run configuration from coordinator {coordinator[:12]}… ({last_error!r})")


def prepare_local_run(config: RunConfig, workdir: Path) -> tuple[PairCorpus, TextTokenizer, LandmarkSet]:
    corpus = load_corpus(config.corpus)
    cache = Path(workdir) / "run-cache" / config.tokenizer_digest[:16]
    max_len = config_for(config.training.model).max_len
    if (cache / "tokenizer.json").exists() and (cache / LANDMARKS_FILE).exists():
        tokenizer, landmarks = TextTokenizer.load(cache, max_len), LandmarkSet.load(cache / LANDMARKS_FILE)
    else:
        tokenizer, landmarks = prepare_run(corpus, config.training)
        tokenizer.save(cache)
        landmarks.save(cache / LANDMARKS_FILE)
    config.check_compatible(tokenizer.digest(), landmarks.digest, corpus.digest)
    return corpus, tokenizer, landmarks


def coordinator_peer_id(join_address: str) -> str:
    """The coordinator's PeerID is the /p2p/... part of the join address; libp2p authenticates it."""
    from hivemind.utils.multiaddr import Multiaddr

    try:
        return Multiaddr(join_address).value_for_protocol("p2p")
    except Exception:
        raise CairnError(f"join address {join_address!r} must end with /p2p/<coordinator peer id>") from None


async def _fetch_release(dht: hivemind.DHT, node, coordinator: str):
    from hivemind.p2p import PeerID

    from cairn.protocol.rpc import fetch_latest_release

    announcement = await fetch_latest_release(node.p2p, PeerID.from_base58(coordinator))
    return announcement.version, announcement.repository_url


def latest_release(dht: hivemind.DHT, coordinator: str) -> tuple[str, str]:
    """(version, repository URL) of the run's latest signed release, asked of the coordinator; version "" if none."""
    return dht.run_coroutine(partial(_fetch_release, coordinator=coordinator))


def pull_release(url: str, version: str, destination: Path, workdir: Path) -> Path:
    """Pull and verify (TUF, trust kept in WORKDIR/trust) one release into `destination`."""
    import logging

    from cairn.releases.client import ReleaseClient

    ReleaseClient(url, Path(workdir) / "trust", warn=logging.getLogger("cairn.peer").warning).pull(destination, version)
    return destination


def latest_release_weights(dht: hivemind.DHT, coordinator: str, workdir: Path) -> Path | None:
    """Pull and verify the run's latest signed release into WORKDIR/release; None if there is none.

    Used when the run configuration says `init = "release"`: every peer loads the same verified
    weights before creating its optimizer, so a restarted swarm resumes from its last release rather
    than from scratch (and a swarm already training overrides it by loading the averaged state).
    """
    version, url = latest_release(dht, coordinator)
    if not version:
        return None
    return pull_release(url, version, Path(workdir) / "release", workdir)
