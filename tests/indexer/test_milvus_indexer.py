"""``xlsearch index --backend milvus``: the tiny Tux Paint manifest indexed into a Milvus Lite collection (a file in
tmp_path) holds what the FAISS folder of the same images holds, and a server on that collection answers searches as
the server on the FAISS folder does (same ranking and scores: both are exact)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from server_support import ServerThread, test_settings

from xlsearch.bundle.runtime import Bundle
from xlsearch.index.image_index import ImageIndex
from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc
from xlsearch_indexer.cli import main as index_main

pytestmark = pytest.mark.distributed
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

QUERIES = ["一只猫", "红色的花", "一辆汽车", "动物"]


def test_index_to_milvus_and_serve_it(
    tiny_bundle: Path, tiny_manifest: Path, tiny_index: Path, tmp_path: Path
) -> None:
    from xlsearch.index.milvus import MilvusIndex

    uri, out = str(tmp_path / "milvus.db"), tmp_path / "report"
    argv = [
        "--manifest",
        str(tiny_manifest),
        "--bundle",
        str(tiny_bundle),
        "--out",
        str(out),
        "--no-progress",
    ]
    argv += ["--backend", "milvus", "--milvus-uri", uri, "--milvus-collection", "tux", "--threads", "1"]
    assert index_main(argv) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["milvus"]["collection"] == "tux" and report["indexed"] == 160
    assert not list(
        tmp_path.glob(".report.work-*")
    )  # the checkpoint is cleared once the collection is complete

    bundle = Bundle(tiny_bundle, intra_op_threads=1)
    got, want = MilvusIndex.open(uri, "tux", bundle), ImageIndex.load(tiny_index, bundle)
    try:
        assert (got.count, got.caption_count) == (want.count, want.caption_count)
        assert got.factory == "milvus:FLAT" and got.exact and got.source_roots == want.source_roots
        for sid in (m.id for m in want.metadata(want.int_ids())):
            a, b = np.array([got.int_id(sid)]), np.array([want.int_id(sid)])
            assert got.metadata(a) == want.metadata(b), sid
            np.testing.assert_allclose(got.image_vectors(a), want.image_vectors(b), atol=1e-5)
            if want.metadata(b)[0].has_caption:
                np.testing.assert_allclose(got.caption_vectors(a), want.caption_vectors(b), atol=1e-5)
            fa, fb = got.image_features(a), want.image_features(b)
            assert (fa is None) == (fb is None) and (fa is None or np.allclose(fa, fb, atol=1e-3))
    finally:
        got.close()

    on_milvus = ServerThread(
        test_settings(bundle=tiny_bundle, index_backend="milvus", milvus_uri=uri, milvus_collection="tux")
    )
    on_faiss = ServerThread(test_settings(bundle=tiny_bundle, index=tiny_index))
    try:
        assert on_milvus.wait_ready(), on_milvus.server.slot.error
        assert on_faiss.wait_ready(), on_faiss.server.slot.error
        with on_milvus.channel() as cm, on_faiss.channel() as cf:
            milvus, faiss = pb_grpc.ImageSearchStub(cm), pb_grpc.ImageSearchStub(cf)
            assert milvus.GetStats(pb.GetStatsRequest(), timeout=30).images == 160
            for query in QUERIES:
                for mode in (pb.CL, pb.CM, pb.CLM):
                    request = pb.SearchRequest(query=query, top_k=10, mode=mode)
                    m, f = milvus.Search(request, timeout=60).hits, faiss.Search(request, timeout=60).hits
                    np.testing.assert_allclose([h.score for h in m], [h.score for h in f], atol=1e-4)
                    # equal scores may come in either order (stamps sharing a caption): compare id -> score
                    fs = {h.id: h.score for h in f}
                    for h in m:
                        if h.id not in fs:  # only at a tie with the last hit of the other list
                            assert h.score == pytest.approx(f[-1].score, abs=1e-4), (query, mode, h.id)
                        else:
                            assert h.score == pytest.approx(fs[h.id], abs=1e-4)
    finally:
        on_milvus.stop()
        on_faiss.stop()
