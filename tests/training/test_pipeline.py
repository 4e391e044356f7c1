"""The main job end to end on a real Tux Paint subset (the session's `tiny_run`), and the bundle it writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xlsearch.bundle.manifest import BundleError, read_bundle_manifest
from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import read_manifest
from xlsearch.encode.preprocess import load_image


def test_pipeline_writes_bundle_results_and_table(tiny_run):
    results = json.loads((tiny_run.runs / "results.json").read_text(encoding="utf-8"))
    assert [r["variant"] for r in results] == ["tiny"]
    rows = results[0]["rows"]
    n = results[0]["candidates"]
    assert n >= 10
    # random ranking of n candidates has MRR ~ H(n)/n; trained CL/CLM must be far above it
    random_mrr = sum(1 / k for k in range(1, n + 1)) / n
    assert rows["CL[sentence]"]["mrr"] > 2 * random_mrr
    assert rows["CLM[visual]"]["mrr"] > random_mrr
    assert 0.0 <= rows["CLM[visual]"]["alpha"] <= 1.0
    table = (tiny_run.runs / "benchmark.md").read_text(encoding="utf-8")
    assert "CL, e5 zero-shot (peer baseline)" in table and "| tiny |" in table

    m = read_bundle_manifest(tiny_run.runs / "bundle")
    assert set(m["text_encoders"]) == {"zh", "en"}
    assert m["fusion"]["cl_space"] in ("visual", "sentence")
    assert m["image_encoder"]["preprocess"]["image_size"] == 224
    assert m["dim"] == 64  # tiny_config's learned projection
    assert {"image_encoder.onnx", "text_encoder_zh.onnx", "text_encoder_en.onnx"} <= set(m["files"])


def test_bundle_encodes_real_images_and_sentences(tiny_run):
    bundle = Bundle(tiny_run.runs / "bundle")
    manifest = read_manifest(tiny_run.data)
    recs = manifest.split("test")[:4]
    v = bundle.encode_images([load_image(manifest.image_path(r)) for r in recs])
    assert v.shape == (4, bundle.dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    q = bundle.encode_texts([r.zh[0] for r in recs], "zh")
    c = bundle.encode_texts([r.en[0] for r in recs], "en")
    assert q.shape == c.shape == (4, bundle.dim)
    # a batch of one gives the same vector as inside a batch (dynamic batch axis)
    np.testing.assert_allclose(bundle.encode_texts([recs[1].zh[0]], "zh")[0], q[1], atol=1e-5)


def test_bundle_refuses_altered_files(tiny_run, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_run.runs / "bundle", copy)
    with open(copy / "vocab_zh.json", "a", encoding="utf-8") as f:
        f.write(" ")
    with pytest.raises(BundleError, match="vocab_zh.json changed"):
        Bundle(copy)
    (copy / "manifest.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(BundleError, match="broken JSON"):
        Bundle(copy)


def test_benchmark_cli_matches_pipeline(tiny_run, tmp_path):
    """`xlsearch benchmark` (torch-free, features through the bundle's ONNX) reproduces the pipeline's numbers."""
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "xlsearch_cli.main",
        "benchmark",
        "--manifest",
        str(tiny_run.runs / "splits/seed0"),
        "--bundle",
        str(tiny_run.runs / "bundle"),
        "--json",
        str(out),
        "--cache",
        str(tmp_path / "cache"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "CLM, CL in visual space" in proc.stdout
    got = json.loads(out.read_text(encoding="utf-8"))["rows"]
    want = json.loads((tiny_run.runs / "results.json").read_text(encoding="utf-8"))[0]["rows"]
    for key in ("CM", "CL[visual]", "CLM[visual]", "CL[sentence]"):
        assert got[key]["mrr"] == pytest.approx(want[key]["mrr"], abs=1e-6), key


def test_serving_side_never_imports_torch():
    code = (
        "import sys; import xlsearch_cli.main, xlsearch_server.cli, xlsearch_server.app, xlsearch_indexer.cli, "
        "xlsearch.bundle.runtime, xlsearch.search.engine, xlsearch.eval.benchmark, xlsearch.encode.features; "
        "bad = [m for m in ('torch', 'torchvision', 'open_clip') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
