"""Reference rows for the evaluation suite: LSA (TF-IDF + TruncatedSVD 256) and all-MiniLM-L6-v2.

    python bench/reference_baselines.py --out bench/out/reference.json [--quick]

Writes the suite report as JSON and the markdown table next to it (same name, .md), and prints the table.

LSA choice: fitted on one document per WordNet *training* pair ("lemma gloss", "gloss example",
"synonym synonym") plus the 2,225 BBC articles (unlabelled). That is the same supervision Cairn trains on
(held-out synsets are never seen, so gloss->lemma stays a held-out test); the BBC articles are included
transductively, as is usual for LSA, so the topic probe sees a vocabulary that covers news. Its SVD
components are ordered by singular value, so its prefixes are a natural "ordered coordinates" reference
for Cairn's Matryoshka curve and it is scored at every prefix size too. MiniLM is scored at full width.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from pathlib import Path

from cairn.evaluation import DEFAULT_DIMS, METRICS, EmbedFn, SuiteData, run_suite
from cairn.evaluation.reference import minilm_embed_fn  # bench/outside.py imports it from here too
from cairn.evaluation.yardstick import tfidf_svd_embed_fn

WORDNET_DIR = Path("/usr/share/wordnet")
POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
LSA_ROW, MINILM_ROW = "lsa_tfidf_svd256", "minilm_l6"


def parse_wordnet_minimal(directory: Path = WORDNET_DIR) -> tuple[list[tuple[str, str]], list[str]]:
    """Fallback while cairn.corpora.wordnet is absent: held-out (definition, first lemma) pairs and
    training documents ("lemmas gloss" per synset). Held out: sha256("pos:offset") % 100 < 10, the
    project loader's rule, so both sources hold out the same synsets."""
    heldout, documents = [], []
    for pos, name in POS_FILES.items():
        for line in (directory / name).read_text(encoding="utf-8").splitlines():
            if line.startswith(" ") or "|" not in line:
                continue
            fields, gloss = line.split("|", 1)
            parts = fields.split()
            lemmas = [re.sub(r"\([a-z]+\)$", "", parts[4 + 2 * i]).replace("_", " ") for i in range(int(parts[3], 16))]
            if int(hashlib.sha256(f"{pos}:{parts[0]}".encode()).hexdigest(), 16) % 100 < 10:
                heldout.append((gloss.split('; "')[0].strip(), lemmas[0]))
            else:
                documents.append(" ".join(lemmas) + " " + gloss.strip())
    return heldout, documents


def wordnet_texts() -> tuple[list[tuple[str, str]], list[str], str]:
    """Held-out gloss->lemma pairs, LSA training documents, and which source gave them."""
    try:
        from cairn.corpora.wordnet import heldout_gloss_lemma, load_wordnet
    except ImportError:
        return (*parse_wordnet_minimal(), "bench minimal parser")
    corpus = load_wordnet()
    return heldout_gloss_lemma(corpus), [f"{pair.a} {pair.b}" for pair in corpus.train], "cairn.corpora.wordnet"


def lsa_embed_fn(documents: list[str]) -> EmbedFn:
    """The release manifests' yardstick (cairn.evaluation.yardstick), fitted on `documents`."""
    return tfidf_svd_embed_fn(documents)


def markdown_table(report: dict, setup_seconds: dict[str, float]) -> str:
    """One line per (row, view); the time column is setup + embedding + scoring of the whole row."""
    header = ["row", "view", "gloss→lemma R@1", "R@10", "SimLex ρ", "WordSim ρ", "BBC probe acc", "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, views in report.items():
        if row == "meta":
            continue
        spent = report["meta"]["seconds"][row]
        total = setup_seconds.get(row, 0.0) + spent["embed"] + spent["evaluate"]
        for view, scores in views.items():
            cells = [row, view] + ["n/a" if scores[m] is None else f"{scores[m]:.3f}" for m in METRICS]
            cells.append(f"{total:.0f}" if view == "full" else "")
            lines.append("| " + " | ".join(cells) + " |")
    sizes = report["meta"]["sizes"]
    lines.append("")
    lines.append(
        f"{sizes['gloss_queries']} held-out glosses vs {sizes['lemma_candidates']} lemmas; "
        f"SimLex {sizes['simlex_pairs']} / WordSim {sizes['wordsim_pairs']} pairs; "
        f"BBC {sizes['bbc_articles']} articles, {sizes['bbc_folds']}-fold logistic regression. "
        f"Seconds per row (2-core CPU): "
        + ", ".join(
            f"{row}: setup {setup_seconds.get(row, 0):.1f} + embed {s['embed']:.1f} + scoring {s['evaluate']:.1f}"
            for row, s in report["meta"]["seconds"].items()
        )
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/reference.json"))
    parser.add_argument("--quick", action="store_true", help="the suite's quick mode (500 glosses, 500 articles)")
    args = parser.parse_args(argv)

    heldout, documents, source = wordnet_texts()
    data = SuiteData.load()
    setup: dict[str, float] = {}
    clock = time.perf_counter()
    lsa = lsa_embed_fn(documents + list(data.bbc.texts))
    setup[LSA_ROW] = time.perf_counter() - clock
    clock = time.perf_counter()
    minilm = minilm_embed_fn()
    setup[MINILM_ROW] = time.perf_counter() - clock

    report = run_suite({LSA_ROW: lsa, MINILM_ROW: minilm}, heldout, dims=DEFAULT_DIMS, quick=args.quick, prefix_rows=(LSA_ROW,), data=data)
    report["meta"]["reference"] = {
        "wordnet_source": source,
        "heldout_pairs": len(heldout),
        "lsa_documents": len(documents) + len(data.bbc.texts),
        "setup_seconds": {row: round(s, 3) for row, s in setup.items()},
    }
    table = markdown_table(report, setup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
