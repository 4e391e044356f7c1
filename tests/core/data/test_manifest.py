from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from xlsearch.data.datasets.cli import main
from xlsearch.data.manifest import (
    MANIFEST_NAME,
    ManifestError,
    Record,
    assign_splits,
    read_manifest,
    resplit,
    resplit_manifest,
    write_manifest,
)


def _records(n: int = 3) -> list[Record]:
    out = [
        Record("a", "images/a.png", "train", en=["A red kangaroo."], zh=["一只红色的袋鼠。"]),
        Record("b/c", "images/b/c.png", "val", tags_en=["dog"], tags_zh=["狗"]),
        Record("d", "images/d.png", "test"),  # un-annotated
    ]
    return out[:n]


def _dataset(folder: Path, records: list[Record]) -> Path:
    for rec in records:
        (folder / rec.image).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), "white").save(folder / rec.image)
    return write_manifest(folder, records)


def test_round_trip_and_format(tmp_path: Path) -> None:
    path = _dataset(tmp_path, _records())
    assert path == tmp_path / MANIFEST_NAME
    text = path.read_text(encoding="utf-8")
    assert "一只红色的袋鼠" in text and "\\u" not in text  # ensure_ascii=False
    assert len(text.splitlines()) == 3 and all(json.loads(line) for line in text.splitlines())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind

    for where in (tmp_path, path):
        manifest = read_manifest(where)
        assert manifest.records == _records()
        assert manifest.root == tmp_path.resolve()
    assert len(manifest) == 3 and [r.id for r in manifest] == ["a", "b/c", "d"]
    assert [r.id for r in manifest.split("val")] == ["b/c"]
    assert manifest.image_path(manifest.records[1]) == tmp_path.resolve() / "images/b/c.png"
    assert [r.annotated for r in manifest] == [True, True, False]
    with pytest.raises(ValueError, match="unknown split"):
        manifest.split("dev")


def test_record_is_frozen() -> None:
    rec = _records(1)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.split = "val"  # type: ignore[misc]
    assert dataclasses.replace(rec, split="val").split == "val"


def test_blank_lines_and_bom_are_ignored(tmp_path: Path) -> None:
    line = json.dumps(_records(1)[0].to_json(), ensure_ascii=False)
    (tmp_path / MANIFEST_NAME).write_text("\ufeff" + line + "\n\n   \n", encoding="utf-8")
    assert len(read_manifest(tmp_path, check_images=False)) == 1


GOOD = {"id": "x", "image": "x.png", "split": "train", "en": [], "zh": [], "tags_en": [], "tags_zh": []}
BAD_LINES = {
    "broken json": ('{"id": "x", ', "invalid JSON"),
    "not an object": ("[1, 2]", "expected a JSON object"),
    "missing key": (json.dumps({k: v for k, v in GOOD.items() if k != "zh"}), "missing key(s): zh"),
    "unknown key": (json.dumps({**GOOD, "tags": []}), "unknown key(s): tags"),
    "id not string": (json.dumps({**GOOD, "id": 7}), "'id' must be a non-empty string"),
    "empty image": (json.dumps({**GOOD, "image": ""}), "'image' must be a non-empty string"),
    "absolute image": (json.dumps({**GOOD, "image": "/abs/x.png"}), "must be relative"),
    "bad split": (json.dumps({**GOOD, "split": "dev"}), "'split' must be one of train|val|test"),
    "text not list": (json.dumps({**GOOD, "en": "a dog"}), "'en' must be a list of strings"),
    "text item not str": (
        json.dumps({**GOOD, "tags_zh": ["狗", 3]}),
        "tags_zh[1] must be a non-blank string",
    ),
    "blank text": (json.dumps({**GOOD, "zh": [" "]}), "zh[0] must be a non-blank string"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_read_errors_name_file_and_line(tmp_path: Path, case: str) -> None:
    bad, reason = BAD_LINES[case]
    good = json.dumps({**GOOD, "id": "first"})
    (tmp_path / MANIFEST_NAME).write_text(f"{good}\n\n{bad}\n", encoding="utf-8")
    with pytest.raises(ManifestError) as err:
        read_manifest(tmp_path, check_images=False)
    assert f"{MANIFEST_NAME}:3: " in str(err.value) and reason in str(err.value)
    assert err.value.line == 3 and err.value.path.name == MANIFEST_NAME


def test_duplicate_id_and_missing_image(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "image": "y.png"}) + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=rf"{MANIFEST_NAME}:2: duplicate id 'x' \(first on line 1\)"):
        read_manifest(path, check_images=False)
    path.write_text(json.dumps(GOOD) + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=rf"{MANIFEST_NAME}:1: image file not found: x.png"):
        read_manifest(path)
    assert len(read_manifest(path, check_images=False)) == 1


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(
        json.dumps(GOOD).encode() + b"\n" + '{"id": "狗"}'.encode("gbk") + b"\n"
    )
    with pytest.raises(ManifestError, match=rf"{MANIFEST_NAME}:2: not UTF-8"):
        read_manifest(tmp_path, check_images=False)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path)


def test_write_validates(tmp_path: Path) -> None:
    recs = _records(2)
    with pytest.raises(ManifestError, match=rf"{MANIFEST_NAME}:3: duplicate id 'a'"):
        write_manifest(tmp_path, [*recs, recs[0]])
    with pytest.raises(ManifestError, match=rf"{MANIFEST_NAME}:2: 'split' must be one of"):
        write_manifest(tmp_path, [recs[0], dataclasses.replace(recs[1], split="dev")])
    assert not (tmp_path / MANIFEST_NAME).exists() and list(tmp_path.iterdir()) == []


def test_assign_splits_deterministic_and_fractions() -> None:
    ids = [f"img{i:04d}" for i in range(1000)]
    first = assign_splits(ids, seed=3)
    assert first == assign_splits(list(reversed(ids)), seed=3)  # input order does not matter
    assert Counter(first.values()) == {"train": 700, "val": 150, "test": 150}
    assert first != assign_splits(ids, seed=4)
    assert Counter(assign_splits(ids[:773], seed=0).values()) == {"train": 541, "val": 116, "test": 116}
    assert Counter(assign_splits(ids[:10], 0, (0.5, 0.5, 0.0)).values()) == {"train": 5, "val": 5}
    assert assign_splits([], 0) == {}
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(ids, 0, (0.7, 0.2, 0.2))
    with pytest.raises(ValueError, match="unique"):
        assign_splits(["a", "a"], 0)


def test_resplit_records() -> None:
    recs = [Record(f"i{n}", f"i{n}.png", "train", en=["x"]) for n in range(20)]
    out = resplit(recs, seed=1)
    assert [r.id for r in out] == [r.id for r in recs] and [r.en for r in out] == [r.en for r in recs]
    assert {r.split for r in out} == {"train", "val", "test"}


def test_resplit_manifest_points_at_source_images(tmp_path: Path) -> None:
    src = tmp_path / "data" / "src"
    records = [Record(f"i{n}", f"images/i{n}.png", "train", en=[f"image {n}"]) for n in range(40)]
    _dataset(src, records)
    dst = tmp_path / "runs" / "seed7"
    resplit_manifest(src, dst, seed=7)
    original, moved = read_manifest(src), read_manifest(dst)  # check_images: every relative path resolves
    assert not (dst / "images").exists()  # nothing copied
    assert [r.id for r in moved] == [r.id for r in original]
    for a, b in zip(original, moved, strict=True):
        assert moved.image_path(b).resolve() == original.image_path(a).resolve()
        assert b.image.startswith("../") and not os.path.isabs(b.image)
        assert (a.en, a.zh) == (b.en, b.zh)
    assert Counter(r.split for r in moved) == {"train": 28, "val": 6, "test": 6}
    assert {r.id: r.split for r in moved} == assign_splits([r.id for r in records], 7)
    # re-splitting a re-split still points at the original files
    resplit_manifest(dst, tmp_path / "runs" / "seed8", seed=8)
    again = read_manifest(tmp_path / "runs" / "seed8")
    assert again.image_path(again.records[0]).resolve() == original.image_path(original.records[0]).resolve()
    with pytest.raises(ValueError, match="source folder"):
        resplit_manifest(src, src, seed=1)


def test_cli_resplit_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _dataset(tmp_path / "src", _records())
    assert (
        main(["resplit", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "dst"), "--seed", "1"]) == 0
    )
    assert main(["info", str(tmp_path / "dst")]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert lines["split"] == ["split", "images", "annotated", "unannotated", "en", "zh", "tags_en", "tags_zh"]
    assert lines["total"] == ["total", "3", "2", "1", "1", "1", "1", "1"]


def test_cli_errors_exit_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(GOOD) + "\n{oops\n", encoding="utf-8")
    assert main(["info", str(tmp_path), "--no-check-images"]) == 2
    err = capsys.readouterr().err
    assert f"{MANIFEST_NAME}:2: invalid JSON" in err and "Traceback" not in err
    assert main(["info", str(tmp_path / "nowhere")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["resplit", "--src", str(tmp_path), "--out", str(tmp_path), "--seed", "1"]) == 2
