from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from xlsearch.data.datasets.cli import main
from xlsearch.data.datasets.cococn import convert_cococn
from xlsearch.data.datasets.common import REPORT_NAME, DatasetError, MissingDependencyError
from xlsearch.data.datasets.tuxpaint import _expand_entities, convert_tuxpaint, parse_description, render_svg
from xlsearch.data.manifest import read_manifest

# ---------------------------------------------------------------- COCO-CN


def test_cococn_fixture(cococn_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    cococn, coco = cococn_dirs
    out = tmp_path / "out" / "cococn"
    report = convert_cococn(cococn, coco, out)
    manifest = read_manifest(out)  # check_images=True: every relative path reaches a COCO file
    by_id = {rec.id: rec for rec in manifest}
    assert {s: [r.id for r in manifest.split(s)] for s in ("train", "val", "test")} == {
        "train": ["COCO_train2014_000000000009", "COCO_train2014_000000000025", "COCO_val2014_000000000042"],
        "val": ["COCO_val2014_000000000073"],
        "test": ["COCO_val2014_000000000074", "COCO_train2014_000000000030"],
    }
    rec = by_id["COCO_train2014_000000000009"]
    assert rec.zh == ["一盘放着西兰花和肉的食物。", "桌上有一个装满食物的饭盒。"]
    assert rec.en == ["A plate of food with broccoli and meat.", "A lunch box full of food."]
    assert rec.tags_zh == ["食物", "饭盒", "西兰花"] and rec.tags_en == []
    assert by_id["COCO_train2014_000000000025"].en == [
        "A giraffe standing next to a tree."
    ]  # whitespace cleaned
    assert by_id["COCO_train2014_000000000030"].en == ["White flowers in a vase."]
    # manually translated sentences are zh too, after the human-written ones
    assert by_id["COCO_val2014_000000000074"].zh == [
        "一只狗躺在街上。",
        "一只狗躺在人行道上。",
        "街边睡着一只黑白相间的狗。",
    ]
    assert by_id["COCO_val2014_000000000042"].tags_zh == []
    for rec in manifest:  # relative links, no copies
        assert rec.image.startswith("../") and not (out / "train2014").exists()
        image_id = rec.id
        assert manifest.image_path(rec) == (coco / image_id.split("_")[1] / f"{image_id}.jpg").resolve()
    assert report["counts"]["images"] == 6 and report["counts"]["zh_translated_sentences"] == 3
    assert report["annotated_images_not_in_any_split"] == {"captions": 0, "tags": 1, "translated": 0}
    assert json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))["splits"] == {
        "train": 3,
        "val": 1,
        "test": 2,
    }


def test_cococn_short_file_names(cococn_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    cococn, coco = cococn_dirs
    (cococn / "imageid.human-written-caption.txt").rename(cococn / "imageid.caption.txt")
    (cococn / "imageid.human-written-tags.txt").rename(cococn / "imageid.tags.txt")
    (cococn / "imageid.manually-translated-caption.txt").unlink()  # optional
    report = convert_cococn(cococn, coco, tmp_path / "out")
    assert report["files"] == {
        "captions": "imageid.caption.txt",
        "tags": "imageid.tags.txt",
        "translated": None,
    }
    assert report["counts"]["zh_sentences"] == 7


def _append(path: Path, line: str) -> int:
    """Append a line and return its line number."""
    text = path.read_text(encoding="utf-8")
    path.write_text(text + line + "\n", encoding="utf-8")
    return text.count("\n") + 1


@pytest.mark.parametrize(
    ("file", "line", "reason"),
    [
        (
            "imageid.human-written-caption.txt",
            "COCO_val2014_000000000042 no key number",
            "expected '<imageid>#<n>",
        ),
        ("imageid.human-written-caption.txt", "COCO_val2014_000000000042#1", "expected '<imageid>#<n>"),
        ("imageid.human-written-caption.txt", "COCO_val2014_42#0 一辆车。", "not a COCO 2014 image id"),
        ("imageid.human-written-tags.txt", "COCO_val2014_000000000074 重复", "second tag line"),
        ("imageid.manually-translated-caption.txt", "coco_val#zhm#0 一只狗。", "not a COCO 2014 image id"),
        ("coco-cn_test.txt", "COCO_val2014_000000000042", "already listed at"),
        ("coco-cn_val.txt", "COCO_test2015_000000000001", "not a COCO 2014 image id"),
    ],
)
def test_cococn_errors_name_file_and_line(
    cococn_dirs: tuple[Path, Path], tmp_path: Path, file: str, line: str, reason: str
) -> None:
    cococn, coco = cococn_dirs
    lineno = _append(cococn / file, line)
    with pytest.raises(DatasetError) as err:
        convert_cococn(cococn, coco, tmp_path / "out")
    assert f"{file}:{lineno}: " in str(err.value) and reason in str(err.value)


def test_cococn_missing_image_and_cli(
    cococn_dirs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cococn, coco = cococn_dirs
    (coco / "val2014" / "COCO_val2014_000000000073.jpg").unlink()
    args = ["cococn", "--cococn", str(cococn), "--coco", str(coco), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "coco-cn_val.txt:1: image not found" in err and "Traceback" not in err
    Image.new("RGB", (8, 6)).save(coco / "val2014" / "COCO_val2014_000000000073.jpg")
    assert main(args) == 0
    assert "images=6" in capsys.readouterr().out


def test_cococn_bad_coco_json(cococn_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    cococn, coco = cococn_dirs
    (coco / "annotations" / "captions_val2014.json").write_text(
        '{"images": [\n  {"id": 1,}\n]}', encoding="utf-8"
    )
    with pytest.raises(DatasetError, match=r"captions_val2014\.json:2: invalid JSON"):
        convert_cococn(cococn, coco, tmp_path / "out")


# ---------------------------------------------------------------- Tux Paint


def test_parse_description(tmp_path: Path) -> None:
    txt = tmp_path / "roo.txt"
    txt.write_text(
        "A red kangaroo.  \nca@valencia.utf8=Un cangur.\nzh_CN.utf8= 一只红色的袋鼠。\n", encoding="utf-8"
    )
    assert parse_description(txt) == (
        "A red kangaroo.",
        {"ca@valencia": "Un cangur.", "zh_CN": "一只红色的袋鼠。"},
    )
    txt.write_text("zh_CN.utf8=袋鼠\n", encoding="utf-8")
    assert parse_description(txt) == ("", {})  # line 1 is not English: no usable description


def test_expand_entities() -> None:
    svg = (
        b'<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x.dtd" [\n'
        b'  <!ENTITY ns_svg "http://www.w3.org/2000/svg">\n]>\n<svg xmlns="&ns_svg;" width="4" height="2"/>'
    )
    out = _expand_entities(svg)
    assert b"<!ENTITY" not in out and b'xmlns="http://www.w3.org/2000/svg"' in out


def test_svg_render_keeps_aspect(tmp_path: Path) -> None:
    svg = tmp_path / "tall.svg"
    svg.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="40"><rect width="10" height="40"/></svg>'
    )
    assert render_svg(svg, 128).size == (32, 128)


def test_missing_cairosvg_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    svg = tmp_path / "x.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    monkeypatch.setitem(sys.modules, "cairosvg", None)  # makes `import cairosvg` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"xlsearch\[data\]"):
        render_svg(svg)


def test_tuxpaint_real_subset(tuxpaint_subset: Any, tmp_path: Path) -> None:
    sub, out = tuxpaint_subset, tmp_path / "tux"
    report = convert_tuxpaint(out, sub.root, seed=0, progress=False)
    manifest = read_manifest(out)
    assert [r.id for r in manifest] == sorted(sub.png + sub.svg_only)
    for rec in manifest:
        english, translations = parse_description(sub.root / f"{rec.id}.txt")
        assert rec.en == [english] and rec.zh == [translations["zh_CN"]] and rec.tags_en == rec.tags_zh == []
        assert rec.image == f"images/{rec.id}.png"
        with Image.open(manifest.image_path(rec)) as img:
            assert img.format == "PNG" and img.mode == "RGB"
            if rec.id in sub.svg_only:
                assert max(img.size) == 512
            else:
                with Image.open(sub.root / f"{rec.id}.png") as src:
                    assert img.size == src.size
    counts = report["counts"]
    assert counts["converted"] == len(manifest) and counts["from_svg"] == len(sub.svg_only)
    assert counts["from_png"] == len(sub.png) and counts["reused"] == 0
    assert [s["id"] for s in report["skipped"]] == sub.broken and "png:" in report["skipped"][0]["reason"]
    assert [e["id"] for e in report["excluded"]] == sub.no_zh
    assert report["images_without_description"] == sub.orphan
    assert json.loads((out / REPORT_NAME).read_text(encoding="utf-8")) == report

    # resume: images are reused, not rewritten, and the manifest is identical
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    again = convert_tuxpaint(out, sub.root, seed=0, progress=False)
    assert again["counts"]["reused"] == len(manifest) and again["counts"]["converted"] == len(manifest)
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == mtimes
    assert read_manifest(out).records == manifest.records


def test_tuxpaint_seed_limit_and_cli(
    tuxpaint_subset: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = tuxpaint_subset
    splits = {}
    for seed in (0, 0, 5):
        out = tmp_path / f"s{seed}"
        convert_tuxpaint(out, sub.root, seed=seed, progress=False)
        splits.setdefault(seed, []).append({r.id: r.split for r in read_manifest(out)})
    assert splits[0][0] == splits[0][1]
    assert sorted(splits[5][0]) == sorted(splits[0][0])

    args = [
        "tuxpaint",
        "--out",
        str(tmp_path / "cli"),
        "--stamps-root",
        str(sub.root),
        "--limit",
        "3",
        "--quiet",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "converted=3" in captured.out
    assert len(read_manifest(tmp_path / "cli")) == 3
    assert main(["tuxpaint", "--out", str(tmp_path / "x"), "--stamps-root", str(tmp_path / "none")]) == 2
    assert "stamps folder not found" in capsys.readouterr().err
