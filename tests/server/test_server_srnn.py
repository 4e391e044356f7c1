"""Tag and Caption over a real gRPC server whose bundle's tagger and captioner are S-CNN-RNN components (label
sequences with an end token; concepts -> LSTM captions), trained on the tiny Tux Paint manifest by the real trainers
and attached with `attach_component`; the RPCs are the same as for the Cascading MLP and Show and Tell. Also a
multi-scale tagger (Niu et al.) on the bundle's [feature ; stages] vectors."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from server_support import ServerThread, serve_annotated, small_test_stamps

from xlsearch.bundle.runtime import Bundle
from xlsearch.bundle.sequence_tagger import SequenceTagger
from xlsearch.data.manifest import read_manifest
from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc

TAGGER = {"hidden": 64, "lstm": 32, "word_dim": 16, "concept_epochs": 15, "rnn_epochs": 15, "joint_epochs": 5,
          "concept_lr": 0.003, "rnn_lr": 0.005, "user_tags": True, "vocab": {"zh_min_count": 2}}  # fmt: skip
CAPTIONER = {
    "hidden": 64,
    "lstm": 32,
    "word_dim": 16,
    "concept_epochs": 5,
    "rnn_epochs": 3,
    "joint_epochs": 2,
}


@pytest.fixture(scope="module")
def srnn_bundle(tiny_run, tiny_bundle: Path, tiny_features, tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from xlsearch.bundle.components import attach_component
    from xlsearch_training.captioning.baseline import training_pool
    from xlsearch_training.captioning.export import write_captioner
    from xlsearch_training.srnn.caption_experiment import sentences_of
    from xlsearch_training.srnn.caption_train import train_srnn_captioner
    from xlsearch_training.srnn.config import SRNNCaptionerConfig, SRNNTaggerConfig
    from xlsearch_training.srnn.tag_component import write_sequence_tagger
    from xlsearch_training.srnn.tag_train import fit_sequence_tagger

    root = tmp_path_factory.mktemp("srnn")
    manifest = read_manifest(tiny_run.data)
    feats = tiny_features.by_id
    tagger = fit_sequence_tagger(manifest, feats, SRNNTaggerConfig.from_dict(TAGGER), seed=0)
    tagger_dir = write_sequence_tagger(tagger, root / "tagger", tiny_features.input_feature)
    cfg = SRNNCaptionerConfig.from_dict(CAPTIONER)
    captioner, info = train_srnn_captioner(sentences_of(manifest, feats), manifest, cfg, seed=0)
    test = [r.id for r in manifest.split("test")][:8]
    write_captioner(
        captioner, root / "captioner", cfg, tiny_features.input_feature, training_pool(manifest), info,
        np.stack([feats[i] for i in test]),
    )  # fmt: skip
    bundle = root / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    attach_component(bundle, tagger_dir)
    attach_component(bundle, root / "captioner")
    return bundle


@pytest.fixture(scope="module")
def served(tiny_run, srnn_bundle: Path, tmp_path_factory) -> Iterator[ServerThread]:
    from xlsearch_indexer.cli import main as index_main

    index = tmp_path_factory.mktemp("srnn-index") / "index"
    argv = ["--manifest", str(tiny_run.data), "--bundle", str(srnn_bundle), "--out", str(index)]
    assert index_main([*argv, "--min-tag-score", "0", "--no-progress"]) == 0
    yield from serve_annotated(srnn_bundle, index)


@pytest.fixture(scope="module")
def stub(served: ServerThread) -> Iterator[pb_grpc.ImageSearchStub]:
    with served.channel() as channel:
        yield pb_grpc.ImageSearchStub(channel)


@pytest.fixture(scope="module")
def stamps(tiny_manifest: Path) -> list[tuple[str, Path]]:
    """(id, file) of indexed test-split stamps small enough for the test server's image limit."""
    return small_test_stamps(tiny_manifest)


def by_bytes(path: Path) -> pb.ImageRef:
    return pb.ImageRef(image_bytes=path.read_bytes())


def test_tag_serves_the_label_sequence(stub, srnn_bundle, stamps):
    bundle = Bundle(srnn_bundle)
    tagger = bundle.tagger
    assert isinstance(tagger, SequenceTagger)
    vocab = set(tagger.vocabulary)
    for image_id, path in stamps:
        resp = stub.Tag(pb.TagRequest(image=by_bytes(path)), timeout=60)
        tags = [t.tag for t in resp.tags]
        assert 1 <= len(tags) <= tagger.max_labels and len(set(tags)) == len(tags) and set(tags) <= vocab
        scores = [t.score for t in resp.tags]
        assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
        # exactly what the component decodes for this image's bundle features, in the same order
        _, feat = bundle.encode_images_with_features([Image.open(path).convert("RGB")])
        assert tags == [t.tag for t in tagger.predict(feat)[0]]
        by_id = stub.Tag(pb.TagRequest(image=pb.ImageRef(image_id=image_id)), timeout=60)
        assert [t.tag for t in by_id.tags] == tags
    fixed = stub.Tag(pb.TagRequest(image=by_bytes(stamps[0][1]), k=3), timeout=60)
    assert len(fixed.tags) == 3


def test_tag_with_user_tags_and_bad_requests(stub, srnn_bundle, stamps):
    known = Bundle(srnn_bundle).tagger.vocabulary[0]
    resp = stub.Tag(pb.TagRequest(image=by_bytes(stamps[1][1]), k=4, user_tags=[known]), timeout=60)
    assert len(resp.tags) == 4
    for request in (
        pb.TagRequest(image=by_bytes(stamps[1][1]), user_tags=["没有这个标签"]),
        pb.TagRequest(image=pb.ImageRef(image_id="x"), k=0),
    ):
        with pytest.raises(grpc.RpcError) as info:
            stub.Tag(request, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_caption_serves_the_s_cnn_rnn(stub, srnn_bundle, stamps):
    assert Bundle(srnn_bundle).manifest.captioner["concepts"]["lang"] == "zh"
    resp = stub.Caption(pb.CaptionRequest(image=by_bytes(stamps[0][1]), n_best=3, recommend=True), timeout=60)
    assert len(resp.captions) == 3 and all(c.score <= 0.0 for c in resp.captions)
    assert [c.score for c in resp.captions] == sorted((c.score for c in resp.captions), reverse=True)
    assert len(resp.recommended) == 5
    image_id, path = stamps[2]
    a = stub.Caption(pb.CaptionRequest(image=by_bytes(path), n_best=2), timeout=60)
    b = stub.Caption(pb.CaptionRequest(image=pb.ImageRef(image_id=image_id), n_best=2), timeout=60)
    assert [c.text for c in a.captions] == [c.text for c in b.captions]


def test_a_multiscale_tagger_reads_the_bundles_stages(tiny_run, tiny_bundle, tmp_path):
    pytest.importorskip("torch")
    from xlsearch.bundle.components import attach_component
    from xlsearch_training.multiscale.component import write_multiscale_tagger
    from xlsearch_training.multiscale.config import MultiScaleConfig
    from xlsearch_training.multiscale.features import multiscale_vectors
    from xlsearch_training.multiscale.train import fit_multiscale

    manifest = read_manifest(tiny_run.data)
    vectors, feature = multiscale_vectors(
        manifest, tmp_path / "runs", {"kind": "efficientnet_lite0"}, "center"
    )
    epochs = {f"{s}_epochs": 5 for s in ("cnn", "fusion", "text", "classifier", "lqp")}
    cfg = MultiScaleConfig.from_dict({"hidden": 32, "lqp_hidden": [16], "textual": True, **epochs})
    trained = fit_multiscale(manifest, vectors, cfg, 0, feature["dim"], feature["multiscale"]["dims"])
    folder = write_multiscale_tagger(trained, tmp_path / "ms", feature)
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    attach_component(bundle_dir, folder)
    bundle = Bundle(bundle_dir)
    records = manifest.split("test")[:3]
    _, feat = bundle.encode_images_with_features(
        [Image.open(manifest.image_path(r)).convert("RGB") for r in records]
    )
    served, _, _ = bundle.tagger.scores(feat)
    expected, _ = trained.scores(np.stack([vectors[r.id] for r in records]))
    np.testing.assert_allclose(served, expected, atol=1e-4)
