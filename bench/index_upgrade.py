"""Issue 14's contrast: an index kept across a release upgrade, relational against absolute vectors, per kind of successor.

    nice -n 10 .venv/bin/python bench/index_upgrade.py --out bench/out/index-upgrade.json

bench/index.py measured the upgrade with one successor, N+1 continuing N's weights for 15,000 samples: the relational
index kept 0.988 of a re-embedded one, but the absolute contrast did not fall to chance (0.325 against the same
0.287), because so short a step barely moves the absolute space. This bench adds successors that do not continue N's
weights, side by side in one run, all with N's landmark set v1 extended append-only to v2 (+64 anchors):
  N+1        continues N (`--start-from`), --samples-more samples (bench/index.py's release, cached);
  other run  a run of its own: the default recipe (distilled start) with another init seed and data order,
             --samples-n + --samples-more samples (as many as N+1 has seen);
  no teacher a run of its own from a random start (`--initialisation random`), the same samples and seeds as
             "other run": what is left when the shared distilled start is gone.
Metric (as bench/index.py): held-out WordNet gloss -> lemma, 2,000 glosses against their lemmas, R@10. For each
successor S: lemmas indexed with N and glosses embedded with S (cut to N's coordinates), against both embedded with
S; the same for the absolute (encoder output) vectors, the contrast. A ratio near 1 is an index that survives the
upgrade; an absolute R@10 near chance is one that had to be re-embedded.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT, log, markdown_table, setup, train_encoder, wordnet  # noqa: E402
from index import gloss_lemma_recall, landmarks_v2, releases  # noqa: E402

from cairn.corpora.wordnet import heldout_gloss_lemma  # noqa: E402
from cairn.protocol.embedder import encode_texts  # noqa: E402
from cairn.tasks.api import open_release  # noqa: E402

OTHER_SEED = DEFAULT.seed + 1


def independent_run(name: str, samples: int, initialisation: str) -> Path:
    """A run that shares nothing with N but the corpus and the landmark set: another init seed and data order
    (common.train_encoder: `cairn train --init-seed --data-seed`, cached in bench/out/runs)."""
    config = replace(DEFAULT, initialisation=initialisation)
    return train_encoder(f"index-{name}-{samples}", config, samples, OTHER_SEED, OTHER_SEED, landmarks=landmarks_v2())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples-n", type=int, default=30_000)
    parser.add_argument("--samples-more", type=int, default=15_000)
    parser.add_argument("--out", type=Path, default=Path("bench/out/index-upgrade.json"))
    args = parser.parse_args()
    setup()
    n_dir, next_dir = releases(args.samples_n, args.samples_more)
    total = args.samples_n + args.samples_more
    successors = {
        "N+1 (continues N)": next_dir,
        "other run (distilled start, other seed)": independent_run("other", total, "distilled"),
        "no teacher (random start, other seed)": independent_run("random", total, "random"),
    }
    pairs = list(heldout_gloss_lemma(wordnet()))[:2000]
    lemmas = list(dict.fromkeys(lemma for _, lemma in pairs))
    position = {lemma: i for i, lemma in enumerate(lemmas)}
    glosses, gold = [g for g, _ in pairs], [{position[lemma]} for _, lemma in pairs]
    chance = 10 / len(lemmas)

    release_n = open_release(n_dir)
    dims_n = release_n.landmarks.size
    n_relational, n_absolute = (
        release_n.embedder.relational(lemmas),
        encode_texts(release_n.embedder.model, release_n.embedder.tokenizer, lemmas),
    )
    rows = []
    for name, directory in successors.items():
        successor = open_release(directory)
        assert list(successor.landmarks.anchors[:dims_n]) == list(release_n.landmarks.anchors), (
            "the landmark set must be an append-only successor"
        )
        absolute = lambda texts: encode_texts(successor.embedder.model, successor.embedder.tokenizer, texts)  # noqa: E731
        kept = gloss_lemma_recall(n_relational, successor.embedder.relational(glosses)[:, :dims_n], gold)
        re_embedded = gloss_lemma_recall(successor.embedder.relational(lemmas), successor.embedder.relational(glosses), gold)
        absolute_kept = gloss_lemma_recall(n_absolute, absolute(glosses), gold)
        absolute_re_embedded = gloss_lemma_recall(absolute(lemmas), absolute(glosses), gold)
        rows.append(
            {
                "successor": name,
                "relational: N index, successor queries": round(kept, 3),
                "relational: re-embedded": round(re_embedded, 3),
                "relational ratio": round(kept / re_embedded, 3),
                "absolute: N index, successor queries": round(absolute_kept, 3),
                "absolute: re-embedded": round(absolute_re_embedded, 3),
                "absolute ratio": round(absolute_kept / absolute_re_embedded, 3),
            }
        )
        log(f"{name}: {rows[-1]}")
    result = {
        "command": "nice -n 10 .venv/bin/python bench/index_upgrade.py " + " ".join(sys.argv[1:]),
        "N": {"samples": args.samples_n, "anchors": dims_n},
        "N, its own queries, relational R@10": round(gloss_lemma_recall(n_relational, release_n.embedder.relational(glosses), gold), 3),
        "chance R@10": round(chance, 4),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_table(list(rows[0]), [list(row.values()) for row in rows]))
    print(f"N with its own queries: {result['N, its own queries, relational R@10']}; chance {chance:.4f}")


if __name__ == "__main__":
    main()
