"""A bundle image encoder with Niu et al.'s multi-scale output (pooled backbone stages, one pass): what the
components read, what the index stores, and which components attach to which bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xlsearch.bundle.components import ComponentError, attach_component, read_component, write_component
from xlsearch.bundle.manifest import read_bundle_manifest, update_bundle_manifest
from xlsearch.bundle.runtime import Bundle
from xlsearch.bundle.tagger import Tagger, TagInputError
from xlsearch.data.manifest import read_manifest
from xlsearch.encode.preprocess import preprocess
from xlsearch.index.key import BundleKey

STAGES = ["blocks.4", "blocks.7", "blocks.10", "blocks.14", "blocks.15"]


def test_bundle_gives_feature_then_pooled_stages_in_one_pass(tiny_run, tiny_bundle, tmp_path):
    bundle = Bundle(tiny_bundle)
    image = bundle.manifest.image_encoder
    assert image.multiscale["stages"] == STAGES and image.multiscale_dim == 744
    assert image.component_dim == image.feature_dim + 744 == BundleKey.of(bundle).feature_dim
    manifest = read_manifest(tiny_run.data)
    records = manifest.records[:4]
    images = [Image.open(manifest.image_path(r)).convert("RGB") for r in records]
    _, feat = bundle.encode_images_with_features(images)
    bounds = np.cumsum([0, image.feature_dim, *image.multiscale["dims"]])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):  # the feature and every stage are unit vectors
        np.testing.assert_allclose(np.linalg.norm(feat[:, a:b], axis=1), 1.0, atol=1e-5)
    # the training side's multi-scale cache holds the same vectors (the served components train on it)
    pytest.importorskip("torch")
    from xlsearch_training.multiscale.features import multiscale_vectors

    ms, spec = multiscale_vectors(manifest, tmp_path / "runs", {"kind": "efficientnet_lite0"}, "center")
    assert spec["multiscale"]["dims"] == image.multiscale["dims"]
    np.testing.assert_allclose(feat, np.stack([ms[r.id] for r in records]), atol=1e-5)
    # ten crops: averaged per part, each part re-normalised
    crops = np.stack([preprocess(img, bundle.preprocess_config) for img in images[:2]])
    ten = np.repeat(crops[:, None], 3, axis=1)
    _, averaged = bundle.encode_pixels_with_features(ten)
    np.testing.assert_allclose(averaged, feat[:2], atol=1e-5)


def _component(folder: Path, image: dict, multiscale: bool) -> Path:
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x00")
    feature = {"dim": image["feature_dim"], "backbone": image["backbone"], "preprocess": image["preprocess"]}
    if multiscale:
        feature["multiscale"] = {**image["multiscale"]}
    write_component(folder, "tagger", {"input_feature": feature})
    return folder


def test_multiscale_components_attach_only_to_bundles_with_the_same_stages(tiny_bundle, tmp_path):
    with_ms, without = tmp_path / "with", tmp_path / "without"
    shutil.copytree(tiny_bundle, with_ms)
    shutil.copytree(tiny_bundle, without)
    image = read_bundle_manifest(with_ms)["image_encoder"]
    update_bundle_manifest(without, {"image_encoder": {**image, "multiscale": None}})
    ms = _component(tmp_path / "ms", image, multiscale=True)
    with pytest.raises(ComponentError, match="multi-scale output"):
        attach_component(without, ms)
    other = _component(
        tmp_path / "other", {**image, "multiscale": {**image["multiscale"], "dims": [1] * 5}}, True
    )
    with pytest.raises(ComponentError, match="multi-scale stages differ"):
        attach_component(with_ms, other)
    recorded = attach_component(with_ms, ms)["tagger"]
    assert recorded["bundle_input_dim"] == image["feature_dim"] + 744
    single = attach_component(without, _component(tmp_path / "single", image, multiscale=False))["tagger"]
    assert single["bundle_input_dim"] == image["feature_dim"]


def test_a_feature_tagger_on_a_multiscale_bundle_reads_the_leading_columns(
    tiny_annotated_bundle, tiny_features
):
    bundle = Bundle(tiny_annotated_bundle)
    tagger = bundle.tagger
    spec = bundle.manifest.tagger
    dim, width = spec["input_feature"]["dim"], bundle.manifest.image_encoder.component_dim
    assert tagger.feature_dim == dim and spec["bundle_input_dim"] == width > dim
    feature = np.stack(list(tiny_features.by_id.values())[:3])
    wide = np.concatenate([feature, np.random.default_rng(0).random((3, width - dim), dtype=np.float32)], 1)
    a, b = tagger.predict(feature, k=3), tagger.predict(wide, k=3)
    assert [[t.tag for t in r] for r in a] == [[t.tag for t in r] for r in b]
    with pytest.raises(TagInputError, match=rf"\[batch, {dim}\]"):
        tagger.predict(wide[:, :-1])
    # the same component loaded on its own takes only its own width
    standalone = Tagger.load(
        Path(tiny_annotated_bundle) / "tagger", read_component(Path(tiny_annotated_bundle) / "tagger"), 1
    )
    with pytest.raises(TagInputError):
        standalone.predict(wide)
    assert (
        json.loads((Path(tiny_annotated_bundle) / "tagger" / "component.json").read_text())["kind"]
        == "tagger"
    )
    assert bundle.captioner.generate(wide[:1])[0]
