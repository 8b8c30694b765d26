"""The static encoder family, the established vocabulary and the distilled start, on known answers."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from cairn.training.distill import distilled_table, encoder_from_table, load_or_distill, random_rotation, token_texts
from cairn.protocol.embedder import Embedder, calibrate, encode_texts, load_bundle, save_bundle
from cairn.protocol.encoder import (
    CONFIG_FILE,
    STATIC_INIT_STD,
    EncoderConfig,
    StaticEncoder,
    build_encoder,
    config_for,
    load_encoder,
    save_encoder,
)
from cairn.protocol.errors import CairnError
from cairn.protocol.landmarks import LandmarkSet
from cairn.protocol.tokenizer import TextTokenizer, make_tokenizer, wordpiece_from_file

pytestmark = pytest.mark.usefixtures("one_thread")

STATIC = EncoderConfig(architecture="static", vocab_size=50, max_len=16, d_model=8, n_layers=0, n_heads=1, d_ff=0, dropout=0.0)


@pytest.fixture(scope="module")
def bert() -> TextTokenizer:
    return TextTokenizer(make_tokenizer("bert-base-uncased", [], 0), 256)


def test_the_static_vector_is_the_mean_of_the_real_tokens():
    torch.manual_seed(0)
    model = StaticEncoder(STATIC)
    table = model.tokens.weight.detach()
    ids = torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0], [9, 9, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
    expected = torch.stack([table[[3, 4, 5]].mean(0), table[7], table[[9, 9, 2]].mean(0)])
    torch.testing.assert_close(model(ids, mask), expected)
    # padding and whatever sits under a zero mask never enter the mean
    garbage = ids.clone()
    garbage[:, 3] = 11
    torch.testing.assert_close(model(garbage, mask), expected)
    wider = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], 1), torch.cat([mask, torch.zeros(3, 5, dtype=torch.long)], 1)
    torch.testing.assert_close(model(*wider), expected)
    # an empty text is the zero vector, not NaN
    assert torch.equal(model(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)), torch.zeros(1, STATIC.d_model))


def test_named_static_size_and_its_factory():
    config = config_for("static")
    assert config.architecture == "static" and config.d_model == 256 and config.vocab_size == 30522
    model = build_encoder(config)
    assert isinstance(model, StaticEncoder) and model.num_parameters() == 30522 * 256
    assert abs(float(model.tokens.weight.detach().std()) - STATIC_INIT_STD) < 0.01
    with pytest.raises(CairnError, match="unknown encoder architecture"):
        build_encoder(replace(STATIC, architecture="rnn"))


def test_static_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = StaticEncoder(STATIC)
    save_encoder(model, tmp_path)
    assert json.loads((tmp_path / CONFIG_FILE).read_text()) == asdict(STATIC)
    loaded = load_encoder(tmp_path)
    assert isinstance(loaded, StaticEncoder) and loaded.config == STATIC
    ids, mask = torch.randint(1, 50, (4, 6)), torch.ones(4, 6, dtype=torch.long)
    assert torch.equal(loaded(ids, mask), model(ids, mask))


def test_an_encoder_config_without_architecture_is_a_transformer(tmp_path):
    """Bundles written before the static family existed name no architecture: they load as transformers."""
    transformer = EncoderConfig(vocab_size=40, max_len=8, d_model=8, n_layers=1, n_heads=2, d_ff=16)
    save_encoder(build_encoder(transformer), tmp_path)
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    del document["architecture"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(document))
    assert load_encoder(tmp_path).config == transformer


TEXTS = [
    f"{a} {n} {v}"
    for a in ("red", "blue", "old", "tiny", "bright")
    for n in ("fox", "river", "house", "song")
    for v in ("sleeps", "flows", "stands", "plays")
]


def test_rotating_a_static_table_leaves_the_relational_embedding_unchanged(bert, tmp_path):
    config = replace(config_for("static"), d_model=16)
    table = np.random.default_rng(0).normal(0, 0.1, (config.vocab_size, config.d_model)).astype(np.float32)
    model, rotated = encoder_from_table(config, table, None).eval(), encoder_from_table(config, table, rotation_seed=3).eval()
    assert np.abs(encode_texts(model, bert, TEXTS) - encode_texts(rotated, bert, TEXTS)).max() > 0.05  # absolute moved
    landmarks = LandmarkSet(1, TEXTS[::4])
    embedder = Embedder(model, bert, calibrate(model, bert, landmarks, TEXTS))
    embedder_rotated = Embedder(rotated, bert, calibrate(rotated, bert, landmarks, TEXTS))
    queries = ["a red fox", "the song that flows", "words never seen before"]
    np.testing.assert_allclose(embedder_rotated.relational(queries), embedder.relational(queries), atol=1e-4)
    # the prefix property: the first k coordinates, re-normalised, are the k-dim embedding
    full = embedder.relational(queries)
    for k in (1, 3, landmarks.size):
        prefix = full[:, :k] / np.linalg.norm(full[:, :k], axis=1, keepdims=True)
        np.testing.assert_allclose(embedder.embed(queries, dims=k), prefix, atol=1e-6)
    save_bundle(tmp_path, model, bert, embedder.landmarks)
    np.testing.assert_array_equal(load_bundle(tmp_path, device="cpu").embed(queries, dims=4), embedder.embed(queries, dims=4))


def test_bert_vocabulary_tokenizes_like_bert_without_cls_and_sep(bert):
    vocabulary = bert.tokenizer.get_vocab()
    assert bert.vocab_size == 30522 and vocabulary["[PAD]"] == 0
    encoding = bert.tokenizer.encode("Unaffable dogs!")
    assert encoding.tokens == ["una", "##ffa", "##ble", "dogs", "!"]  # lower-cased WordPiece, no [CLS]/[SEP]
    ids, mask = bert.batch(["a dog", "dogs bark loudly"])
    assert ids[0, 2:].tolist() == [0] * (ids.shape[1] - 2) and mask.sum(1).tolist() == [2, 3]
    # the same vocabulary twice is the same tokenizer: one digest on every machine
    assert TextTokenizer(make_tokenizer("bert-base-uncased", [], 0), 256).digest() == bert.digest()


def test_a_vocabulary_file_without_pad_at_zero_is_refused(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[UNK]\n[PAD]\nthe\n")
    with pytest.raises(CairnError, match=r"\[PAD\] as id 0"):
        wordpiece_from_file(path)
    with pytest.raises(CairnError, match="unknown vocabulary"):
        make_tokenizer("klingon", [], 0)


def _fake_teacher(texts: list[str]) -> np.ndarray:
    """A deterministic 'teacher': a fixed random vector per text (seeded by a hash of the text)."""
    return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=24) for t in texts])


def test_distilled_table_is_a_scaled_pca_of_the_teacher(bert):
    table = distilled_table(_fake_teacher, bert, 8)
    assert table.shape == (bert.vocab_size, 8) and table.dtype == np.float32
    assert abs(float(table.std()) - STATIC_INIT_STD) < 1e-3
    # PCA: centred, columns uncorrelated, variance decreasing
    np.testing.assert_allclose(table.mean(0), 0, atol=1e-4)
    covariance = np.cov(table.T)
    np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0, atol=1e-5)
    assert all(np.diff(np.diag(covariance)) <= 1e-9)
    np.testing.assert_array_equal(distilled_table(_fake_teacher, bert, 8), table)  # deterministic, signs fixed
    assert token_texts(bert)[bert.tokenizer.token_to_id("##ffa")] == "ffa"  # the teacher reads pieces without '##'


def test_distilled_table_is_cached_per_vocabulary_and_width(bert, tmp_path):
    calls = []

    def teacher():
        calls.append(1)
        return _fake_teacher

    first = load_or_distill(bert, 8, teacher, cache=tmp_path)
    again = load_or_distill(bert, 8, teacher, cache=tmp_path)
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1
    load_or_distill(bert, 4, teacher, cache=tmp_path)  # another width: another table
    assert len(calls) == 2
    for path in tmp_path.iterdir():  # a damaged cache is recomputed, not trusted
        path.write_bytes(b"garbage")
    np.testing.assert_array_equal(load_or_distill(bert, 8, teacher, cache=tmp_path), first)


def test_random_rotation_is_orthogonal_and_seeded():
    q = random_rotation(6, 1)
    np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-10)
    np.testing.assert_array_equal(q, random_rotation(6, 1))
    assert not np.allclose(q, random_rotation(6, 2))


def test_a_transformer_cannot_start_from_a_distilled_table():
    with pytest.raises(CairnError, match="only the static encoder"):
        encoder_from_table(EncoderConfig(), np.zeros((8000, 128), dtype=np.float32), None)
    from cairn.protocol.run_config import TrainingConfig

    with pytest.raises(ValueError, match="distilled start needs the static model"):
        TrainingConfig(model="tiny", initialisation="distilled")


def test_mean_token_vector_loss_is_ln_batch_when_collapsed():
    """Known answers of the objective's pieces: collapse costs exactly ln B, a perfect match ~0."""
    from cairn.training.objective import info_nce
    from cairn.training.task import mean_pairwise_cosine

    same = torch.ones(16, 8)
    assert abs(float(info_nce(same, same, 0.05)) - math.log(16)) < 1e-5
    assert abs(mean_pairwise_cosine(same) - 1.0) < 1e-6
    distinct = torch.eye(16, 16)
    assert float(info_nce(distinct, distinct, 0.05)) < 1e-6
    assert abs(mean_pairwise_cosine(distinct)) < 1e-6
