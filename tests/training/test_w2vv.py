"""W2VV / Enhanced W2VV text encoders, losses and ONNX export."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import torch.nn.functional as F  # noqa: E402

from xlsearch_training.w2vv.losses import (  # noqa: E402
    contrastive_loss,
    infonce_loss,
    mse_loss,
    vse_hardest_negative_loss,
)
from xlsearch_training.w2vv.model import TextEncoderConfig, W2VVTextEncoder, build_text_encoder  # noqa: E402
from xlsearch_training.w2vv.text_export import export_text_encoder  # noqa: E402

V = 40


def _cfg(**kw) -> TextEncoderConfig:
    base = dict(vocab_size=V, out_dim=16, word_dim=12, gru_dim=10, mlp_hidden=[24])
    return TextEncoderConfig(**(base | kw))


def _model(**kw) -> W2VVTextEncoder:
    torch.manual_seed(0)
    return build_text_encoder(_cfg(**kw)).eval()


def _batch(seqs: list[list[int]], pad_to: int | None = None) -> tuple:
    T = pad_to or max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return ids, torch.tensor([len(s) for s in seqs], dtype=torch.int64)


SHORT, LONG = [5, 7, 9], [3, 4, 5, 6, 7, 8, 9, 10]


def test_config_round_trip() -> None:
    cfg = _cfg(attention=True, sentence_dim=384, mlp_hidden=[])
    assert TextEncoderConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.feature_dim == V + 12 + 10 + 384
    with pytest.raises(ValueError):
        TextEncoderConfig.from_dict(cfg.to_dict() | {"typo": 1})


@pytest.mark.parametrize("attention", [False, True])
def test_padding_does_not_change_output(attention: bool) -> None:
    model = _model(attention=attention)
    with torch.no_grad():
        alone = model.embed(*_batch([SHORT]))
        batched = model.embed(*_batch([SHORT, LONG], pad_to=12))
    torch.testing.assert_close(batched[0:1], alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched.norm(dim=1), torch.ones(2))


def test_w2vv_uses_state_at_length_minus_one() -> None:
    model = _model(attention=False, use_bow=False, use_mean_embedding=False)  # features == GRU part only
    ids, lengths = _batch([SHORT, LONG], pad_to=12)
    with torch.no_grad():
        feats = model.features(ids, lengths)
        for i, seq in enumerate([SHORT, LONG]):
            states, _ = model.gru(model.embedding(torch.tensor([seq])))
            torch.testing.assert_close(feats[i], states[0, len(seq) - 1], atol=1e-6, rtol=0)


def test_attention_is_eq1_over_valid_steps() -> None:
    model = _model(attention=True, use_bow=False, use_mean_embedding=False)
    ids, lengths = _batch([SHORT, LONG], pad_to=12)
    with torch.no_grad():
        feats = model.features(ids, lengths)
        states, _ = model.gru(model.embedding(torch.tensor([SHORT])))  # [1, n, H], no padding at all
        m = model.attention(states[0]).squeeze(1)  # m_i = w^T h_i + b
        expected = (torch.softmax(m, 0).unsqueeze(1) * states[0]).sum(0)
    torch.testing.assert_close(feats[0], expected, atol=1e-6, rtol=0)


def test_bow_and_mean_embedding_branches() -> None:
    model = _model(use_gru=False)
    ids, lengths = _batch([[5, 5, 7]], pad_to=6)
    with torch.no_grad():
        feats = model.features(ids, lengths)
    bow, mean = feats[0, :V], feats[0, V:]
    expected = torch.zeros(V)
    expected[5], expected[7] = 2, 1
    torch.testing.assert_close(bow, expected / math.sqrt(5))  # L2-normalised counts, pad not counted
    torch.testing.assert_close(mean, model.embedding.weight[[5, 5, 7]].mean(0).detach())


def test_sentence_branch_required_and_used() -> None:
    model = _model(sentence_dim=8)
    ids, lengths = _batch([SHORT])
    with pytest.raises(ValueError):
        model(ids, lengths)
    with torch.no_grad():
        a = model(ids, lengths, torch.zeros(1, 8))
        b = model(ids, lengths, torch.ones(1, 8))
    assert not torch.allclose(a, b)


# --- losses (hand-computed values) -----------------------------------------------------------------------


def test_mse_loss() -> None:
    pred, target = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 2)
    assert mse_loss(pred, target).item() == pytest.approx(2.5)  # (1 + 4) / 2
    assert mse_loss(
        torch.tensor([[3.0, 4.0]]), torch.tensor([[2.0, 0.0]]), normalize=True
    ).item() == pytest.approx(0.8)  # (0.6-1)^2 + 0.8^2


def test_contrastive_loss() -> None:
    text = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    image = torch.tensor([[0.0, 0.0], [0.0, 4.0]])
    # positives: D^2 = 0 and 25 -> 12.5; negatives: D = 4 and 3
    assert contrastive_loss(text, image, margin=2.0).item() == pytest.approx(12.5)
    assert contrastive_loss(text, image, margin=5.0).item() == pytest.approx(12.5 + (1 + 4) / 2)
    assert contrastive_loss(text, image, margin=5.0, image_ids=torch.tensor([7, 7])).item() == pytest.approx(
        12.5
    )
    # normalised: t=(1,0),(0,1) i=(1,0),(1,0): positives 0 and 2 -> 1; negatives D=sqrt2 and 0
    t, i = torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([[1.0, 0.0], [5.0, 0.0]])
    expected = 1.0 + ((1.5 - math.sqrt(2)) ** 2 + 1.5**2) / 2
    assert contrastive_loss(t, i, margin=1.5, normalize=True).item() == pytest.approx(expected, abs=1e-5)


def test_contrastive_loss_gradient_finite_at_zero_distance() -> None:
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    contrastive_loss(text, torch.tensor([[1.0, 0.0], [1.0, 0.0]])).backward()
    assert torch.isfinite(text.grad).all()


def test_infonce_loss() -> None:
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    t2i = math.log(2)  # logits rows [1, 1] and [0, 0]
    i2t = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert infonce_loss(text, image, temperature=1.0, symmetric=False).item() == pytest.approx(t2i)
    assert infonce_loss(text, image, temperature=1.0).item() == pytest.approx((t2i + i2t) / 2)
    eye = torch.eye(2)
    assert infonce_loss(eye, eye, temperature=0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))
    assert infonce_loss(eye, eye, image_ids=torch.tensor([1, 1])).item() == pytest.approx(0.0)


def test_vse_hardest_negative_loss() -> None:
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # sim = [[1, .6], [0, .8]]; t2i hinges .5+.6-1=.1, 0; i2t hinges 0, .5+.6-.8=.3 -> (.1+.3)/2
    assert vse_hardest_negative_loss(text, image, margin=0.5).item() == pytest.approx(0.2)
    assert vse_hardest_negative_loss(text, image, margin=0.2).item() == pytest.approx(0.0, abs=1e-6)
    assert vse_hardest_negative_loss(text, image, margin=0.5, image_ids=torch.tensor([3, 3])).item() == 0.0


# --- ONNX export -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sentence_dim", [0, 8])
@pytest.mark.parametrize("attention", [False, True])
def test_onnx_parity(tmp_path, attention: bool, sentence_dim: int) -> None:
    model = _model(attention=attention, sentence_dim=sentence_dim)
    path = export_text_encoder(model, tmp_path / "text.onnx", model.cfg)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == ["token_ids", "lengths"] + (["sentence_embedding"] if sentence_dim else [])
    assert [o.name for o in sess.get_outputs()] == ["embedding"]
    gen = torch.Generator().manual_seed(1)
    for batch, T in [(1, 1), (1, 9), (4, 3), (4, 11)]:  # the export example is B=2, T=5
        lengths = torch.randint(1, T + 1, (batch,), generator=gen)
        lengths[0] = T
        ids = torch.randint(1, V, (batch, T), generator=gen)
        ids[torch.arange(T).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
        sent = F.normalize(torch.randn(batch, sentence_dim, generator=gen), dim=1) if sentence_dim else None
        feed = {"token_ids": ids.numpy(), "lengths": lengths.numpy()}
        if sent is not None:
            feed["sentence_embedding"] = sent.numpy()
        (out,) = sess.run(None, feed)
        with torch.no_grad():
            ref = model.embed(ids, lengths, sent).numpy()
        assert out.shape == (batch, 16)
        assert np.abs(out - ref).max() < 1e-4
