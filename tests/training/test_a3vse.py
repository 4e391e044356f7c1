"""A3VSE: attention and masking, gradient reversal, the hardest-negative triplet, ONNX parity, and a one-epoch run of
the experiment CLI on a tiny synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from xlsearch.bundle.manifest import read_bundle_manifest
from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import Record, read_manifest, write_manifest
from xlsearch.encode.onnx import make_session
from xlsearch.eval.benchmark import image_to_text_ranks
from xlsearch_training.a3vse.bundle_writer import export_a3vse_text_encoder, text_input_names
from xlsearch_training.a3vse.config import A3VSETrainConfig
from xlsearch_training.a3vse.losses import domain_loss, hardest_negative_triplet
from xlsearch_training.a3vse.model import (
    A3VSEImageEncoder,
    A3VSEModelConfig,
    AttentiveEncoder,
    DomainDiscriminator,
    TextEncoder,
    VisualEncoder,
    grad_reverse,
    grl_coefficient,
)
from xlsearch_training.a3vse.regions import RegionStore, build_region_extractor
from xlsearch_training.a3vse.train import (
    Annotated,
    Queries,
    Unannotated,
    train_a3vse,
    train_text_into,
)
from xlsearch_training.export import FEATURE_NAME, OUTPUT_NAME, compare_with_onnx, export_image_encoder

TINY = A3VSEModelConfig(region_dim=1280, hidden=16, heads=3, context_dim=8, word_dim=8, disc_hidden=8)


# -- attention --------------------------------------------------------------------------------------------------
def test_attention_shapes_and_padded_entries_get_no_weight():
    torch.manual_seed(0)
    att = AttentiveEncoder(hidden=8, heads=3, context_dim=4, lam=1.0)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out, w = att(x, mask)
    assert out.shape == (2, 3 * 8) and w.shape == (2, 3, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3))
    assert torch.all(w[1, :, 2:] == 0)
    # padded entries change neither the context nor the output
    x2 = x.clone()
    x2[1, 2:] = 100 * torch.randn(3, 8)
    torch.testing.assert_close(att(x2, mask)[0], out)
    # each head's output is a convex combination of the (valid) entries
    torch.testing.assert_close(out[1].view(3, 8), w[1, :, :2] @ x[1, :2])


def test_text_encoder_ignores_whatever_follows_the_length():
    torch.manual_seed(0)
    enc = TextEncoder(TINY, vocab_size=20).eval()
    ids = torch.tensor([[4, 5, 6, 0, 0], [4, 5, 6, 9, 11]])
    lengths = torch.tensor([3, 3])
    with torch.no_grad():
        out = enc(ids, lengths)
    assert out.shape == (2, TINY.embed_dim)
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_word_embeddings_can_start_from_pretrained_vectors():
    from xlsearch.encode.text import Vocab
    from xlsearch_training.a3vse.train import init_word_embeddings

    vocab = Vocab.build([["青蛙", "猫"], ["猫"]])
    enc = TextEncoder(TINY, vocab_size=len(vocab))
    table = {"青蛙": np.full(TINY.word_dim, 0.5), "猫": np.arange(TINY.word_dim, dtype=float)}
    init_word_embeddings(enc, vocab, lambda tokens: np.stack([table[t] for t in tokens]))
    for token, vec in table.items():
        np.testing.assert_allclose(enc.embedding.weight[vocab.id(token)].detach().numpy(), vec)
    assert torch.all(enc.embedding.weight[0] == 0)  # padding stays zero
    with pytest.raises(ValueError, match="do not fit"):
        init_word_embeddings(enc, vocab, lambda tokens: np.zeros((len(tokens), 3)))


# -- gradient reversal -------------------------------------------------------------------------------------------
def test_encoder_gradient_from_a_discriminator_loss_is_reversed_and_scaled():
    torch.manual_seed(0)
    disc = DomainDiscriminator(6, 4)
    a0, b0 = torch.randn(4, 6), torch.randn(4, 6)

    def grads(coeff: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        disc.zero_grad()
        fa, fb = (a, b) if coeff is None else (grad_reverse(a, coeff), grad_reverse(b, coeff))
        domain_loss(disc(fa), disc(fb)).backward()
        return a.grad, disc.net[0].weight.grad.clone()

    plain, d_plain = grads(None)
    reversed_, d_rev = grads(0.5)
    assert plain.abs().sum() > 0
    torch.testing.assert_close(reversed_, -0.5 * plain)
    torch.testing.assert_close(d_rev, d_plain)  # the discriminator itself still minimises its loss
    assert grl_coefficient(0.0) == 0.0
    assert grl_coefficient(1.0) == pytest.approx(2 / (1 + np.exp(-10)) - 1)
    assert 0 < grl_coefficient(0.1) < grl_coefficient(0.5) < 1


# -- triplet -----------------------------------------------------------------------------------------------------
def test_hardest_negative_triplet_on_a_hand_made_batch():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # S = [[1, .6], [0, .8]]; i=0: [.5-1+.6]+ + [.5-1+0]+ = .1 ; i=1: [.5-.8+0]+ + [.5-.8+.6]+ = .3
    assert hardest_negative_triplet(a, b, 0.5).item() == pytest.approx(0.2)
    assert hardest_negative_triplet(a, b, 0.2).item() == 0.0
    # only the hardest negative counts: a third, easy pair adds only its own violations
    a3 = torch.cat([a, torch.tensor([[-1.0, 0.0]])])
    b3 = torch.cat([b, torch.tensor([[-1.0, 0.0]])])
    # S row/col 2 against the others is -1 / -0.6 / 0 / -0.8: no new hardest negatives for i = 0, 1
    expected = (0.1 + 0.3 + max(0, 0.5 - 1 + 0) + max(0, 0.5 - 1 + 0)) / 3
    assert hardest_negative_triplet(a3, b3, 0.5).item() == pytest.approx(expected)


def test_info_nce_on_a_hand_made_batch():
    from xlsearch_training.a3vse.losses import info_nce

    eye = torch.eye(3)
    e10 = torch.exp(torch.tensor(10.0))
    # aligned orthonormal pairs: each row's softmax is (e^10, 1, 1) / (e^10 + 2) at temperature 0.1
    assert torch.isclose(info_nce(eye, eye, 0.1), -torch.log(e10 / (e10 + 2)), atol=1e-5)
    # swapping two texts makes those two pairs wrong: the loss goes up
    assert info_nce(eye, eye[[1, 0, 2]], 0.1) > 5.0
    # masked pairs leave the denominators: rows 0 and 1 lose one confuser, row 2 keeps both
    same = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    want = (2 * -torch.log(e10 / (e10 + 1)) - torch.log(e10 / (e10 + 2))) / 3
    assert torch.isclose(info_nce(eye, eye, 0.1, same), want, atol=1e-5)


def test_identical_pseudo_texts_are_not_each_others_negatives():
    from xlsearch_training.a3vse.train import same_sequence

    same = same_sequence([["字母"], ["青蛙"], ["字母"]])
    assert same.tolist() == [[False, False, True], [False, False, False], [True, False, False]]
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # images 0 and 2 share one concept sequence (same text vector): with them as negatives the loss cannot go below
    # 2 * margin for those two pairs; masked, the batch is perfectly aligned
    assert hardest_negative_triplet(v, v, 0.3).item() == pytest.approx(2 * 0.6 / 3)
    assert hardest_negative_triplet(v, v, 0.3, same).item() == 0.0


def test_image_to_text_ranks_take_the_best_relevant_sentence():
    scores = np.array([[0.9, 0.1], [0.2, 0.3], [0.5, 0.4]])  # 3 sentences x 2 images
    relevant = np.array([0, 1, 1])  # sentences 1 and 2 describe image 1
    # image 0: its sentence scores 0.9, the others 0.2 and 0.5 -> rank 1; image 1: column [0.1, 0.3, 0.4], its best
    # sentence (0.4) is first
    np.testing.assert_allclose(image_to_text_ranks(scores, relevant), [1.0, 1.0])
    scores[0, 1] = 0.7
    np.testing.assert_allclose(image_to_text_ranks(scores, relevant), [1.0, 2.0])


# -- ONNX parity -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def extractor():
    return build_region_extractor({"kind": "efficientnet_lite0"})


def test_image_encoder_onnx_parity_and_feature_is_the_pooled_backbone(extractor, tmp_path):
    torch.manual_seed(0)
    enc = A3VSEImageEncoder(extractor, VisualEncoder(TINY)).eval()
    path = export_image_encoder(enc, tmp_path / "image.onnx", 224, output_names=(OUTPUT_NAME, FEATURE_NAME))
    pixels = torch.randn(3, 3, 224, 224)
    assert compare_with_onnx(enc, path, pixels) < 1e-4
    emb, feat = make_session(path).run(None, {"pixels": pixels[:1].numpy()})
    assert emb.shape == (1, TINY.embed_dim) and feat.shape == (1, 1280)
    with torch.no_grad():
        pooled = F.normalize(extractor.backbone(pixels[:1]), dim=1).numpy()
    np.testing.assert_allclose(feat, pooled, atol=1e-5)
    assert extractor.num_regions == 49


def test_text_encoder_onnx_parity_over_batch_and_length(tmp_path):
    torch.manual_seed(0)
    enc = TextEncoder(TINY, vocab_size=30).eval()
    path = export_a3vse_text_encoder(enc, tmp_path / "text.onnx")
    session = make_session(path)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9], [10, 11, 0, 0, 0, 0, 0], [12, 0, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([7, 2, 1])
    got = session.run(None, {"token_ids": ids.numpy(), "lengths": lengths.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, enc(ids, lengths).numpy(), atol=1e-5)


@pytest.mark.parametrize("mode", ["fused", "sentence_only"])
def test_sentence_branch_text_encoder_uses_the_sentence_embedding_and_exports_with_parity(mode, tmp_path):
    torch.manual_seed(0)
    cfg = A3VSEModelConfig(**{**TINY.to_dict(), "sentence_dim": 12, "text_mode": mode})
    enc = TextEncoder(cfg, vocab_size=30).eval()
    ids = torch.tensor([[3, 4, 5, 6, 7], [10, 11, 0, 0, 0], [12, 0, 0, 0, 0]])
    lengths = torch.tensor([5, 2, 1])
    sentence = F.normalize(torch.randn(3, 12), dim=1)
    with torch.no_grad():
        out = enc(ids, lengths, sentence)
        other = enc(ids, lengths, sentence.flip(0))
    assert out.shape == (3, cfg.embed_dim)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert not torch.allclose(out[0], other[0], atol=1e-3)  # the sentence embedding changes the output
    with pytest.raises(ValueError, match="sentence embedding"):
        enc(ids, lengths)

    path = export_a3vse_text_encoder(enc, tmp_path / "text.onnx")
    session = make_session(path)
    names = [i.name for i in session.get_inputs()]
    assert names == text_input_names(enc)
    assert names == (
        ["token_ids", "lengths", "sentence_embedding"] if mode == "fused" else ["sentence_embedding"]
    )
    feeds = {"token_ids": ids.numpy(), "lengths": lengths.numpy(), "sentence_embedding": sentence.numpy()}
    got = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    np.testing.assert_allclose(got, out.numpy(), atol=1e-5)


def test_training_with_the_sentence_branch_feeds_sentence_and_concept_vectors():
    rng = np.random.default_rng(0)
    store = RegionStore([f"i{n}" for n in range(12)], rng.normal(size=(12, 4, 6)).astype(np.float32), [])
    vec = lambda n: F.normalize(torch.from_numpy(rng.normal(size=(n, 5)).astype(np.float32)), dim=1).numpy()  # noqa: E731
    ann = Annotated(np.arange(6), [[["a", "b"], ["c"]] for _ in range(6)], [vec(2) for _ in range(6)])
    un = Unannotated(np.arange(6, 12), [["x"], [], ["y", "z"], ["x"], ["y"], ["z"]], vec(6))
    val = Queries([["a"], ["c"]], np.arange(2), np.arange(2), vec(2))
    cfg = A3VSETrainConfig(
        hidden=8, heads=2, context_dim=4, word_dim=4, disc_hidden=4, epochs=1, steps_per_epoch=2,
        batch_size=4, unannotated_batch_size=4, en_epochs=1, sentence_branch="fused",
    )  # fmt: skip
    model, text = train_a3vse(cfg, store, ann, un, val, progress=False)
    assert model.text.sentence_dim == 5 and model.cfg.text_mode == "fused"
    assert {"tri_vt", "tri_vs"} <= set(text.history[0])
    en = train_text_into(cfg, model.visual, store, ann, un, val, progress=False)
    assert en.encoder.sentence_dim == 5
    with pytest.raises(ValueError, match="sentence embeddings"):
        train_a3vse(
            cfg, store, Annotated(ann.rows, ann.sentences), None, Queries(val.tokens, val.rows, val.relevant)
        )


# -- one epoch through the experiment CLI on a synthetic dataset ------------------------------------------------
COLOURS = {"red": ("红色", (220, 30, 30)), "blue": ("蓝色", (30, 30, 220)), "green": ("绿色", (30, 180, 30))}
SHAPES = {"circle": "圆圈", "square": "方块"}


def _draw(shape: str, rgb: tuple[int, int, int], n: int) -> Image.Image:
    img = Image.new("RGBA", (96, 96), (255, 255, 255, 0))
    d = ImageDraw.Draw(img)
    box = (10 + n % 7, 12 + n % 5, 80 - n % 3, 84 - n % 4)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=(*rgb, 255))
    return img


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("a3vse-data")
    data, pool = root / "data", root / "pool-src"
    (data / "images").mkdir(parents=True)
    pool.mkdir()
    records = []
    n = 0
    for colour, (zh_colour, rgb) in COLOURS.items():
        for shape, zh_shape in SHAPES.items():
            for k in range(5):
                _draw(shape, rgb, n).save(data / "images" / f"{n}.png")
                split = ("train", "train", "train", "val", "test")[k]
                records.append(
                    Record(
                        f"{n}",
                        f"images/{n}.png",
                        split,
                        [f"A {colour} {shape}."],
                        [f"{zh_colour}{zh_shape}。"],
                    )
                )
                n += 1
    write_manifest(data, records)
    for k in range(6):
        _draw("circle" if k % 2 else "square", (40 * k, 200 - 30 * k, 90), k).save(pool / f"extra{k}.png")
    return data, pool


def test_experiment_cli_trains_benchmarks_and_resumes(synthetic, tmp_path):
    from xlsearch_training.a3vse.cli import DEFAULT_CONFIG, main

    data, pool_src = synthetic
    config = json.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    config.update(
        sentence_encoder=None,
        pool={"tuxpaint_stamps": None, "folders": [str(pool_src)], "cap": 4},
        fractions={"0.5": ["A3VSE full", "A3VSE full (tag concepts)"]},
        serve_fraction=0.5,
    )
    config["train"] = {
        "hidden": 16, "heads": 3, "context_dim": 8, "word_dim": 8, "disc_hidden": 8, "epochs": 1,
        "steps_per_epoch": 2, "batch_size": 4, "unannotated_batch_size": 4, "en_epochs": 1,
    }  # fmt: skip
    cfg_path = tmp_path / "a3vse.json"
    cfg_path.write_text(json.dumps(config), encoding="utf-8")
    runs = tmp_path / "runs"
    argv = [
        "--data",
        str(data),
        "--runs",
        str(runs),
        "--config",
        str(cfg_path),
        "--seeds",
        "0",
        "--no-progress",
    ]
    assert main(argv) == 0

    results = json.loads((runs / "results.json").read_text(encoding="utf-8"))
    assert [r["variant"] for r in results] == ["A3VSE full", "A3VSE full (tag concepts)"]
    n_train = len(read_manifest(runs / "splits" / "seed0").split("train"))
    for r in results:
        assert r["fraction"] == 0.5 and r["annotated_images"] == round(0.5 * n_train)
        assert r["unannotated_images"] == n_train - round(0.5 * n_train) + 4  # the rest plus the capped pool
        for row in ("CM", "CM i2t", "CLM[visual]"):
            assert {"mrr", "r@1", "r@5", "r@10"} <= set(r["rows"][row])
    assert 0 < results[0]["semantic_pairs"] <= results[0]["unannotated_images"]
    # tag concepts: a tagger of the run's annotated images only; one concept sequence per un-annotated image
    tag = results[1]["tag_concepts"]
    assert tag["tagger_images"] == results[1]["annotated_images"] and tag["tag_vocabulary"] > 0
    concepts = json.loads(
        (runs / "seed0" / "ann50" / "a3vse-full-tag-concepts" / "concepts.json").read_text("utf-8")
    )
    assert len(concepts["zh"]) == results[1]["unannotated_images"] == results[1]["semantic_pairs"]
    # hidden training text does not shrink the "all images" candidates
    assert results[0]["candidates_all"] == 30
    table = (runs / "a3vse.md").read_text(encoding="utf-8")
    assert "| 50% | A3VSE full |" in table and "i→t R@1" in table

    manifest = read_bundle_manifest(runs / "bundle")
    assert manifest["model_family"] == "a3vse"
    assert manifest["image_encoder"]["feature_output"] == "feature" and manifest["dim"] == 48
    assert 0.0 <= manifest["fusion"]["alpha"] <= 1.0
    bundle = Bundle(runs / "bundle")
    assert bundle.encode_texts(["红色圆圈"], "zh").shape == (1, 48)
    assert len(read_manifest(runs / "splits" / "seed0")) == 30

    result_file = runs / "seed0" / "ann50" / "a3vse-full" / "result.json"
    before = result_file.stat().st_mtime_ns
    assert main(argv) == 0  # resumes: nothing is retrained
    assert result_file.stat().st_mtime_ns == before
    assert main([*argv, "--report-only"]) == 0
    assert "A3VSE full" in (runs / "a3vse.md").read_text(encoding="utf-8")


# -- in-domain tag concepts ---------------------------------------------------------------------------------------
def test_tag_concepts_are_thresholded_deduplicated_and_sorted_by_confidence():
    from xlsearch_training.a3vse.config import TagConceptConfig
    from xlsearch_training.a3vse.semantics import rank_tag_concepts

    pooled = np.array([[0.1, 0.9, 0.4, 0.05]])
    windows = np.array([[[0.6, 0.1, 0.2, 0.7], [0.55, 0.95, 0.0, 0.0]]])
    cfg = TagConceptConfig(top_k_pooled=3, top_k_region=2, min_probability=0.3, min_region_probability=0.5)
    # pooled keeps 1 (0.9) and 2 (0.4); the windows add 3 (0.7) and 0 (max 0.6) and raise 1 to 0.95
    assert rank_tag_concepts(pooled, windows, cfg) == [[(1, 0.95), (3, 0.7), (0, 0.6), (2, 0.4)]]
    short = TagConceptConfig(top_k_pooled=3, top_k_region=2, min_probability=0.3, max_concepts=2)
    assert rank_tag_concepts(pooled, windows, short) == [[(1, 0.95), (3, 0.7)]]
    assert rank_tag_concepts(pooled, None, cfg) == [[(1, 0.9), (2, 0.4)]]  # global: the pooled vector only
    low = np.array([[0.1, 0.2, 0.05, 0.0]])
    assert rank_tag_concepts(low, None, cfg) == [[]]
    assert rank_tag_concepts(low, None, TagConceptConfig(min_concepts=1)) == [[(1, 0.2)]]
    with pytest.raises(ValueError):
        TagConceptConfig(kind="regional")


def test_tag_semantics_come_from_a_classifier_of_the_annotated_images_only(monkeypatch):
    import xlsearch_training.tagging.train as tagging_train
    from xlsearch_training.a3vse.config import TagConceptConfig
    from xlsearch_training.a3vse.semantics import build_tag_semantics, region_windows

    seen: dict[str, object] = {}
    real_fit = tagging_train.fit_tagger

    def spy(manifest, features, config, seed, **kw):
        seen["records"] = sorted(r.id for r in manifest.records)
        seen["features"] = sorted(features)
        return real_fit(manifest, features, config, seed, **kw)

    monkeypatch.setattr(tagging_train, "fit_tagger", spy)
    rng = np.random.default_rng(0)
    centres = {"red": rng.normal(size=16), "blue": rng.normal(size=16)}
    words = {"red": "红色", "blue": "蓝色"}

    def regions(colour: str, n: int) -> np.ndarray:  # [n, 2 x 2 cells, 16]
        return (centres[colour] + 0.1 * rng.normal(size=(n, 4, 16))).astype(np.float16)

    annotated = [
        Record(f"{c}{k}", "x.png", "train", en=[], zh=[], tags_en=[c], tags_zh=[words[c]])
        for c in ("red", "blue")
        for k in range(6)
    ]
    ann_regions = np.concatenate([regions("red", 6), regions("blue", 6)])
    un_ids = ["u-red", "u-blue"]
    un_regions = np.concatenate([regions("red", 1), regions("blue", 1)])
    tagger = {"model": "mlp", "hidden": 32, "dropout": 0.0, "epochs": 40, "select_on_val": False,
              "lqp_epochs": 2, "vocab": {"zh_min_count": 1}}  # fmt: skip
    for kind in ("tag_regional", "tag_global"):
        cfg = TagConceptConfig(kind=kind, tagger=tagger, region_grid=2, min_probability=0.2)
        sem = build_tag_semantics(un_ids, un_regions, annotated, ann_regions, cfg, seed=0)
        assert seen["records"] == seen["features"] == sorted(r.id for r in annotated)
        assert sem.tagger_images == [r.id for r in annotated] and sem.tag_vocabulary == 2
        assert set(sem.zh) == set(un_ids)
        assert sem.zh["u-red"].split()[0] == "红色" and sem.zh["u-blue"].split()[0] == "蓝色"
        for image_id in un_ids:
            assert set(sem.zh[image_id].split()) <= {"红色", "蓝色"}  # only tag-vocabulary words
            assert set(sem.en[image_id].split()) <= {"red", "blue"}  # their English counterparts
    assert [len(w) for w in region_windows(49, 3)] == [9] * 9
