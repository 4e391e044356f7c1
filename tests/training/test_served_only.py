"""The demo's fast path and the annotator papercuts (issue 12): `xlsearch-train-tagger --served-only` trains and
attaches only the served tagger (no experiment table, earlier results untouched) and prints no pipeline step labels;
the captioning table and gallery are titled with the data's own name."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")

TINY_TAGGING = {
    "backbone": {"kind": "efficientnet_lite0"},
    "crop": "center",
    "train": {
        "hidden": 32,
        "epochs": 3,
        "lqp_hidden": [16],
        "lqp_epochs": 3,
        "batch_size": 16,
        "vocab": {"zh_min_count": 2},
    },
    "models": {"MLP (zh only)": {"model": "mlp"}, "Cascading MLP": {"model": "cascade"}},
    "serve": {"model": "cascade", "user_tags": True},
}


def test_tagger_served_only_attaches_the_tagger_and_leaves_the_tables_alone(tiny_run, tmp_path, capsys):
    from xlsearch.bundle.manifest import read_bundle_manifest
    from xlsearch_training.tagging.cli import main

    config = tmp_path / "tagging.json"
    config.write_text(json.dumps(TINY_TAGGING), encoding="utf-8")
    runs, bundle = tmp_path / "runs", tmp_path / "bundle"
    shutil.copytree(tiny_run.runs / "bundle", bundle)
    runs.mkdir()
    (runs / "results.json").write_text("[]", encoding="utf-8")  # an earlier experiment's, kept as it is
    argv = ["--data", str(tiny_run.data), "--runs", str(runs), "--features-from", str(tiny_run.runs)]
    argv += ["--seeds", "0", "--config", str(config), "--no-progress", "--bundle", str(bundle)]
    capsys.readouterr()
    assert main([*argv, "--served-only"]) == 0
    out = capsys.readouterr()

    assert (runs / "results.json").read_text(encoding="utf-8") == "[]"
    assert not (runs / "tagging.md").exists() and not (runs / "seed0").exists()  # no experiment model trained
    assert read_bundle_manifest(bundle)["tagger"]["model"] == "cascade"
    assert (bundle / "tagger" / "tagger.onnx").is_file()
    assert not re.search(r"\[\d/5\]", out.out)  # the retrieval pipeline's step labels are its own
    assert out.out.count("backbone ") <= 1
    assert out.err == ""  # --no-progress: not even the feature cache's line


def test_captioning_table_and_gallery_name_the_data(tmp_path):
    from PIL import Image

    from xlsearch.data.manifest import Record, read_manifest, write_manifest
    from xlsearch_training.captioning.cli import dataset_name
    from xlsearch_training.captioning.experiment import write_seed_gallery
    from xlsearch_training.captioning.report import format_table

    result = {
        "strategy": "monolingual",
        "seed": 0,
        "test": {m: 0.5 for m in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")},
        "exact_match": 0.1,
        "val_cider": 0.4,
    }
    data = tmp_path / "my-photos"
    assert dataset_name(data) == "my-photos"
    table = format_table([result], ["monolingual"], dataset_name(data))
    assert table.startswith("my-photos test splits, seeds 0:") and "Tux Paint" not in table

    (data / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(data / "images" / "a.png")
    write_manifest(
        data, [Record(id="a", image="images/a.png", split="test", en=["a red square"], zh=["红色方块"])]
    )
    page = write_seed_gallery(
        tmp_path / "gallery", read_manifest(data), 0, 1, {"monolingual": {"a": "红色"}}, {}, "my-photos"
    )
    html = Path(page).read_text(encoding="utf-8")
    assert "my-photos captions, seed 0 test split" in html and "Tux Paint" not in html
