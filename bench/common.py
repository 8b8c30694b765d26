"""Shared pieces of the embedding benchmarks (stability, compatibility, matryoshka, ablations, outside reference).

* `prepared()`             WordNet, and the run's tokenizer and landmark set (prepare_run, cached on disk)
* `train_encoder(...)`     the single-process trainer (cairn.training.trainer.train, i.e. `cairn train --init-seed/--data-seed/
                           --shard`) on WordNet with a chosen init seed, data order and shard, so two runs share one landmark
                           set; the trained bundle is cached under bench/out/runs/NAME and reused if its recipe matches
* `Run`                    a trained bundle with cached absolute vectors and relational read-outs
* `Probe`                  the fixed evaluation texts: BBC News (5 topics) with a stratified 70/30 split, and
                           held-out WordNet gloss->lemma retrieval (2,000 glosses, as the suite)
* `markdown_table`, `save_plot`, `write_outputs`

Budgets are small on purpose (tiny model, tens of thousands of samples on a shared 2-core CPU); each bench
says so in its output. Nothing here tunes anything toward a goal.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch

from cairn.evaluation.compatibility import cross_retrieval
from cairn.protocol.embedder import (
    Embedder,
    encode_texts,
    load_bundle,
)
from cairn.evaluation.metrics import (
    l2_normalise,
    linear_probe_accuracy,
    retrieval_recall,
)
from cairn.protocol.landmarks import LANDMARKS_FILE, LandmarkSet
from cairn.tasks.measures import relational_view
from cairn.protocol.tokenizer import TextTokenizer
from cairn.training.trainer import train
from cairn.training.task import (
    TrainingConfig,
    prepare_run,
    reference_texts,
)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
RUNS = OUT / "runs"
DOCS = REPO / "docs"
DEFAULT = TrainingConfig()
MACHINE = "2-core CPU, shared with other jobs; torch 1 thread"
RUN_META = "bench_run.json"


def setup(threads: int = 1) -> None:
    torch.set_num_threads(threads)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- corpus, tokenizer, landmarks -------------------------------------------------------------


@lru_cache(maxsize=1)
def wordnet():
    from cairn.corpora.wordnet import load_wordnet

    return load_wordnet()


@lru_cache(maxsize=2)
def _corpus(spec: str):
    from cairn.corpora import load_corpus

    return load_corpus(spec)


def heldout_loss(state: Path, start: Path, corpus: str = "wordnet", training: TrainingConfig = DEFAULT) -> float:
    """The held-out loss every swarm benchmark reports: absolute InfoNCE of the encoder saved in `state` on the first
    1,024 held-out pairs of `corpus`, batch 128, with the run's tokenizer and landmarks from its release `start`."""
    from cairn.protocol.encoder import load_encoder
    from cairn.training.task import TrainingTask, reference_texts

    pairs = _corpus(corpus)
    release = load_bundle(start, device="cpu")
    task = TrainingTask(
        load_encoder(state), release.tokenizer, release.landmarks, reference_texts(pairs, training.reference_size), training
    )
    return task.eval_loss(pairs.heldout[:1024], batch_size=128)


@lru_cache(maxsize=4)
def prepared(config: TrainingConfig = DEFAULT) -> tuple[TextTokenizer, LandmarkSet]:
    """The run's tokenizer and landmark set for `config` on WordNet (deterministic; cached in bench/out/runs/_prepared)."""
    from cairn.protocol.encoder import config_for

    corpus = wordnet()
    key = f"{corpus.digest[:12]}-{config.model}-{config.landmarks}-{config.landmark_order}-{config.seed}"
    directory = RUNS / "_prepared" / key
    if (directory / LANDMARKS_FILE).exists():
        return TextTokenizer.load(directory, config_for(config.model).max_len), LandmarkSet.load(directory / LANDMARKS_FILE)
    log(f"preparing tokenizer and landmarks ({key})")
    tokenizer, landmarks = prepare_run(corpus, config)
    tokenizer.save(directory)
    landmarks.save(directory / LANDMARKS_FILE)
    return tokenizer, landmarks


def reference(config: TrainingConfig = DEFAULT) -> list[str]:
    """The calibration sample the trainer uses (512 training texts)."""
    return reference_texts(wordnet(), config.reference_size, config.seed)


# ---- training ---------------------------------------------------------------------------------


def train_encoder(
    name: str,
    config: TrainingConfig,
    samples: int,
    torch_seed: int = 0,
    data_seed: int | None = None,
    shard: tuple[int, int] | None = None,
    landmarks: LandmarkSet | None = None,
) -> Path:
    """Train the tiny encoder with cairn.training.trainer.train (`cairn train`) on WordNet's training pairs (or one shard of them).

    torch_seed: initial weights and dropout (--init-seed); data_seed: None keeps the trainer's pair order, else the
    pairs are shuffled with it (--data-seed); shard (i, n): corpus.shard(i, n) only (--shard I/N). The tokenizer and
    landmark set are always those of `config` (the landmark set can be overridden), so runs differ only in what is asked.
    Returns the bundle directory (encoder, tokenizer, calibrated landmarks, bench_run.json; plus the trainer's run.json,
    run/ and checkpoint.pt, so an interrupted run resumes).
    """
    corpus = wordnet()
    recipe = {
        "config": config.to_json(),
        "samples": samples,
        "torch_seed": torch_seed,
        "data_seed": data_seed,
        "shard": list(shard) if shard else None,
        "landmarks_digest": (landmarks or prepared(config)[1]).digest,
        "corpus_digest": corpus.digest,
    }
    out = RUNS / name
    meta_path = out / RUN_META
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("recipe") == recipe:
            return out
        raise SystemExit(f"{out} holds a different run; delete it (rm -r {out}) to retrain")
    log(f"training {name}: {samples} samples, torch seed {torch_seed}, data seed {data_seed}, shard {shard}")
    result = train(
        "wordnet",
        out,
        config,
        max_samples=samples,
        device="cpu",
        evaluate=False,
        show_progress=False,
        init_seed=torch_seed,
        data_seed=data_seed,
        shard=shard,
        landmarks=landmarks,
    )
    if result.samples != -(-samples // config.batch_size) * config.batch_size:  # a leftover checkpoint of a longer run
        raise SystemExit(f"{out} resumed a run past {samples} samples ({result.samples}); delete it (rm -r {out}) to retrain")
    meta = {
        "recipe": recipe,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),  # the training loop's time, as before
        "train_loss_last50": round(float(np.mean(result.recent_losses[-50:])), 4),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    log(f"trained {name} in {result.seconds:.0f}s, loss (last 50 steps) {meta['train_loss_last50']}")
    return out


# ---- evaluation data --------------------------------------------------------------------------


@dataclass
class Probe:
    """Fixed evaluation texts: BBC topics (train/test split for heads) and held-out gloss->lemma retrieval."""

    seed: int = 0
    bbc_texts: list[str] = field(default_factory=list)
    bbc_labels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    train_idx: np.ndarray = field(default_factory=lambda: np.zeros(0))
    test_idx: np.ndarray = field(default_factory=lambda: np.zeros(0))
    queries: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    gold: tuple = ()

    @classmethod
    def load(cls, seed: int = 0) -> Probe:
        from sklearn.model_selection import train_test_split

        from cairn.corpora.wordnet import heldout_gloss_lemma
        from cairn.evaluation.data import load_bbc
        from cairn.evaluation.suite import GLOSS_CAP, gloss_task

        bbc = load_bbc()
        labels = np.asarray(bbc.labels)
        train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.3, random_state=seed, stratify=labels)
        task = gloss_task(heldout_gloss_lemma(wordnet()), GLOSS_CAP)
        return cls(
            seed, list(bbc.texts), labels, np.sort(train_idx), np.sort(test_idx), list(task.queries), list(task.candidates), task.gold
        )

    @property
    def wordnet_texts(self) -> list[str]:
        return self.queries + self.candidates


def probe_accuracy(vectors: np.ndarray, labels: np.ndarray) -> float:
    """The suite's BBC probe: 5-fold logistic regression on L2-normalised rows."""
    return linear_probe_accuracy(l2_normalise(vectors), labels, folds=5, seed=0)


def recall_at_10(query_vectors: np.ndarray, candidate_vectors: np.ndarray, gold) -> float:
    return retrieval_recall(query_vectors, candidate_vectors, gold, ks=(10,))[10]


# ---- a trained run and its read-outs ----------------------------------------------------------


class Run:
    """A bundle on disk with cached absolute vectors; relational read-outs in any view / landmark set."""

    def __init__(self, directory: Path, label: str | None = None):
        self.directory = Path(directory)
        self.label = label or self.directory.name
        self._absolute: dict[tuple, np.ndarray] = {}

    @cached_property
    def embedder(self) -> Embedder:
        return load_bundle(self.directory, "cpu")

    @property
    def landmarks(self) -> LandmarkSet:
        return self.embedder.landmarks

    def absolute(self, texts: list[str]) -> np.ndarray:
        key = (len(texts), hash(tuple(texts)))
        if key not in self._absolute:
            self._absolute[key] = encode_texts(self.embedder.model, self.embedder.tokenizer, list(texts))
        return self._absolute[key]

    def relational(self, texts: list[str], view: str = "standardised", anchors: list[str] | None = None) -> np.ndarray:
        """Relational coordinates against `anchors` (default: the bundle's landmark set), calibrated on the trainer's reference."""
        anchor_vectors = self.absolute(list(anchors or self.landmarks.anchors))
        return relational_view(self.absolute(texts), anchor_vectors, self.absolute(reference()), view)

    def shipped(self, texts: list[str]) -> np.ndarray:
        """Exactly what the release API returns (Embedder.relational): the check that the read-outs match it."""
        return self.embedder.relational(list(texts))


def cross_recall_at_10(index_run_candidates: np.ndarray, query_vectors: np.ndarray, gold) -> float:
    """Gloss->lemma R@10 with queries from one release and the lemma index from another."""
    return recall_at_10(query_vectors, index_run_candidates, gold)


def same_text_r1(index_vectors: np.ndarray, query_vectors: np.ndarray) -> float:
    return cross_retrieval(index_vectors, query_vectors, k=1)


# ---- output -----------------------------------------------------------------------------------


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_plot(figure, name: str) -> Path:
    path = DOCS / f"embedding-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (bench-only dependency: pip install matplotlib); skipping the plot")
        return None
    return plt


def write_outputs(name: str, markdown: str, data: dict) -> None:
    """bench/out/NAME.md and NAME.json (with the command, machine and seconds); prints the markdown."""
    OUT.mkdir(parents=True, exist_ok=True)
    data = {
        "command": "python " + " ".join(sys.argv),
        "machine": MACHINE,
        "platform": platform.platform(),
        "torch": torch.__version__,
        **data,
    }
    (OUT / f"{name}.md").write_text(markdown)
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=1, default=_json_default))
    print(markdown)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(type(value))
