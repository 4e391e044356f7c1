"""S-CNN-RNN (Liu et al.): label sequences, the joint loss, training -> ONNX component -> torch-free decoding, on
hand-made label sets and synthetic features; Niu et al.'s multi-scale fusion and its tagger component."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xlsearch.bundle.components import read_component  # noqa: E402
from xlsearch.bundle.runtime import component_loader  # noqa: E402
from xlsearch.bundle.sequence_tagger import SequenceTagger, greedy_labels  # noqa: E402
from xlsearch.bundle.tagger import Tagger, TagInputError  # noqa: E402
from xlsearch.data.manifest import Manifest, Record  # noqa: E402
from xlsearch.encode.tag_vocab import TagEntry, TagVocabulary  # noqa: E402
from xlsearch_training.multiscale.component import write_multiscale_tagger  # noqa: E402
from xlsearch_training.multiscale.config import MultiScaleConfig  # noqa: E402
from xlsearch_training.multiscale.model import Fusion, VisualModel  # noqa: E402
from xlsearch_training.multiscale.train import fit_multiscale  # noqa: E402
from xlsearch_training.srnn.config import SRNNTaggerConfig  # noqa: E402
from xlsearch_training.srnn.losses import joint_loss, sequence_loss  # noqa: E402
from xlsearch_training.srnn.model import SCNNRNN, ConceptModel, Decoder  # noqa: E402
from xlsearch_training.srnn.sequences import label_ranks, label_sequences, pad_sequences  # noqa: E402
from xlsearch_training.srnn.tag_component import write_sequence_tagger  # noqa: E402
from xlsearch_training.srnn.tag_train import fit_sequence_tagger  # noqa: E402
from xlsearch_training.tagging.select import choose_candidate, sequence_candidates  # noqa: E402

DIM, STAGES = 24, [6, 10]
TAGS = [("狗", "dog"), ("猫", "cat"), ("鸟", "bird"), ("树", "tree"), ("船", "boat")]
INPUT_FEATURE = {"dim": DIM, "backbone": {"kind": "synthetic"}, "preprocess": {}}
MS_FEATURE = {**INPUT_FEATURE, "multiscale": {"output": "multiscale", "stages": ["a", "b"], "dims": STAGES}}


MORE_TAGS = [*TAGS, ("花", "flower"), ("车", "car"), ("山", "mountain"), ("鱼", "fish"), ("房子", "house")]


def synthetic(
    n: int = 200, seed: int = 0, tags: list[tuple[str, str]] = TAGS
) -> tuple[Manifest, dict[str, np.ndarray]]:
    """Images carry 1-3 of the tags (five by default) whose frequencies differ (dog most, the last one least); a
    feature is the normalised sum of the tags' prototypes plus noise, followed by two 'stages' (noisy views of the
    same tags)."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(len(tags), DIM + sum(STAGES)))
    weights = np.arange(len(tags), 0, -1, dtype=float)
    records, features = [], {}
    for i in range(n):
        chosen = rng.choice(len(tags), size=rng.integers(1, 4), replace=False, p=weights / weights.sum())
        split = "train" if i < 0.6 * n else "val" if i < 0.8 * n else "test"
        rid = f"img{i:03d}"
        zh, en = [tags[j][0] for j in chosen], [tags[j][1] for j in chosen]
        records.append(Record(id=rid, image=f"{rid}.png", split=split, tags_zh=zh, tags_en=en))
        v = protos[chosen].sum(axis=0) + 0.3 * rng.normal(size=DIM + sum(STAGES))
        parts = np.split(v, np.cumsum([DIM, *STAGES])[:-1])
        features[rid] = np.concatenate([p / np.linalg.norm(p) for p in parts]).astype(np.float32)
    return Manifest(Path("."), records), features


TINY = {"hidden": 32, "lstm": 32, "word_dim": 8, "concept_epochs": 25, "rnn_epochs": 25, "joint_epochs": 10,
        "concept_lr": 0.01, "rnn_lr": 0.01, "joint_lr": 0.003, "batch_size": 16, "vocab": {"zh_min_count": 2}}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[Manifest, dict[str, np.ndarray]]:
    return synthetic()


def _vocab(counts: dict[str, int]) -> TagVocabulary:
    ordered = sorted(counts, key=lambda t: (-counts[t], t))
    return TagVocabulary("zh", [TagEntry(t, counts[t]) for t in ordered])


def test_rare_first_order_and_end_token_on_a_hand_made_label_set() -> None:
    vocab = _vocab(
        {"人": 50, "天空": 30, "云": 30, "湖": 4, "倒影": 2}
    )  # ids 0..4 by count: 人 天空 云 湖 倒影
    assert vocab.tags == ["人", "云", "天空", "湖", "倒影"]  # equal counts: by tag
    truth = vocab.multi_hot([["天空", "倒影", "人", "湖"], ["云"], ["云", "天空"]])
    end = len(vocab)
    rare = label_sequences(truth, label_ranks(vocab, "rare-first"))
    assert [[vocab.tags[j] for j in s[:-1]] for s in rare] == [
        ["倒影", "湖", "天空", "人"],
        ["云"],
        ["云", "天空"],
    ]
    assert all(s[-1] == end and end not in s[:-1] for s in rare)
    frequent = label_sequences(truth, label_ranks(vocab, "frequent-first"))
    assert [[vocab.tags[j] for j in s[:-1]] for s in frequent] == [
        ["人", "天空", "湖", "倒影"],
        ["云"],
        ["云", "天空"],
    ]
    inputs, targets = pad_sequences(rare, start=end + 1)
    assert inputs[0].tolist() == [end + 1, 4, 3, 2, 0] and targets[0].tolist() == [4, 3, 2, 0, end]
    assert inputs[1].tolist() == [end + 1, 1, end + 1, end + 1, end + 1] and targets[1].tolist() == [
        1,
        end,
        -100,
        -100,
        -100,
    ]
    with pytest.raises(ValueError, match="label order"):
        label_ranks(vocab, "alphabetical")


def _tiny_model(interface: str = "concepts", user: int = 0) -> SCNNRNN:
    torch.manual_seed(0)
    concept = ConceptModel(DIM, 5, hidden=16, dropout=0.0, input_scale=2.0, user_dim=user)
    decoder = Decoder(5 if interface == "concepts" else 16, 6, 7, word_dim=8, hidden=12, dropout=0.0)
    return SCNNRNN(concept, decoder, interface)


def test_joint_loss_has_both_terms_and_the_rnn_loss_reaches_the_concept_layer() -> None:
    model = _tiny_model()
    x = torch.randn(4, DIM)
    s = torch.tensor(
        [[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.float32
    )
    inputs, targets = pad_sequences(label_sequences(s.numpy(), np.arange(5)), start=6)
    inputs, targets = torch.from_numpy(inputs), torch.from_numpy(targets)
    total, parts = joint_loss(model, x, inputs, targets, s, concept_weight=1.0)
    assert parts["L_u"] > 0 and parts["L_r"] > 0
    assert float(total.detach()) == pytest.approx(parts["L_u"] + parts["L_r"], rel=1e-5)
    # L_r alone: gradients flow through s^ = sigmoid(concept logits) into the concept layer and the layers below
    model.zero_grad()
    logits, step_logits = model(x, inputs)
    sequence_loss(step_logits, targets).backward()
    assert model.concept.head.weight.grad.abs().sum() > 0
    assert model.concept.features[0].weight.grad.abs().sum() > 0
    # without deep supervision the loss is L_r only
    total0, parts0 = joint_loss(model, x, inputs, targets, s, concept_weight=0.0)
    assert parts0["L_u"] == 0.0 and float(total0.detach()) == pytest.approx(parts0["L_r"], rel=1e-6)


def test_greedy_decoding_never_repeats_and_honours_k() -> None:
    # a step that always prefers label 2, then the end token: the mask forbids a repeat, the first step cannot end
    def step(tokens, h, c):
        logp = np.log(np.full((len(tokens), 6), 0.01))
        logp[:, 5] = np.log(0.9) if tokens[0] != 6 else np.log(0.95)
        logp[:, 2] = np.log(0.5)
        return logp, h, c

    h = np.zeros((2, 3), np.float32)
    free = greedy_labels(h, h, step, n_labels=5, max_labels=10)
    assert [[j for j, _ in s] for s in free] == [[2], [2]]
    forced = greedy_labels(h, h, step, n_labels=5, max_labels=10, k=4)
    assert all(len(s) == 4 and len(set(j for j, _ in s)) == 4 and 5 not in [j for j, _ in s] for s in forced)
    assert greedy_labels(h, h, step, n_labels=5, max_labels=10, k=99)[0].__len__() == 5


@pytest.fixture(scope="module")
def trained(data):
    manifest, features = data
    plain = {k: v[:DIM] for k, v in features.items()}
    return fit_sequence_tagger(
        manifest, plain, SRNNTaggerConfig.from_dict({**TINY, "user_tags": True}), seed=0
    )


def test_trained_sequence_tagger_learns_the_tags(trained, data) -> None:
    manifest, features = data
    test = [r for r in manifest.records if r.split == "test"]
    x = np.stack([features[r.id][:DIM] for r in test])
    seqs, concepts = trained.decode(x)
    assert concepts is not None and concepts.shape == (len(test), len(trained.zh_vocab))
    hits = [
        len({trained.zh_vocab.tags[j] for j, _ in s} & set(r.tags_zh)) / len(s)
        for s, r in zip(seqs, test, strict=True)
    ]
    assert np.mean(hits) > 0.6  # precision of the emitted sets, far above the chance of 5 tags
    assert set(trained.log) >= {"concepts", "user_mlp", "concepts_with_user", "rnn", "joint"}


def test_component_export_parity_and_torch_free_decoding(trained, data, tmp_path: Path) -> None:
    manifest, features = data
    x = np.stack([features[r.id][:DIM] for r in manifest.records if r.split == "test"])
    folder = write_sequence_tagger(trained, tmp_path / "srnn", INPUT_FEATURE, parity_x=x)
    spec = read_component(folder)
    assert spec["onnx_parity_max_abs_diff"] < 1e-4 and spec["onnx_parity_sequences"]["identical_sequences"]
    assert component_loader("tagger", spec) is SequenceTagger
    tagger = SequenceTagger.load(folder, spec, intra_op_threads=1)
    ours, _ = tagger.decode(x)
    theirs, _ = trained.decode(x)
    assert [[j for j, _ in s] for s in ours] == [[j for j, _ in s] for s in theirs]
    ranked = tagger.predict(x[:3])
    assert all(1 <= len(r) <= trained.config.max_labels for r in ranked)
    assert all([t.score for t in r] == sorted((t.score for t in r), reverse=True) for r in ranked)
    assert [len(r) for r in tagger.predict(x[:3], k=3)] == [3, 3, 3]
    j = tagger.vocabulary.index("船")
    _, base = tagger.decode(x)
    _, given = tagger.decode(x, user_tags=[["船"]] * len(x))
    assert (
        given[:, j].mean() > base[:, j].mean() + 0.1
    )  # the user-tag MLP learned that a given tag is a true one
    with pytest.raises(TagInputError, match=rf"\[batch, {DIM}\]"):
        tagger.predict(np.ones((1, DIM + 1), np.float32))
    with pytest.raises(TagInputError, match="k must be"):
        tagger.predict(x[:1], k=0)
    assert tagger.predict(np.zeros((0, DIM), np.float32)) == []


def test_feature_interface_ablation_decodes_through_the_same_component(data, tmp_path: Path) -> None:
    manifest, features = data
    plain = {k: v[:DIM] for k, v in features.items()}
    cfg = SRNNTaggerConfig.from_dict(
        {**TINY, "interface": "features", "deep_supervision": False, "joint_epochs": 2, "rnn_epochs": 2}
    )
    nic_f = fit_sequence_tagger(manifest, plain, cfg, seed=0)
    assert set(nic_f.log) == {"train_images", "zh_tags", "en_tags", "order", "joint"}  # nothing pretrained
    folder = write_sequence_tagger(nic_f, tmp_path / "nicf", INPUT_FEATURE)
    spec = read_component(folder)
    assert spec["outputs"]["scores"] is None and spec["inputs"]["user_tags"] is None
    x = np.stack([plain[r.id] for r in manifest.records[:5]])
    scored = SequenceTagger.load(folder, spec, 1).predict(x)
    assert all(0.0 <= t.score <= 1.0 for r in scored for t in r)  # the step probabilities


def test_sequence_candidates_join_the_served_tagger_choice_on_validation(tmp_path: Path) -> None:
    """tagging.select: S-CNN-RNN rows of an experiment file are candidates scored by validation F@5 (five labels
    decoded); the better-trained one wins and builds a sequence-tagger component."""
    manifest, features = synthetic(tags=MORE_TAGS)
    plain = {k: v[:DIM] for k, v in features.items()}
    starved = {"concept_epochs": 1, "rnn_epochs": 1, "joint_epochs": 1, "concept_lr": 1e-5, "rnn_lr": 1e-5}
    exp = {
        "backbone": {"kind": "efficientnet_lite0"},
        "tagging": {"train": TINY, "models": {"starved": starved, "trained": {}}},
        "captioning": {"models": {}},
    }
    path = tmp_path / "srnn.json"
    path.write_text(json.dumps(exp), encoding="utf-8")
    candidates = sequence_candidates(manifest, plain, INPUT_FEATURE, seed=0, experiment=path)
    best, scores = choose_candidate(candidates)
    assert best.name == "trained" and scores["trained"] > scores["starved"] + 0.05, scores
    assert 0.0 < scores["trained"] <= 1.0
    folder = best.build(tmp_path / "served")
    spec = read_component(folder)
    assert component_loader("tagger", spec) is SequenceTagger
    assert spec["metrics"]["selection"]["chosen"] == "trained"
    assert len(SequenceTagger.load(folder, spec, 1).vocabulary) == len(MORE_TAGS)


def test_fusion_starts_as_the_final_feature() -> None:
    torch.manual_seed(0)
    fusion = Fusion([6, 10, DIM]).train()
    levels = [torch.randn(8, 6), torch.randn(8, 10), torch.randn(8, DIM)]
    assert torch.allclose(fusion(levels), levels[-1])  # zero-initialised last BN: M*_K = M_K
    visual = VisualModel(DIM, STAGES, 16, 0.0, multi_scale=True)
    assert visual.in_dim == DIM + sum(STAGES)


@pytest.mark.parametrize("multi_scale,textual", [(True, True), (False, False)])
def test_multiscale_tagger_component_is_served_by_the_tagger(
    data, tmp_path: Path, multi_scale, textual
) -> None:
    manifest, features = data
    epochs = {f"{s}_epochs": 15 for s in ("cnn", "fusion", "text", "classifier", "lqp")}
    cfg = MultiScaleConfig.from_dict({"hidden": 32, "multi_scale": multi_scale, "textual": textual, **epochs,
                                      "lqp_hidden": [16], "vocab": {"zh_min_count": 2}})  # fmt: skip
    trained = fit_multiscale(manifest, features, cfg, 0, DIM, STAGES)
    assert ("fusion" in trained.log) == multi_scale and ("textual" in trained.log) == textual
    folder = write_multiscale_tagger(trained, tmp_path / "ms", MS_FEATURE)
    spec = read_component(folder)
    width = DIM + (sum(STAGES) if multi_scale else 0)
    assert bool(spec["input_feature"].get("multiscale")) == multi_scale
    tagger = Tagger.load(folder, spec, intra_op_threads=1)
    x = np.stack([features[r.id] for r in manifest.records if r.split == "test"])
    probs, counts, _ = tagger.scores(x[:, :width])
    ours, _ = trained.scores(x)
    assert np.abs(probs - ours).max() < 1e-4
    assert tagger.accepts_user_tags == textual and counts.shape == (len(x),)
