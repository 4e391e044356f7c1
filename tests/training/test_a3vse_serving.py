"""An A3VSE bundle through the unchanged serving path: tiny A3VSE trained on real Tux Paint stamps -> bundle ->
`xlsearch index` -> a real gRPC server -> Search, with the served scores checked against the bundle's encoders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from server_support import ServerThread, test_settings  # noqa: E402

from xlsearch.bundle.manifest import read_bundle_manifest
from xlsearch.bundle.runtime import Bundle  # noqa: E402
from xlsearch.data.datasets.tuxpaint import convert_tuxpaint  # noqa: E402
from xlsearch.data.manifest import read_manifest  # noqa: E402
from xlsearch.encode.preprocess import load_image  # noqa: E402
from xlsearch.v1 import search_pb2 as pb  # noqa: E402
from xlsearch.v1 import search_pb2_grpc as pb_grpc  # noqa: E402


@pytest.fixture(scope="module")
def a3vse_bundle(tuxpaint_subset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(manifest folder, bundle folder): a one-epoch A3VSE on the session's real stamp subset."""
    from xlsearch.encode.text import tokenizer_for
    from xlsearch_training.a3vse.bundle_writer import write_a3vse_bundle
    from xlsearch_training.a3vse.config import A3VSETrainConfig
    from xlsearch_training.a3vse.regions import build_region_extractor, extract_regions
    from xlsearch_training.a3vse.train import (
        Annotated,
        Queries,
        TrainedA3VSE,
        train_a3vse,
        train_text_into,
    )

    root = tmp_path_factory.mktemp("a3vse-serving")
    data = root / "data"
    convert_tuxpaint(data, stamps_root=tuxpaint_subset.root, seed=0, progress=False)
    manifest = read_manifest(data)
    extractor = build_region_extractor({"kind": "efficientnet_lite0"})
    store = extract_regions(manifest, extractor, root / "regions", progress=False)
    index = store.index()
    records = [r for r in manifest.records if r.id in index]
    cfg = A3VSETrainConfig(
        hidden=16, heads=2, context_dim=8, word_dim=8, disc_hidden=8, epochs=1, steps_per_epoch=2, en_epochs=1
    )
    text = {}
    visual = None
    for lang in ("zh", "en"):
        tok = tokenizer_for(lang)
        ann = Annotated(
            np.array([index[r.id] for r in records]), [[tok.tokenize(getattr(r, lang)[0])] for r in records]
        )
        val = Queries([s[0] for s in ann.sentences], ann.rows, np.arange(len(records)))
        if visual is None:
            model, text[lang] = train_a3vse(cfg, store, ann, None, val, progress=False)
            visual = model.visual
        else:
            text[lang] = train_text_into(cfg, visual, store, ann, None, val, progress=False)
    trained = TrainedA3VSE(model.cfg, visual, text)
    bundle = root / "bundle"
    write_a3vse_bundle(
        bundle,
        extractor,
        trained,
        {"kind": "efficientnet_lite0"},
        cfg,
        None,
        {"alpha": 0.3, "cl_space": "visual"},
    )
    return data, bundle


def test_a3vse_bundle_indexes_and_serves_unchanged(a3vse_bundle, tmp_path):
    from xlsearch_indexer.cli import main as index_main

    data, bundle_dir = a3vse_bundle
    manifest = read_bundle_manifest(bundle_dir)
    assert manifest["model_family"] == "a3vse" and manifest["dim"] == 32
    index = tmp_path / "index"
    assert (
        index_main(
            ["--manifest", str(data), "--bundle", str(bundle_dir), "--out", str(index), "--no-progress"]
        )
        == 0
    )

    records = read_manifest(data).records
    bundle = Bundle(bundle_dir)
    server = ServerThread(test_settings(bundle=bundle_dir, index=index))
    try:
        assert server.wait_ready(), server.server.slot.error
        with server.channel() as channel:
            stub = pb_grpc.ImageSearchStub(channel)
            query = records[0].zh[0]
            for mode in (pb.CM, pb.CLM):
                resp = stub.Search(pb.SearchRequest(query=query, top_k=len(records), mode=mode), timeout=60)
                assert len(resp.hits) == len(records)
                scores = [h.score for h in resp.hits]
                assert scores == sorted(scores, reverse=True)
            # CM scores are the A3VSE zh text embedding against the A3VSE image embedding of each indexed image
            q = bundle.encode_texts([query], "zh")[0]
            by_id = {r.id: r for r in records}
            cm = stub.Search(pb.SearchRequest(query=query, top_k=3, mode=pb.CM), timeout=60)
            for hit in cm.hits:
                v = bundle.encode_images([load_image(data / by_id[hit.id].image)])[0]
                assert hit.cm_score == pytest.approx(float(q @ v), abs=1e-4)
            assert resp.alpha == pytest.approx(0.3)
    finally:
        server.stop()
