"""The commands beside the zero-training bundles (issue 13): the cost measurement on random weights
(`xlsearch_training.pretrained.cost`) and the openclipart dataset's subset (`openclipart.subset_manifest`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("cn_clip")

from PIL import Image  # noqa: E402

from xlsearch.data.manifest import Record, read_manifest, write_manifest  # noqa: E402


def _manifest(root: Path, n: int, zh=lambda k: f"第{k}个红色的圆") -> Path:
    root.mkdir(parents=True)
    records = []
    for k in range(n):
        Image.new("RGB", (40 + k, 40), (20 * k % 255, 80, 160)).save(root / f"c{k}.png")
        records.append(
            Record(id=f"cat/c{k}", image=f"c{k}.png", split="train", en=[f"circle {k}"], zh=[zh(k)])
        )
    write_manifest(root, records)
    return root


def test_cost_times_a_random_weights_bundle_beside_a_reference(
    tmp_path: Path, tiny_bundle: Path, capsys
) -> None:
    from xlsearch_training.pretrained.cost import main

    data = _manifest(tmp_path / "data", 4)
    out = tmp_path / "cost.json"
    argv = ["--cm", "cn-clip:tiny", "--work", str(tmp_path / "work"), "--manifest", str(data), "--images", "4",
            "--queries", "2", "--batch", "2", "--repeats", "1", "--reference", str(tiny_bundle), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    (row,) = json.loads(out.read_text(encoding="utf-8"))
    assert row["cm"] == "cn-clip:tiny" and row["dim"] == 32 and row["image_size"] == 32
    assert row["rounds"] == {"image_batches": 2, "queries": 2}
    assert row["image_ms_per_item"] > 0 and row["query_text_tower_ms"] > 0 and row["query_e5_ms"] > 0
    assert row["vs_reference"]["image"] > 0 and row["params_m"]["text"] > 0
    printed = capsys.readouterr().out
    assert "| cn-clip:tiny | 32 | 32 |" in printed and f"| reference: {tiny_bundle} |" in printed
    assert not (tmp_path / "work" / "cn-clip-tiny").exists()  # bundles are removed unless --keep


def test_openclipart_subset_draws_distinct_images_and_points_into_the_full_folder(tmp_path: Path) -> None:
    from xlsearch_training.pretrained.openclipart import main

    full = _manifest(tmp_path / "full", 12, zh=lambda k: "星星" if k < 6 else f"圆{k}")
    assert main(["--out", str(tmp_path / "sub"), "--limit", "5", "--full", str(full)]) == 0
    sub = read_manifest(tmp_path / "sub")
    assert len(sub.records) == 5 and len({r.id for r in sub.records}) == 5
    assert sum(r.zh[0] == "星星" for r in sub.records) <= 2  # at most 2 images per Chinese query
    assert all(sub.image_path(r).is_file() and r.image.startswith("../full/") for r in sub.records)
    again = tmp_path / "again"
    assert main(["--out", str(again), "--limit", "5", "--full", str(full)]) == 0  # seeded: the same subset
    assert [r.id for r in read_manifest(again).records] == [r.id for r in sub.records]
