"""A zero-training Chinese-CLIP bundle (random weights, tiny config) end to end through the unchanged tools:
`xlsearch bundle pretrained` writes it (fusion chosen on a validation split), the generic tagging and captioning
commands train components on its image features from a small non-Tux-Paint manifest (no English-only images, no
corpus A: those strategies are skipped; the served ones chosen on validation), `xlsearch index` indexes Tux Paint
stamps with it, and the gRPC server answers Search, Tag and Caption."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("cn_clip")

from PIL import Image, ImageDraw  # noqa: E402
from server_support import ServerThread, test_settings  # noqa: E402

from xlsearch.bundle.manifest import load_bundle_manifest  # noqa: E402
from xlsearch.bundle.runtime import Bundle  # noqa: E402
from xlsearch.data.manifest import Record, read_manifest, write_manifest  # noqa: E402
from xlsearch.v1 import search_pb2 as pb  # noqa: E402
from xlsearch.v1 import search_pb2_grpc as pb_grpc  # noqa: E402

COLOURS = {"red": ("红色", (220, 30, 30)), "green": ("绿色", (30, 180, 60)), "blue": ("蓝色", (40, 60, 220)),
           "yellow": ("黄色", (240, 210, 20)), "black": ("黑色", (10, 10, 10))}  # fmt: skip
SHAPES = {"circle": "圆", "square": "方块", "triangle": "三角形", "star": "星星", "bar": "横条"}


def _draw(shape: str, rgb: tuple[int, int, int], seed: int) -> Image.Image:
    img = Image.new("RGB", (96, 96), "white")
    d = ImageDraw.Draw(img)
    o = 8 + seed * 3
    if shape == "circle":
        d.ellipse([o, o, 88 - o // 2, 88 - o // 2], fill=rgb)
    elif shape == "square":
        d.rectangle([o, o, 80, 80], fill=rgb)
    elif shape == "triangle":
        d.polygon([(48, o), (88, 88), (8, 88)], fill=rgb)
    elif shape == "star":
        d.polygon(
            [
                (48, o),
                (58, 40),
                (90, 40),
                (64, 60),
                (74, 92),
                (48, 72),
                (22, 92),
                (32, 60),
                (6, 40),
                (38, 40),
            ],
            fill=rgb,
        )
    else:
        d.rectangle([4, 36 - seed, 92, 60 + seed], fill=rgb)
    return img


@pytest.fixture(scope="module")
def shapes_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """75 drawn images (5 colours x 5 shapes x 3), English + Chinese captions and tags; ids are not Tux Paint's."""
    root = tmp_path_factory.mktemp("shapes")
    records = []
    for colour, (zh_colour, rgb) in COLOURS.items():
        for shape, zh_shape in SHAPES.items():
            for k in range(3):
                rid = f"{colour}-{shape}-{k}"
                _draw(shape, rgb, k).save(root / f"{rid}.png")
                split = ("train", "train", "val", "test", "train")[(len(records) * 7) % 5]
                records.append(Record(
                    id=rid, image=f"{rid}.png", split=split,
                    en=[f"A {colour} {shape}."], zh=[f"一个{zh_colour}的{zh_shape}"],
                    tags_en=[colour, shape], tags_zh=[zh_colour, zh_shape],
                ))  # fmt: skip
    write_manifest(root, records)
    return root


@pytest.fixture(scope="module")
def served_bundle(shapes_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xlsearch_cli.main import main as xlsearch

    work = tmp_path_factory.mktemp("cnclip")
    bundle = work / "bundle"
    argv = ["bundle", "pretrained", "--cm", "cn-clip:tiny", "--weights", "random", "--cl", "e5"]
    assert xlsearch([*argv, "--out", str(bundle), "--manifest", str(shapes_manifest), "--no-progress"]) == 0
    m = load_bundle_manifest(bundle)
    assert m.model_family == "pretrained" and m.fusion.info["rule"] == "simplex 1se"
    assert m.text_encoders["zh"].tokenizer["kind"] == "wordpiece" and m.cl_space in (
        "visual",
        "sentence",
        "joint",
    )

    from xlsearch_training.tagging.cli import main as tagger

    tag_cfg = work / "tagging.json"
    tag_cfg.write_text(json.dumps({
        "backbone": {"kind": "efficientnet_lite0"},
        "train": {"hidden": 32, "epochs": 8, "lqp_hidden": [16], "lqp_epochs": 8, "batch_size": 16,
                  "vocab": {"zh_min_count": 2}},
        "models": {"MLP (zh only)": {"model": "mlp"}, "Multi-task MLP": {"model": "multitask"},
                   "Cascading MLP + English-only images": {"model": "cascade", "english_only_images": True}},
        "serve": {"user_tags": True},
    }))  # fmt: skip
    runs = work / "tagging"
    argv = ["--data", str(shapes_manifest), "--runs", str(runs), "--config", str(tag_cfg), "--seeds", "0"]
    assert tagger([*argv, "--bundle", str(bundle), "--no-progress"]) == 0
    choice = json.loads((runs / "served_choice.json").read_text())
    assert set(choice["scores"]) == {"MLP (zh only)", "Multi-task MLP"}  # the English-only model was skipped
    assert choice["chosen"] == max(choice["scores"], key=choice["scores"].get)

    from xlsearch_training.captioning.cli import main as captioner

    cap_cfg = work / "captioning.json"
    cap_cfg.write_text(json.dumps({"word_dim": 16, "hidden": 32, "epochs": 2, "min_count": 1, "sequential_epochs": 1,
                                   "strategies": ["monolingual", "transfer", "sequential"], "serve": "best"}))  # fmt: skip
    argv = ["--data", str(shapes_manifest), "--runs", str(work / "captioning"), "--retrieval-runs", str(runs)]
    argv += ["--config", str(cap_cfg), "--seeds", "0", "--gallery", "0", "--bundle", str(bundle)]
    assert captioner(argv) == 0
    results = json.loads((work / "captioning" / "results.json").read_text())
    assert {r["strategy"] for r in results} == {
        "monolingual",
        "transfer",
        "nn",
    }  # no corpus A: sequential skipped
    loaded = Bundle(bundle)
    assert loaded.tagger is not None and loaded.captioner is not None
    assert loaded.manifest.captioner["strategy"] in ("monolingual", "transfer")
    return bundle


@pytest.fixture(scope="module")
def stub(served_bundle: Path, tiny_manifest: Path, tmp_path_factory) -> Iterator[pb_grpc.ImageSearchStub]:
    from xlsearch_indexer.cli import main as index_main

    index = tmp_path_factory.mktemp("cnclip-index") / "index"
    argv = ["--manifest", str(tiny_manifest), "--bundle", str(served_bundle), "--out", str(index)]
    assert index_main([*argv, "--min-tag-score", "0", "--no-progress"]) == 0
    st = ServerThread(test_settings(bundle=served_bundle, index=index, min_tag_score=0.0))
    assert st.wait_ready(), st.server.slot.error
    with st.channel() as channel:
        yield pb_grpc.ImageSearchStub(channel)
    st.stop()


def test_zero_training_bundle_serves_search_tag_caption(stub, tiny_manifest: Path) -> None:
    m = read_manifest(tiny_manifest)
    stamp = next(r for r in m.records if m.image_path(r).stat().st_size < 200 * 1024)
    for mode in (pb.CLM, pb.CM, pb.CL):
        resp = stub.Search(pb.SearchRequest(query="一只红色的袋鼠", top_k=5, mode=mode), timeout=60)
        assert len(resp.hits) == 5 and {h.id for h in resp.hits} <= {r.id for r in m.records}
        scores = [h.score for h in resp.hits]
        assert scores == sorted(scores, reverse=True)
    image = pb.ImageRef(image_bytes=m.image_path(stamp).read_bytes())
    tags = stub.Tag(pb.TagRequest(image=image, k=2), timeout=60)
    assert len(tags.tags) == 2 and all(0.0 <= t.score <= 1.0 for t in tags.tags)
    by_id = stub.Tag(pb.TagRequest(image=pb.ImageRef(image_id=stamp.id), k=2), timeout=60)
    assert [t.tag for t in by_id.tags] == [t.tag for t in tags.tags]
    caption = stub.Caption(pb.CaptionRequest(image=image, n_best=2, recommend=True), timeout=60)
    assert len(caption.captions) >= 1 and caption.captions[0].text and caption.recommended
