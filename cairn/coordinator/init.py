"""`cairn coordinator init`: derive the run configuration from the corpus and create the signing keys."""

from __future__ import annotations

from pathlib import Path

from cairn.corpora import load_corpus
from cairn.protocol.errors import CairnError
from cairn.protocol.fsutil import atomic_write_bytes
from cairn.protocol.landmarks import LANDMARKS_FILE
from cairn.protocol.run_config import RunConfig, SwarmConfig
from cairn.protocol.run_config import TrainingConfig
from cairn.training.task import prepare_run

from cairn.protocol.workdir import Workdir


def init_workdir(
    root: Path,
    run_id: str,
    corpus_spec: str,
    training: TrainingConfig,
    swarm: SwarmConfig,
    init_from: str | None = None,
    outside_reference: bool = True,
    passphrase: bytes | None = None,
) -> RunConfig:
    """Derive the run from the corpus, create the keys and the empty repository; a distilled start is cut as
    the run's first signed release (global step 0), which every peer pulls, verifies and starts from.

    `init_from`: what a peer alone in the swarm starts from, "release" (the latest signed release) or "fresh"
    (the seeded random initialisation); a distilled start is always "release" (peers need not run the teacher).
    `passphrase` encrypts the root and targets keys (cairn.coordinator.publishing.keys); None leaves them plain.
    """
    workdir = Workdir(Path(root))
    if workdir.run_config_path.exists():
        raise CairnError(f"{root} already holds run {workdir.load_run_config().run_id}; refusing to overwrite it")
    distilled = training.initialisation == "distilled"
    if distilled and init_from == "fresh":
        raise CairnError("--init fresh contradicts a distilled start: peers start from its release (use --initialisation random)")
    init_from = init_from or ("release" if distilled else "fresh")
    corpus = load_corpus(corpus_spec)
    tokenizer, landmarks = prepare_run(corpus, training)
    tokenizer.save(workdir.run_dir)
    landmarks.save(workdir.run_dir / LANDMARKS_FILE)
    config = RunConfig(
        run_id=run_id,
        corpus=corpus_spec,
        corpus_digest=corpus.digest,
        tokenizer_digest=tokenizer.digest(),
        landmarks_digest=landmarks.digest,
        landmarks_version=landmarks.version,
        training=training,
        swarm=swarm,
        init=init_from,
    )
    from cairn.coordinator.publishing.repository import ReleaseRepository

    ReleaseRepository(workdir.root, passphrase=passphrase).init()
    from cairn.protocol.identity import load_or_create_identity

    load_or_create_identity(workdir.dht_key)
    if outside_reference:
        # embed the outside reference's texts now, not at the first release: on a machine shared with
        # peers that one-off CPU burst would stall their averaging rounds
        from cairn.coordinator.outside_reference import reference_vectors
        from cairn.evaluation.promises import alignment_texts

        reference_vectors(workdir, alignment_texts(corpus))
        from cairn.evaluation.yardstick import yardstick_scores

        yardstick_scores(quick=True)  # fitted once per machine (about a minute), before any peer shares the CPU
    if distilled:
        _release_the_start(workdir, config, corpus, tokenizer, landmarks, outside_reference, passphrase)
    # written last: a workdir with run.json is complete (an interrupted init can be rerun after removing the directory)
    atomic_write_bytes(workdir.run_config_path, config.to_json_bytes())
    return config


def _release_the_start(
    workdir: Workdir, config: RunConfig, corpus, tokenizer, landmarks, outside_reference: bool, passphrase: bytes | None
) -> None:
    """Cut release 0.1.0 from the distilled starting point (the teacher runs here, once, ~30 s on two cores)."""
    from cairn.coordinator.ledger import Ledger
    from cairn.coordinator.releaser import ReleaseInputs, cut_release
    from cairn.training.task import initial_encoder, reference_texts

    model = initial_encoder(config.training, tokenizer, config.training.seed)
    inputs = ReleaseInputs(
        config,
        corpus,
        tokenizer,
        landmarks,
        reference_texts(corpus, config.training.reference_size, config.training.seed),
        outside_reference=outside_reference,
    )
    ledger = Ledger(workdir.ledger)
    try:
        cut_release(workdir, inputs, model, 0, ledger, passphrase=passphrase)
    finally:
        ledger.close()
