"""`cairn index`: round trips, the append-only refusal, atomic builds, upgrade resume after kill -9, engines, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cairn.index import IndexConfig, build_index, open_index, read_documents, upgrade_index
from cairn.index.meta import META_FILE, read_meta
from cairn.index.server import make_app
from cairn.index.upgrade import WORK_DIR, pending_upgrade
from cairn.protocol.errors import CairnError, CorpusError, LandmarkError
from cairn.tasks import open_release
from test_tasks import bundle, extended_copy, labelled_rows, make_release  # noqa: F401  (bundle is a fixture)

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def releases(bundle, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """r1: a release; r2: its append-only successor (same encoder, 2 more anchors); bad: r1's anchors reordered."""
    root = tmp_path_factory.mktemp("index-releases")
    r2_bundle = extended_copy(bundle, root / "b2", new_anchors=["a brand new anchor", "another new anchor"])
    bad_bundle = extended_copy(bundle, root / "bad", reorder=True)
    return {
        "r1": make_release(bundle, root / "r1", "0.1.0"),
        "r2": make_release(r2_bundle, root / "r2", "0.2.0"),
        "bad": make_release(bad_bundle, root / "rbad", "0.3.0"),
    }


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("index-docs") / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", **row}) + "\n" for i, row in enumerate(labelled_rows())))
    return path


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cairn.cli", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` with its bytes (what "nothing lost" compares)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---- round trips ------------------------------------------------------------------------------


def test_build_and_search_round_trip(releases, docs, tmp_path):
    rows = labelled_rows()
    config = IndexConfig(coarse_dims=8, shortlist=20, batch_size=16)
    with build_index(releases["r1"], docs, tmp_path / "idx", config, id_column="id", device="cpu") as index:
        meta = read_meta(tmp_path / "idx")
        assert (meta.count, meta.dims, meta.coarse_dims, meta.generation) == (96, 32, 8, "gen-1")
        r1 = open_release(releases["r1"], "cpu")
        assert meta.release["version"] == "0.1.0" and meta.landmarks_digest == r1.landmarks.digest
        assert meta.landmarks_version == 1 and meta.anchors == tuple(r1.landmarks.anchors)
        # every stored text finds itself first, with its id and metadata intact
        results = index.search([row["text"] for row in rows], k=5)
        for i, (row, hits) in enumerate(zip(rows, results)):
            assert hits[0]["text"] == row["text"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
            assert hits[0]["id"] == f"d{i}" and hits[0]["metadata"] == {"topic": row["topic"]}
            assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        # coarse-to-fine agrees with exact full-K search on most of the top 5 (a 20-row shortlist from 8 coordinates)
        exact = index.search(["the red fox", "a quiet castle", "the old robot"], k=5, exact=True)
        coarse = index.search(["the red fox", "a quiet castle", "the old robot"], k=5)
        overlap = np.mean([len({h["id"] for h in a} & {h["id"] for h in b}) / 5 for a, b in zip(exact, coarse)])
        assert overlap >= 0.6, overlap
        # the scores are exact cosines over all K coordinates, whichever path found the rows
        vector = r1.embedder.relational(["the red fox"])[0]
        stored = r1.embedder.relational([coarse[0][0]["text"]])[0]
        cosine = vector @ stored / np.linalg.norm(vector) / np.linalg.norm(stored)
        assert coarse[0][0]["score"] == pytest.approx(float(cosine), abs=1e-4)


def test_cli_build_search_info(releases, docs, tmp_path):
    out = tmp_path / "idx"
    built = run_cli(
        "index",
        "build",
        "--release",
        str(releases["r1"]),
        "--data",
        str(docs),
        "--id-column",
        "id",
        "--out",
        str(out),
        "--coarse-dims",
        "16",
        "--device",
        "cpu",
    )
    assert built.returncode == 0, built.stderr
    assert "indexed 96 documents with 32 coordinates" in built.stdout
    found = run_cli("index", "search", str(out), "the red fox stands there", "the giant crane", "-k", "3", "--device", "cpu")
    assert found.returncode == 0, found.stderr
    lines = [json.loads(line) for line in found.stdout.splitlines()]
    assert [line["query"] for line in lines] == ["the red fox stands there", "the giant crane"]
    assert lines[0]["hits"][0]["id"] == "d0" and len(lines[0]["hits"]) == 3 and lines[0]["hits"][0]["metadata"] == {"topic": "animal"}
    info = run_cli("index", "info", str(out), "--verify")
    assert info.returncode == 0, info.stderr
    document = json.loads(info.stdout)
    assert document["documents"] == 96 and document["release"]["version"] == "0.1.0" and document["verified"] is True
    assert document["landmarks"]["version"] == 1 and document["pending_upgrade"] is None and document["engine"] == "hnswlib"


def test_exact_engine_is_brute_force_over_the_prefix(releases, docs, tmp_path):
    """With the exact engine and a shortlist as large as the index, coarse-to-fine is exact full-K search."""
    config = IndexConfig(coarse_dims=4, shortlist=96, engine="exact")
    with build_index(releases["r1"], docs, tmp_path / "idx", config, id_column="id", device="cpu") as index:
        queries = ["the red fox", "a quiet castle", "the old robot"]
        assert [[h["id"] for h in hits] for hits in index.search(queries, k=10)] == [
            [h["id"] for h in hits] for hits in index.search(queries, k=10, exact=True)
        ]
        assert (tmp_path / "idx" / "gen-1" / "coarse.npy").is_file()


def test_documents_from_csv_txt_and_jsonl_agree(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "red fox", "n": 1}\n\n{"text": "blue owl", "n": 2}\n')
    (tmp_path / "a.csv").write_text("text,n\nred fox,1\nblue owl,2\n")
    (tmp_path / "a.txt").write_text("red fox\n\nblue owl\n")
    jsonl, csv, txt = (read_documents(tmp_path / name) for name in ("a.jsonl", "a.csv", "a.txt"))
    assert jsonl.texts == csv.texts == txt.texts == ("red fox", "blue owl")
    assert jsonl.ids == csv.ids == txt.ids == ("1", "2")
    assert jsonl.metadata == ({"n": 1}, {"n": 2}) and csv.metadata == ({"n": "1"}, {"n": "2"}) and txt.metadata == ({}, {})


# ---- the append-only rule ---------------------------------------------------------------------


def test_successor_release_searches_the_old_vectors(releases, docs, tmp_path):
    """Index built with r1, queried with r2 (v2 = v1 + 2 anchors): same hits, no re-embedding."""
    with build_index(releases["r1"], docs, tmp_path / "idx", IndexConfig(coarse_dims=8), id_column="id", device="cpu") as index:
        queries = ["the red fox", "a quiet castle", "the old robot"]
        own = index.search(queries, k=5)
        newer = index.search(queries, k=5, release=releases["r2"])
        assert [[h["id"] for h in hits] for hits in own] == [[h["id"] for h in hits] for hits in newer]
        assert read_meta(tmp_path / "idx").dims == 32  # the stored vectors were not touched


def test_incompatible_release_is_refused_in_one_line(releases, docs, tmp_path):
    out = tmp_path / "idx"
    build_index(releases["r1"], docs, out, IndexConfig(coarse_dims=8), id_column="id", device="cpu").close()
    before = tree(out)
    with open_index(out, "cpu") as index, pytest.raises(LandmarkError) as raised:
        index.search("the red fox", release=releases["bad"])
    message = str(raised.value)
    assert "\n" not in message and "differs at anchor 1" in message and "not an append-only successor" in message
    assert "cairn index build" in message
    with pytest.raises(LandmarkError):
        upgrade_index(out, releases["bad"], "cpu")
    for args in (
        ("index", "search", str(out), "the red fox", "--release", str(releases["bad"]), "--device", "cpu"),
        ("index", "upgrade", str(out), "--release", str(releases["bad"]), "--device", "cpu"),
    ):
        result = run_cli(*args)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith("error: index was built on landmark set v1") and result.stderr.count("\n") == 1
    assert tree(out) == before  # nothing written, nothing lost


# ---- upgrades ---------------------------------------------------------------------------------


def test_upgrade_switches_generation_atomically(releases, docs, tmp_path):
    out = tmp_path / "idx"
    build_index(releases["r1"], docs, out, IndexConfig(coarse_dims=8, batch_size=10), id_column="id", device="cpu").close()
    partial = upgrade_index(out, releases["r2"], "cpu", max_batches=3)
    assert partial == {"status": "partial", "release": "0.2.0", "batches_done": 3, "batches": 10}
    with open_index(out, "cpu") as index:  # still the old generation, complete and searchable
        assert index.meta.generation == "gen-1" and index.meta.dims == 32
        assert index.info()["pending_upgrade"] == {"release": "0.2.0", "batches_done": 3, "batches": 10}
        assert index.search("the red fox stands there", k=1)[0][0]["id"] == "d0"
        done = upgrade_index(out, releases["r2"], "cpu")
        assert done["status"] == "done"
        assert index.refresh() and index.meta.generation == "gen-2" and index.meta.dims == 34  # a reader follows the switch
        assert not index.refresh()
    meta = read_meta(out)
    assert (meta.generation, meta.dims, meta.landmarks_version, meta.release["version"]) == ("gen-2", 34, 2, "0.2.0")
    assert [entry["action"] for entry in meta.history] == ["build", "upgrade"]
    assert sorted(p.name for p in out.iterdir()) == ["gen-2", META_FILE, "texts.sqlite", "upgrade.lock"]  # old generation gone
    r2 = open_release(releases["r2"], "cpu")
    stored = np.load(out / "gen-2" / "vectors.npy")
    expected = r2.embedder.relational([row["text"] for row in labelled_rows()])
    np.testing.assert_allclose(stored, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    # killed after the switch, before the clean-up: readers ignore the leftovers, the next upgrade removes them
    (out / "gen-1").mkdir()
    (out / WORK_DIR).mkdir()
    (out / WORK_DIR / "state.json").write_text(json.dumps({"from_generation": "gen-1", "count": 96, "batch_size": 10}))
    with open_index(out, "cpu") as index:
        assert index.info()["pending_upgrade"] is None and index.meta.generation == "gen-2"
    assert upgrade_index(out, releases["r2"], "cpu")["status"] == "current"
    assert sorted(p.name for p in out.iterdir()) == ["gen-2", META_FILE, "texts.sqlite", "upgrade.lock"]


UPGRADER = """
import sys, time
from cairn.index import upgrade_index
def slow(done, total):
    print(done, flush=True)
    time.sleep(0.3)
upgrade_index(sys.argv[1], sys.argv[2], "cpu", progress=slow)
"""


def test_upgrade_resumes_after_kill_9(releases, docs, tmp_path):
    """A real upgrade process is killed with SIGKILL mid-way: the index is intact, and the next upgrade re-embeds only the rest."""
    out = tmp_path / "idx"
    build_index(releases["r1"], docs, out, IndexConfig(coarse_dims=8, batch_size=8), id_column="id", device="cpu").close()
    before = tree(out)
    process = subprocess.Popen(
        [sys.executable, "-c", UPGRADER, str(out), str(releases["r2"])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    try:
        deadline = time.monotonic() + 90
        while len(list((out / WORK_DIR).glob("chunk-*.npy"))) < 3:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the upgrade made no progress in 90 s"
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)  # only the process this test started
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    after = tree(out)
    assert {name: data for name, data in after.items() if not name.startswith(WORK_DIR)} == before  # nothing lost
    progress = pending_upgrade(out, "gen-1")
    assert progress["release"] == "0.2.0" and 3 <= progress["batches_done"] < 12
    with open_index(out, "cpu") as index:
        assert index.meta.generation == "gen-1" and index.search("the red fox stands there", k=1)[0][0]["id"] == "d0"
    embedded: list[int] = []
    result = upgrade_index(out, releases["r2"], "cpu", progress=lambda done, total: embedded.append(done))
    assert result["status"] == "done" and len(embedded) == 12 - progress["batches_done"]  # finished batches are not redone
    meta = read_meta(out)
    assert meta.generation == "gen-2" and meta.dims == 34 and not (out / WORK_DIR).exists()
    with open_index(out, "cpu") as index:
        assert index.search("the red fox stands there", k=1)[0][0]["id"] == "d0"


# ---- the distributed-engine path --------------------------------------------------------------


def test_milvus_lite_engine_matches_exact(releases, docs, tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    config = IndexConfig(coarse_dims=16, shortlist=96, engine="milvus")
    with build_index(releases["r1"], docs, tmp_path / "idx", config, id_column="id", device="cpu") as index:
        assert (tmp_path / "idx" / "gen-1" / "coarse.milvus.db").is_dir()
        queries = ["the red fox", "a quiet castle", "the old robot"]
        via_milvus = index.search(queries, k=5)
        exact = index.search(queries, k=5, exact=True)
        assert [[h["id"] for h in hits] for hits in via_milvus] == [[h["id"] for h in hits] for hits in exact]
    # and it survives an upgrade (a new collection in the new generation)
    assert upgrade_index(tmp_path / "idx", releases["r2"], "cpu")["status"] == "done"
    with open_index(tmp_path / "idx", "cpu") as index:
        assert index.meta.config.engine == "milvus" and index.search("the red fox stands there", k=1)[0][0]["id"] == "d0"


# ---- bad input: one line, exit 2, nothing lost ------------------------------------------------


def test_bad_data_files_are_refused_before_anything_is_written(releases, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "dupes.jsonl").write_text('{"id": 1, "text": "a"}\n{"id": "1", "text": "b"}\n')
    (tmp_path / "blank.csv").write_text('text,n\n"  ",1\n')
    cases = {"empty.jsonl": "no rows to index", "dupes.jsonl": "duplicate id '1'", "blank.csv": "must be a non-empty string"}
    for name, expected in cases.items():
        with pytest.raises(CorpusError, match=expected):
            read_documents(tmp_path / name, id_column="id" if name == "dupes.jsonl" else None)
    result = run_cli(
        "index",
        "build",
        "--release",
        str(releases["r1"]),
        "--data",
        str(tmp_path / "dupes.jsonl"),
        "--id-column",
        "id",
        "--out",
        str(tmp_path / "idx"),
    )
    assert (
        result.returncode == 2
        and result.stderr.strip() == f"error: {tmp_path / 'dupes.jsonl'}:2: duplicate id '1' (first at {tmp_path / 'dupes.jsonl'}:1)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.csv", "dupes.jsonl", "empty.jsonl"]  # no index, no staging left


def test_existing_output_is_never_overwritten(releases, docs, tmp_path):
    out = tmp_path / "idx"
    build_index(releases["r1"], docs, out, IndexConfig(coarse_dims=8), id_column="id", device="cpu").close()
    before = tree(out)
    with pytest.raises(CairnError, match="already exists"):
        build_index(releases["r1"], docs, out, device="cpu")
    assert tree(out) == before


@pytest.mark.parametrize("damage", ["index.json garbage", "index.json field", "vectors truncated", "graph garbage", "texts deleted"])
def test_a_damaged_index_is_one_clear_error(releases, docs, tmp_path, damage):
    out = tmp_path / "idx"
    build_index(releases["r1"], docs, out, IndexConfig(coarse_dims=8), id_column="id", device="cpu").close()
    if damage == "index.json garbage":
        (out / META_FILE).write_bytes(b"\x00{not json")
    elif damage == "index.json field":
        document = json.loads((out / META_FILE).read_text())
        del document["landmarks"]
        (out / META_FILE).write_text(json.dumps(document))
    elif damage == "vectors truncated":
        path = out / "gen-1" / "vectors.npy"
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "graph garbage":
        path = out / "gen-1" / "coarse.hnsw"
        path.write_bytes(os.urandom(path.stat().st_size))  # same size: only the loader can tell
    else:
        (out / "texts.sqlite").unlink()
    before = tree(out)
    result = run_cli("index", "search", str(out), "the red fox", "--device", "cpu")
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert tree(out) == before


def test_a_query_without_known_tokens_is_refused(releases, docs, tmp_path):
    out = tmp_path / "idx"
    build_index(releases["r1"], docs, out, IndexConfig(coarse_dims=8), id_column="id", device="cpu").close()
    with open_index(out, "cpu") as index:
        for query in ("", "   ", "\u2603\u2603"):
            with pytest.raises(CairnError, match="has no token"):
                index.search(query)
        with pytest.raises(CairnError, match="k must be between"):
            index.search("the red fox", k=0)
    result = run_cli("index", "search", str(out), "   ", "--device", "cpu")
    assert result.returncode == 2 and result.stderr.startswith("error: query '   ' has no token") and result.stderr.count("\n") == 1


# ---- the HTTP endpoint ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_serve_answers_json_and_rejects_bad_requests(aiohttp_client, releases, docs, tmp_path):
    out = tmp_path / "idx"
    build_index(releases["r1"], docs, out, IndexConfig(coarse_dims=8), id_column="id", device="cpu").close()
    client = await aiohttp_client(make_app(out, None, "cpu"))
    response = await client.get("/search", params={"q": "the red fox stands there", "k": "3"})
    assert response.status == 200
    body = await response.json()
    assert body["release"] == "0.1.0" and body["generation"] == "gen-1" and len(body["hits"]) == 3 and body["hits"][0]["id"] == "d0"
    for params, expected in (
        ({}, "missing query"),
        ({"q": "fox", "k": "x"}, "k must be an integer"),
        ({"q": "fox", "k": "0"}, "k must be between"),
        ({"q": "\u2603"}, "has no token"),
    ):
        response = await client.get("/search", params=params)
        assert response.status == 400 and expected in (await response.json())["error"]
    info = await (await client.get("/info")).json()
    assert info["documents"] == 96
    assert (await client.post("/search")).status == 405  # read-only
    # an upgrade while serving: the next request answers from the new generation with the new release
    assert upgrade_index(out, releases["r2"], "cpu")["status"] == "done"
    body = await (await client.get("/search", params={"q": "the red fox stands there", "k": "1"})).json()
    assert body["generation"] == "gen-2" and body["release"] == "0.2.0" and body["hits"][0]["id"] == "d0"


# ---- reported in every release's manifest and on the Releases page ----------------------------


def test_index_upgrade_metric_known_answers():
    from cairn.evaluation.compatibility import compatibility_report, index_upgrade

    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(4), 30)
    centres = rng.normal(size=(4, 16))
    vectors = centres[labels] + rng.normal(scale=0.3, size=(120, 16))
    same = index_upgrade(vectors[:80], vectors[:80], vectors[80:], labels[:80], labels[80:])
    assert same["index_upgrade_ratio"] == pytest.approx(1.0) and same["index_kept_p10"] > 0.9
    unrelated = index_upgrade(rng.normal(size=(80, 16)), vectors[:80], vectors[80:], labels[:80], labels[80:])
    assert unrelated["index_upgrade_ratio"] < 0.6  # an index in other coordinates finds topics at about chance (1/4)
    rotation = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    report = compatibility_report(
        {"relational": lambda texts: vectors, "absolute": lambda texts: vectors},
        {"relational": lambda texts: vectors, "absolute": lambda texts: vectors @ rotation},
        [str(i) for i in range(120)],
        labels.tolist(),
    )
    assert report["relational"]["index_upgrade_ratio"] == pytest.approx(1.0)
    assert report["absolute"]["index_upgrade_ratio"] < 0.6  # rotated absolute vectors: the old index is lost


def test_releases_page_shows_the_index_upgrade_promise():
    from cairn.dashboard.promises import promise_rows
    from cairn.releases.layout import REQUIRED_FILES
    from cairn.releases.manifest import parse_manifest

    def manifest(compatibility: dict):
        document = {
            "version": "0.2.0",
            "parent_version": "0.1.0",
            "run_id": "r",
            "global_step": 3,
            "landmarks_version": 1,
            "landmarks_digest": "0" * 64,
            "files": {name: {"sha256": "a" * 64, "length": 1} for name in REQUIRED_FILES},
            "compatibility": compatibility,
        }
        return parse_manifest(json.dumps(document).encode())

    rows = promise_rows(
        manifest(
            {"relational": {"head_ratio": 0.99, "index_upgrade_ratio": 0.93}, "absolute": {"head_ratio": 0.3, "index_upgrade_ratio": 0.41}}
        )
    )
    row = next(r for r in rows if r["promise"].startswith("Search without re-embedding"))
    assert row["measured"] == 0.93 and row["met"] is True and "absolute vectors: 41.0%" in row["detail"]
    low = promise_rows(manifest({"relational": {"index_upgrade_ratio": 0.5}}))
    assert next(r for r in low if r["promise"].startswith("Search without"))["met"] is False
    assert not any(r["promise"].startswith("Search without") for r in promise_rows(manifest({"relational": {"head_ratio": 0.99}})))
