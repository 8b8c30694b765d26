"""Cutting releases in process: the manifest carries computed promises (compatibility with the parent and the
release before it, Matryoshka prefixes against their references, alignment with the outside reference encoder)."""

from __future__ import annotations

import pytest
import torch

from cairn.coordinator import outside_reference
from cairn.coordinator.init import init_workdir
from cairn.coordinator.landmark_versions import latest_landmarks
from cairn.coordinator.ledger import Ledger
from cairn.coordinator.releaser import ReleaseInputs, cut_release
from cairn.protocol.workdir import Workdir
from cairn.corpora import load_corpus
from cairn.protocol.encoder import build_encoder, config_for
from cairn.protocol.errors import CairnError
from cairn.releases.manifest import read_manifest
from cairn.protocol.run_config import SwarmConfig, TrainingConfig
from cairn.protocol.tokenizer import TextTokenizer
from cairn.training.task import encoder_config, reference_texts
from tests.swarm_util import write_corpus

pytestmark = pytest.mark.slow  # three quick evaluation suites and a MiniLM encoding: about a minute


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Three releases of one run: 0.1.0; 0.2.0 with the same weights; 0.3.0 after a weight perturbation."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("releaser")
    corpus_spec = write_corpus(root / "pairs.jsonl", pairs=3000)
    # a random start: init cuts no release, so the first one here has no parent
    training = TrainingConfig(landmarks=64, reference_size=256, initialisation="random")
    config = init_workdir(root / "coordinator", "test-run", corpus_spec, training, SwarmConfig())
    workdir = Workdir(root / "coordinator")
    corpus = load_corpus(corpus_spec)
    tokenizer = TextTokenizer.load(workdir.run_dir, config_for(training.model).max_len)
    inputs = ReleaseInputs(config, corpus, tokenizer, latest_landmarks(workdir), reference_texts(corpus, training.reference_size, 0))
    torch.manual_seed(0)
    model = build_encoder(encoder_config(training, tokenizer))
    ledger = Ledger(workdir.ledger)
    cache = workdir.run_dir / outside_reference.CACHE_FILE  # written by init, before any peer starts
    cached_at = cache.stat().st_mtime_ns
    manifests = [cut_release(workdir, inputs, model, 10, ledger)]
    manifests.append(cut_release(workdir, inputs, model, 20, ledger))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    manifests.append(cut_release(workdir, inputs, model, 30, ledger))
    ledger.close()
    return workdir, inputs, manifests, cached_at == cache.stat().st_mtime_ns


def test_first_release_has_no_parent_to_compare_with(released):
    _, _, manifests, _ = released
    assert manifests[0].compatibility == {}
    assert str(manifests[0].version) == "0.1.0"


def test_identical_weights_are_fully_compatible_and_the_report_reaches_the_grandparent(released):
    _, _, manifests, _ = released
    same, changed = manifests[1].compatibility, manifests[2].compatibility
    assert same["parent"] == "0.1.0" and "grandparent" not in same
    assert same["relational"]["agreement"] == pytest.approx(1.0, abs=1e-4)
    assert same["relational"]["head_ratio"] == pytest.approx(1.0)
    assert changed["parent"] == "0.2.0" and changed["grandparent"]["version"] == "0.1.0"
    assert changed["relational"]["agreement"] < 0.999
    # 0.1.0 and 0.2.0 share weights, so comparing 0.3.0 with either gives the same numbers
    assert changed["grandparent"]["relational"] == pytest.approx(changed["relational"])


def test_matryoshka_block_has_curves_references_and_the_goal(released):
    _, inputs, manifests, _ = released
    block = manifests[2].metrics["matryoshka"]
    width = inputs.landmarks.size
    assert set(block["relational_prefix"]) == {"8", "16", "32", str(width), "k95"}
    assert set(block["pca_absolute"]) >= {"8", "16", "32"}
    assert block["goal"] == {"k95": width // 8}
    k95 = block["relational_prefix"]["k95"]
    assert k95 in (8, 16, 32, width)
    assert block["goal_met"] == (k95 <= width // 8)
    assert all(0.0 <= block[curve][k] <= 1.0 for curve in ("relational_prefix", "random_order") for k in ("8", str(width)))
    # the full vector is the same set of coordinates in any order
    assert block["random_order"][str(width)] == pytest.approx(block["relational_prefix"][str(width)])


def test_outside_alignment_is_measured_for_every_release_from_the_cache_init_wrote(released):
    workdir, _, manifests, cache_reused = released
    for manifest in manifests:
        outside = manifest.metrics["outside"]
        assert outside["reference"].startswith("all-MiniLM-L6-v2 on ")
        assert 0.0 <= outside["relational"]["mutual_knn10"] <= 1.0
        assert 0.0 <= outside["absolute"]["mutual_knn10"] <= 1.0
        assert 0.0 < outside["chance"]["mutual_knn10"] < 0.05
    assert cache_reused, "a release re-embedded the reference texts"
    # what was signed and stored is what cut_release returned
    assert read_manifest(workdir.releases / "0.3.0").metrics == manifests[2].metrics


def test_a_missing_reference_encoder_gives_no_vectors_and_writes_no_cache(tmp_path, monkeypatch):
    def not_installed():
        raise CairnError("the reference encoder all-MiniLM-L6-v2 is not installed")

    monkeypatch.setattr("cairn.evaluation.reference.minilm_embed_fn", not_installed)
    other = Workdir(tmp_path)
    assert outside_reference.reference_vectors(other, ["a text", "another"]) is None
    assert not (other.run_dir / outside_reference.CACHE_FILE).exists()


def test_init_without_the_outside_reference_prepares_neither_it_nor_the_yardstick(tmp_path, monkeypatch):
    """`cairn coordinator init --no-outside-reference` (as `run --no-outside-reference`): no MiniLM vectors and no
    yardstick fit, the minute of CPU an operator without the reference extra, or a container test, does not want."""
    from click.testing import CliRunner

    from cairn.coordinator.cli import coordinator
    from cairn.evaluation.yardstick import yardstick_dir

    monkeypatch.setenv("CAIRN_CACHE_DIR", str(tmp_path / "cache"))
    corpus_spec = write_corpus(tmp_path / "pairs.jsonl", pairs=600)
    result = CliRunner().invoke(
        coordinator,
        [
            "init",
            "--workdir",
            str(tmp_path / "c"),
            "--corpus",
            corpus_spec,
            "--initialisation",
            "random",
            "--landmarks",
            "64",
            "--no-outside-reference",
        ],
    )
    assert result.exit_code == 0, result.output
    workdir = Workdir(tmp_path / "c")
    assert workdir.run_config_path.is_file()
    assert not (workdir.run_dir / outside_reference.CACHE_FILE).exists() and not yardstick_dir().exists()
