"""Choosing the served fusion on validation (issue 13, item 4): the one-standard-error rule toward a prior, the
simplex of CL visual / CL e5 / CM, and the 'joint' CL space that serves simplex weights as one inner product through
the unchanged index and engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from xlsearch.bundle.manifest import BundleError, BundleManifest, load_bundle_manifest, update_bundle_manifest
from xlsearch.eval.fusion import choose_fusion, choose_simplex, simplex_fusion, simplex_grid
from xlsearch.eval.metrics import retrieval_metrics


def _scores(q: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.eye(q) + noise * rng.normal(size=(q, q))


def test_simplex_grid_covers_the_simplex() -> None:
    grid = simplex_grid(0.25)
    assert len(grid) == 15 and all(abs(sum(w) - 1) < 1e-12 and min(w) >= 0 for w in grid)
    assert (0.0, 1.0, 0.0) in grid and (1.0, 0.0, 0.0) in grid


def test_best_rule_takes_the_highest_validation_mrr() -> None:
    relevant = np.arange(60)
    good, bad = _scores(60, 0.3, 0), _scores(60, 3.0, 1)
    cm = _scores(60, 3.0, 2)
    choice = choose_fusion({"visual": good, "sentence": bad}, cm, relevant, "best", ("sentence", 1.0))
    assert choice.cl_space == "visual" and choice.eligible == 1
    assert choice.val_mrr == pytest.approx(
        retrieval_metrics(good * choice.alpha + cm * (1 - choice.alpha), relevant)["mrr"]
    )


def test_one_se_rule_keeps_the_prior_when_validation_cannot_tell() -> None:
    relevant = np.arange(40)
    a, b = _scores(40, 0.9, 3), _scores(40, 0.9, 4)  # two equally good spaces: the difference is noise
    cm = _scores(40, 5.0, 5)
    best = choose_fusion({"visual": a, "sentence": b}, cm, relevant, "best", ("sentence", 1.0))
    ose = choose_fusion({"visual": a, "sentence": b}, cm, relevant, "1se", ("sentence", 1.0))
    assert (
        ose.eligible > 1 and ose.cl_space == "sentence"
    )  # as good as the best within 1 SE, nearer the prior
    assert abs(ose.alpha - 1.0) <= abs(best.alpha - 1.0) or best.cl_space != "sentence"
    assert best.val_mrr >= ose.val_mrr
    # ... and leaves it when validation clearly says otherwise
    far = choose_fusion(
        {"visual": _scores(40, 0.05, 6), "sentence": _scores(40, 4.0, 7)}, cm, relevant, "1se"
    )
    assert far.cl_space == "visual"


def test_choose_simplex_and_its_manifest_section() -> None:
    relevant = np.arange(50)
    v, s, m = (
        _scores(50, 0.6, 8),
        _scores(50, 0.6, 9),
        _scores(50, 0.6, 10),
    )  # independent noise: mixing helps
    w, mrr, _ = choose_simplex(v, s, m, relevant, "best")
    assert min(w) > 0  # all three sources carry signal
    assert mrr == pytest.approx(retrieval_metrics(w[0] * v + w[1] * s + w[2] * m, relevant)["mrr"])
    for single in (v, s, m):
        assert mrr >= retrieval_metrics(single, relevant)["mrr"]
    section = simplex_fusion((0.2, 0.6, 0.2), 0.7, "1se", 3)
    assert section["cl_space"] == "joint" and section["alpha"] == pytest.approx(0.8)
    assert section["weights"] == pytest.approx({"visual": 0.25, "sentence": 0.75})
    assert simplex_fusion((0.0, 0.7, 0.3), 0.7, "1se", 1)["cl_space"] == "sentence"
    assert simplex_fusion((0.4, 0.0, 0.6), 0.7, "1se", 1)["cl_space"] == "visual"


def test_joint_fusion_section_is_checked(tiny_bundle: Path) -> None:
    m = load_bundle_manifest(tiny_bundle).to_dict()
    from xlsearch.encode.sentence import build_sentence_encoder

    sent_dim = build_sentence_encoder(m["sentence_encoder"]).dim
    joint = BundleManifest.from_dict(
        {**m, "cl_dim": None, "fusion": simplex_fusion((0.3, 0.5, 0.2), 0.5, "1se", 2)}
    )
    assert joint.cl_space == "joint" and joint.cl_dim == joint.dim + sent_dim
    assert joint.fusion.weights == pytest.approx({"visual": 0.375, "sentence": 0.625})
    with pytest.raises(BundleError, match="needs weights"):
        BundleManifest.from_dict({**m, "fusion": {"cl_space": "joint", "alpha": 0.5}})
    with pytest.raises(BundleError, match="sum to 1"):
        BundleManifest.from_dict(
            {**m, "fusion": {"cl_space": "joint", "weights": {"visual": 1, "sentence": 1}}}
        )


def test_joint_space_serves_the_simplex_scores_exactly(
    tiny_bundle: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    """A bundle switched to the joint space (no re-export): `xlsearch index` + the engine rank by exactly
    w_v * cos_visual + w_s * cos_e5 + w_m * CM."""
    from xlsearch.bundle.runtime import Bundle
    from xlsearch.data.manifest import read_manifest
    from xlsearch.encode.preprocess import load_image
    from xlsearch.index.image_index import ImageIndex
    from xlsearch.search.engine import SearchEngine
    from xlsearch_indexer.cli import main as index_main

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    weights = (0.3, 0.5, 0.2)
    update_bundle_manifest(bundle_dir, {"fusion": simplex_fusion(weights, 0.0, "best", 1)})
    assert index_main(["--manifest", str(tiny_manifest), "--bundle", str(bundle_dir), "--out", str(tmp_path / "ix"),
                       "--no-progress"]) == 0  # fmt: skip
    bundle = Bundle(bundle_dir)
    engine = SearchEngine(bundle, ImageIndex.load(tmp_path / "ix", bundle), persist=False)
    manifest = read_manifest(tiny_manifest)
    query = next(r.zh[0] for r in manifest.records if r.zh)
    result = engine.search(query, top_k=5, mode="CLM")
    assert result.alpha == pytest.approx(0.8)

    q_sent = bundle.sentence_embeddings([query], "zh")
    q_vis = bundle.encode_texts([query], "zh", q_sent if bundle.uses_sentence("zh") else None)
    for hit in result.hits:
        rec = next(r for r in manifest.records if r.id == hit.id)
        c_sent = bundle.sentence_embeddings([rec.en[0]], "en")
        c_vis = bundle.encode_texts([rec.en[0]], "en", c_sent if bundle.uses_sentence("en") else None)
        img = bundle.encode_images([load_image(manifest.image_path(rec))])
        want = weights[0] * (q_vis @ c_vis.T).item() + weights[1] * (q_sent @ c_sent.T).item()
        want += weights[2] * (q_vis @ img.T).item()
        assert hit.score == pytest.approx(want, abs=2e-4)
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
