"""The bundle's second image output (backbone features) and attaching tagger/captioner components."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xlsearch.bundle.components import ComponentError, attach_component, read_component, write_component
from xlsearch.bundle.manifest import read_bundle_manifest
from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import read_manifest
from xlsearch.encode.features import extract_features
from xlsearch.encode.preprocess import PreprocessConfig


def _backbone_spec(runs: Path) -> tuple[Path, dict]:
    (spec_path,) = sorted((runs / "image_encoder").glob("*/spec.json"))
    return spec_path.parent / "image_encoder.onnx", json.loads(spec_path.read_text())


def test_bundle_features_equal_the_training_feature_cache(tiny_run, tiny_bundle, tmp_path):
    """Tagger and captioner train on the cached backbone features and serve on the bundle's `feature` output:
    both must be the same vectors."""
    manifest = read_manifest(tiny_run.data)
    records = manifest.records[:6]
    onnx, spec = _backbone_spec(tiny_run.runs)
    ids, cached, _ = extract_features(
        manifest, onnx, PreprocessConfig.from_dict(spec["preprocess"]), tmp_path / "cache", progress=False
    )
    by_id = dict(zip(ids, cached, strict=True))
    bundle = Bundle(tiny_bundle)
    assert bundle.has_features
    images = [Image.open(manifest.image_path(r)).convert("RGB") for r in records]
    emb, feat = bundle.encode_images_with_features(images)
    # [feature ; multiscale]: the backbone feature leads (tests/core/bundle/test_multiscale_bundle.py: the stages)
    assert emb.shape == (6, bundle.dim) and feat.shape == (6, bundle.manifest.image_encoder.component_dim)
    np.testing.assert_allclose(feat[:, : spec["dim"]], np.stack([by_id[r.id] for r in records]), atol=1e-5)
    np.testing.assert_allclose(emb, bundle.encode_images(images), atol=1e-6)
    assert bundle.tagger is None and bundle.captioner is None


def _component(folder: Path, bundle_manifest: dict, **changes) -> Path:
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x00\x01")
    image = bundle_manifest["image_encoder"]
    feature = {"dim": image["feature_dim"], "backbone": image["backbone"], "preprocess": image["preprocess"]}
    write_component(folder, "tagger", {"input_feature": {**feature, **changes}, "files": ["weights.bin"]})
    return folder


def test_attach_component_rehashes_and_replaces(tiny_bundle, tmp_path):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    before = read_bundle_manifest(bundle_dir)
    comp = _component(tmp_path / "tagger", before)
    assert read_component(comp)["kind"] == "tagger"
    after = attach_component(bundle_dir, comp)
    assert after["content_hash"] != before["content_hash"]
    assert after["tagger"]["folder"] == "tagger" and "tagger/weights.bin" in after["files"]
    assert read_bundle_manifest(bundle_dir)["content_hash"] == after["content_hash"]  # verifies every file
    # attaching again replaces the old copy instead of piling up files
    (comp / "weights.bin").write_bytes(b"\x02")
    again = attach_component(bundle_dir, comp)
    assert again["files"]["tagger/weights.bin"] != after["files"]["tagger/weights.bin"]


def test_attach_refuses_components_trained_on_other_features(tiny_bundle, tmp_path):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    manifest = read_bundle_manifest(bundle_dir)
    comp = _component(tmp_path / "tagger", manifest, dim=512)
    with pytest.raises(ComponentError, match="feature dim 512"):
        attach_component(bundle_dir, comp)
    assert read_bundle_manifest(bundle_dir)["content_hash"] == manifest["content_hash"]


def test_component_errors_name_the_file(tmp_path):
    with pytest.raises(ComponentError, match="component.json: missing"):
        read_component(tmp_path)
    (tmp_path / "component.json").write_text('{"kind": "tagger",\n oops}')
    with pytest.raises(ComponentError, match=r"component.json:2: broken JSON"):
        read_component(tmp_path)
    with pytest.raises(ComponentError, match="unknown component kind"):
        write_component(tmp_path, "poet", {"input_feature": {}})
