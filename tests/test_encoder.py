"""The encoder: named sizes, shapes, padding invariance, save/load, devices; and rotation of its output space
end to end through calibration and the relational embedding."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from cairn.protocol.embedder import Embedder, calibrate, encode_texts, load_bundle, save_bundle
from cairn.protocol.encoder import (
    CONFIG_FILE,
    MODEL_SIZES,
    WEIGHTS_FILE,
    Encoder,
    EncoderConfig,
    config_for,
    load_encoder,
    pick_device,
    save_encoder,
)
from cairn.protocol.errors import CairnError
from cairn.protocol.landmarks import LandmarkSet
from cairn.protocol.tokenizer import TextTokenizer, train_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one torch thread on the shared 2-core boxes


MINI = EncoderConfig(vocab_size=300, max_len=32, d_model=32, n_layers=2, n_heads=4, d_ff=64)


@pytest.fixture(scope="module")
def mini() -> Encoder:
    torch.manual_seed(0)
    return Encoder(MINI).eval()


def test_named_sizes():
    tiny, small = Encoder(config_for("tiny")), Encoder(config_for("small"))
    assert tiny.num_parameters() <= 2_000_000
    assert 20_000_000 <= small.num_parameters() <= 24_000_000  # the size of all-MiniLM-L6-v2
    assert config_for("small") == MODEL_SIZES["small"]
    with pytest.raises(CairnError, match="tiny"):
        config_for("huge")


def test_forward_shape_and_finite(mini):
    ids = torch.randint(2, MINI.vocab_size, (3, 7))
    mask = torch.ones_like(ids)
    out = mini(ids, mask)
    assert out.shape == (3, MINI.d_model) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_appending_padding_does_not_change_the_pooled_vector(mini):
    torch.manual_seed(1)
    ids = torch.randint(2, MINI.vocab_size, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a shorter text in the same batch
    ids[1, 5:] = MINI.pad_id
    base = mini(ids, mask)
    for extra in (1, 6, 20):
        padded_ids = torch.cat([ids, torch.full((4, extra), MINI.pad_id)], dim=1)
        padded_mask = torch.cat([mask, torch.zeros((4, extra), dtype=mask.dtype)], dim=1)
        torch.testing.assert_close(mini(padded_ids, padded_mask), base, atol=1e-5, rtol=1e-5)
    # a text alone equals the same text inside a padded batch
    torch.testing.assert_close(mini(ids[1:2, :5], mask[1:2, :5]), base[1:2], atol=1e-5, rtol=1e-5)


def test_padding_is_ignored_whatever_the_pad_positions_hold(mini):
    """Masked positions do not leak: garbage ids under a zero mask give the same vector."""
    ids = torch.randint(2, MINI.vocab_size, (2, 10))
    mask = torch.ones_like(ids)
    mask[:, 6:] = 0
    garbage = ids.clone()
    garbage[:, 6:] = torch.randint(2, MINI.vocab_size, (2, 4))
    torch.testing.assert_close(mini(garbage, mask), mini(ids, mask), atol=1e-5, rtol=1e-5)
    # but real tokens do matter (the test above is not vacuous)
    changed = ids.clone()
    changed[:, 2] = (changed[:, 2] + 1) % MINI.vocab_size
    assert not torch.allclose(mini(changed, mask), mini(ids, mask), atol=1e-4)


def test_dropout_is_active_in_train_mode_only():
    torch.manual_seed(2)
    model = Encoder(MINI)
    ids = torch.randint(2, MINI.vocab_size, (2, 8))
    mask = torch.ones_like(ids)
    model.train()
    assert not torch.allclose(model(ids, mask), model(ids, mask))
    model.eval()
    assert torch.equal(model(ids, mask), model(ids, mask))


def test_save_load_round_trip(mini, tmp_path):
    save_encoder(mini, tmp_path)
    assert (tmp_path / WEIGHTS_FILE).exists() and json.loads((tmp_path / CONFIG_FILE).read_text()) == asdict(MINI)
    loaded = load_encoder(tmp_path)
    assert loaded.config == MINI and not loaded.training
    ids = torch.randint(2, MINI.vocab_size, (3, 11))
    mask = torch.ones_like(ids)
    assert torch.equal(loaded(ids, mask), mini(ids, mask))


def test_loading_leaves_the_global_random_generator_alone(mini, tmp_path):
    """Seed, load, build: the built model is the seed's, whether or not something was loaded in between."""
    save_encoder(mini, tmp_path / "enc")
    torch.manual_seed(7)
    expected = Encoder(mini.config).state_dict()
    torch.manual_seed(7)
    load_encoder(tmp_path / "enc")
    built = Encoder(mini.config).state_dict()
    assert all(torch.equal(built[name], expected[name]) for name in expected)


def test_load_errors(mini, tmp_path):
    with pytest.raises(CairnError, match="missing encoder config"):
        load_encoder(tmp_path)
    save_encoder(mini, tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**asdict(MINI), "d_model": 64}))
    with pytest.raises(CairnError, match="do not match"):
        load_encoder(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**asdict(MINI), "colour": "red"}))
    with pytest.raises(CairnError, match="not a valid encoder config"):
        load_encoder(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{truncated")
    with pytest.raises(CairnError, match="not a valid encoder config"):
        load_encoder(tmp_path)
    save_encoder(mini, tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(CairnError, match="missing encoder weights"):
        load_encoder(tmp_path)
    for junk in (b"not safetensors at all", b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"):
        (tmp_path / WEIGHTS_FILE).write_bytes(junk)
        with pytest.raises(CairnError, match="safetensors|do not match"):
            load_encoder(tmp_path)
    save_encoder(mini, tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes((tmp_path / WEIGHTS_FILE).read_bytes()[:-100])  # truncated download
    with pytest.raises(CairnError):
        load_encoder(tmp_path)


def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CairnError, match="no CUDA"):
        pick_device("cuda")
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(CairnError, match="unknown device"):
        pick_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the real no-GPU path")
def test_pick_device_cuda_without_a_gpu_is_an_error():
    with pytest.raises(CairnError):
        pick_device("cuda")


# ---- rotation of a real encoder's output space, end to end --------------------------------------------------


class Rotated(Encoder):
    """The same network with an orthogonal map (and a scale) applied to its pooled output."""

    def __init__(self, inner: Encoder, q: torch.Tensor, scale: float):
        super().__init__(inner.config)
        self.load_state_dict(inner.state_dict())
        self.register_buffer("q", q)
        self.scale = scale

    def forward(self, input_ids, attention_mask):
        return self.scale * (super().forward(input_ids, attention_mask) @ self.q)


TEXTS = [
    f"{a} {n} {v}"
    for a in ("red", "blue", "old", "tiny", "bright")
    for n in ("fox", "river", "house", "song")
    for v in ("sleeps", "flows", "stands", "plays")
]


def test_rotating_the_encoder_output_leaves_the_relational_embedding_unchanged(mini, tmp_path):
    tokenizer = TextTokenizer(train_tokenizer(TEXTS, 200), MINI.max_len)
    model = Encoder(replace(MINI, vocab_size=tokenizer.vocab_size)).eval()
    generator = torch.Generator().manual_seed(5)
    q, r = torch.linalg.qr(torch.randn(MINI.d_model, MINI.d_model, generator=generator))
    rotated = Rotated(model, q * torch.sign(torch.diagonal(r)), scale=7.5).eval()
    absolute, absolute_rotated = encode_texts(model, tokenizer, TEXTS), encode_texts(rotated, tokenizer, TEXTS)
    assert np.abs(absolute - absolute_rotated).max() > 0.1  # the absolute vectors really moved

    landmarks = LandmarkSet(1, TEXTS[::5])
    calibrated = calibrate(model, tokenizer, landmarks, TEXTS)
    calibrated_rotated = calibrate(rotated, tokenizer, landmarks, TEXTS)
    np.testing.assert_allclose(calibrated_rotated.stats.mean, calibrated.stats.mean, atol=1e-5)
    np.testing.assert_allclose(calibrated_rotated.stats.std, calibrated.stats.std, atol=1e-5)

    embedder, embedder_rotated = Embedder(model, tokenizer, calibrated), Embedder(rotated, tokenizer, calibrated_rotated)
    queries = ["red river plays", "a house that sleeps", "unknown words here"]
    np.testing.assert_allclose(embedder_rotated.relational(queries), embedder.relational(queries), atol=1e-3)
    np.testing.assert_allclose(embedder_rotated.embed(queries, dims=2), embedder.embed(queries, dims=2), atol=1e-4)
    assert embedder.embed(queries).shape == (3, landmarks.size)

    # and the bundle written to disk reproduces the embedding exactly
    save_bundle(tmp_path, model, tokenizer, calibrated)
    np.testing.assert_array_equal(load_bundle(tmp_path, device="cpu").embed(queries, dims=3), embedder.embed(queries, dims=3))


def test_embedder_needs_calibrated_landmarks(mini):
    tokenizer = TextTokenizer(train_tokenizer(TEXTS, 200), MINI.max_len)
    with pytest.raises(CairnError, match="calibrate"):
        Embedder(Encoder(replace(MINI, vocab_size=tokenizer.vocab_size)), tokenizer, LandmarkSet(1, TEXTS[:4]))


def test_encode_texts_restores_train_mode():
    tokenizer = TextTokenizer(train_tokenizer(TEXTS, 200), MINI.max_len)
    model = Encoder(replace(MINI, vocab_size=tokenizer.vocab_size)).train()
    first = encode_texts(model, tokenizer, TEXTS[:5], batch_size=2)
    assert model.training
    np.testing.assert_allclose(encode_texts(model, tokenizer, TEXTS[:5], batch_size=5), first, atol=1e-5)
    assert encode_texts(model, tokenizer, []).shape == (0, MINI.d_model)
