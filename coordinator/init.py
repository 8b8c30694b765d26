"""`cairn coordinator init`: derive the run configuration from the corpus and create the signing keys."""

from __future__ import annotations

from pathlib import Path

from protocol.corpora import load_corpus
from protocol.errors import CairnError
from protocol.fsutil import atomic_write_bytes
from protocol.landmarks import LANDMARKS_FILE
from protocol.run_config import RunConfig, SwarmConfig
from protocol.training import TrainingConfig, prepare_run

from coordinator.workdir import Workdir


def init_workdir(root: Path, run_id: str, corpus_spec: str, training: TrainingConfig, swarm: SwarmConfig,
                 init_from: str = "fresh", outside_reference: bool = True) -> RunConfig:
    workdir = Workdir(Path(root))
    if workdir.run_config_path.exists():
        raise CairnError(f"{root} already holds run {workdir.load_run_config().run_id}; refusing to overwrite it")
    corpus = load_corpus(corpus_spec)
    tokenizer, landmarks = prepare_run(corpus, training)
    tokenizer.save(workdir.run_dir)
    landmarks.save(workdir.run_dir / LANDMARKS_FILE)
    config = RunConfig(run_id=run_id, corpus=corpus_spec, corpus_digest=corpus.digest, tokenizer_digest=tokenizer.digest(),
                       landmarks_digest=landmarks.digest, landmarks_version=landmarks.version, training=training, swarm=swarm,
                       init=init_from)
    from coordinator.publishing.repository import ReleaseRepository

    ReleaseRepository(workdir.root).init()
    from protocol.identity import load_or_create_identity

    load_or_create_identity(workdir.dht_key)
    atomic_write_bytes(workdir.run_config_path, config.to_json_bytes())
    if outside_reference:
        # embed the outside reference's texts now, not at the first release: on a machine shared with
        # peers that one-off CPU burst would stall their averaging rounds
        from coordinator.outside_reference import reference_vectors
        from protocol.evaluation.promises import alignment_texts

        reference_vectors(workdir, alignment_texts(corpus))
    return config
