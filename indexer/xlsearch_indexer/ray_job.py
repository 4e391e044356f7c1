"""``xlsearch index --ray``: the batch indexing job on Ray Data (the ``[distributed]`` extra), with the local job's
parts (docs/scaling.md "Distributed indexing").

- reader: the same ``Source`` (manifest or image folder); the items the checkpoint lacks become a Ray dataset of
  records (id, path, uri, captions, tags, fingerprint), and the distinct first captions the caption checkpoint
  lacks another one;
- mapper: ``map_batches`` over a pool of actors (``ImageMapper``, ``CaptionMapper``); each actor loads the bundle's
  ONNX sessions once and maps its batches with the local job's parts: ``ImageDecoder`` + ``encode_rows`` on
  ``xlsearch.encode.pipeline.map_images`` (skipped images keep their reason), ``BundleEncoder.encode_captions``.
  CPU or GPU: ``--gpus-per-actor`` reserves GPUs and sets ``XLSEARCH_ONNX_PROVIDERS`` in the actor (ONNX Runtime's
  CUDA provider, CPU as fallback);
- checkpoint: the driver writes the mapped rows as they stream back into the same per-chunk files the local job
  writes (``Checkpoint``, ``captions.CaptionStage``'s folder), so an interrupted job — Ray or local — resumes from
  whatever either wrote;
- writer: the local job's end (``job.finish_job``: report, FAISS folder or Milvus collection, checkpoint cleared).

Image files must be readable at the same path on every node (a shared file system or a mounted bucket).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.common.progress import progress as progress_bar
from xlsearch.common.timing import StageTimer
from xlsearch.encode.pipeline import Checkpoint, ResumeResult, Row, map_images
from xlsearch.encode.preprocess import ImageError
from xlsearch_indexer.captions import text_key
from xlsearch_indexer.encoder import BundleEncoder, ImageDecoder
from xlsearch_indexer.job import JobResult, encode_rows, fingerprint, finish_job
from xlsearch_indexer.sources import Source, SourceItem

GPU_PROVIDERS = "CUDAExecutionProvider,CPUExecutionProvider"


@dataclass
class RayOptions:
    """Where and how wide: ``address`` None starts a local Ray (``num_cpus`` CPUs) unless one is running."""

    address: str | None = None
    actors: int = 1  # image mapper actors (the caption mapper gets one more)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    num_cpus: int | None = None  # local Ray only


def _bundle(folder: str, threads: int, gpu: bool) -> Any:
    if gpu:
        os.environ["XLSEARCH_ONNX_PROVIDERS"] = GPU_PROVIDERS
    from xlsearch.bundle.runtime import Bundle

    return Bundle(folder, intra_op_threads=threads)


class ImageMapper:
    """A Ray Data actor: loads the bundle once, then maps batches of records to vectors, features, tags."""

    def __init__(
        self,
        bundle: str,
        threads: int,
        gpu: bool,
        max_image_bytes: int,
        predict_tags: bool,
        min_tag_score: float,
        workers: int,
        batch_size: int,
    ):
        b = _bundle(bundle, threads, gpu)
        self.decoder = ImageDecoder(b.preprocess_config, max_image_bytes)
        self.encoder = BundleEncoder(b, predict_tags=predict_tags, min_tag_score=min_tag_score)
        self.workers, self.batch_size = workers, batch_size
        self.timer = StageTimer()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [_item(batch, n) for n in range(len(batch["id"]))]
        rows = [
            row
            for _, row in map_images(
                items,
                self.decoder,
                encode_rows(self.encoder, self.timer),
                batch_size=self.batch_size,
                workers=self.workers,
                skip=(ImageError,),
                timer=self.timer,
            )
        ]
        out: dict[str, Any] = {"id": batch["id"], "fp": batch["fp"]}
        for name, dim in (("image", self.encoder.dim), ("feature", self.encoder.feature_dim)):
            if dim:
                values = [r.vectors.get(name) for r in rows]
                out[f"has_{name}"] = np.array([v is not None for v in values], bool)
                out[name] = np.stack([np.zeros(dim, np.float32) if v is None else v for v in values])
        out["extra"] = np.array([json.dumps(r.extra, ensure_ascii=False) for r in rows], dtype=object)
        out["reason"] = np.array([r.reason for r in rows], dtype=object)
        return out


class CaptionMapper:
    """A Ray Data actor: English captions -> CL vectors with the bundle's caption encoder (loaded once)."""

    def __init__(self, bundle: str, threads: int, gpu: bool):
        self.encoder = BundleEncoder(_bundle(bundle, threads, gpu), predict_tags=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        return {
            "key": np.array([text_key(t) for t in texts], dtype=object),
            "caption": self.encoder.encode_captions(texts),
        }


def _record(it: SourceItem, fp: str) -> dict[str, Any]:
    return {
        "id": it.id,
        "path": str(it.path),
        "uri": it.uri,
        "captions": json.dumps(list(it.captions), ensure_ascii=False),
        "tags": json.dumps(list(it.tags), ensure_ascii=False),
        "fp": fp,
    }


def _item(batch: dict[str, np.ndarray], n: int) -> SourceItem:
    return SourceItem(
        str(batch["id"][n]),
        Path(str(batch["path"][n])),
        str(batch["uri"][n]),
        tuple(json.loads(str(batch["captions"][n]))),
        tuple(json.loads(str(batch["tags"][n]))),
    )


def _rows(batch: dict[str, np.ndarray]) -> Iterator[tuple[str, str, Row]]:
    for n in range(len(batch["id"])):
        vectors: dict[str, np.ndarray | None] = {}
        for name in ("image", "feature"):
            if name in batch:
                vectors[name] = np.asarray(batch[name][n], np.float32) if batch[f"has_{name}"][n] else None
        reason = str(batch["reason"][n])
        yield (
            str(batch["id"][n]),
            str(batch["fp"][n]),
            Row(vectors, json.loads(str(batch["extra"][n])), reason),
        )


def init_ray(opts: RayOptions) -> Any:
    import ray

    if not ray.is_initialized():
        if opts.address:
            ray.init(address=opts.address, log_to_driver=False)
        else:
            ray.init(num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


def run_ray_job(
    source: Source,
    bundle_folder: str | os.PathLike[str],
    checkpoint: Checkpoint[SourceItem],
    writer: Any,
    opts: RayOptions,
    *,
    threads: int = 1,
    batch_size: int = 32,
    workers: int = 2,
    chunk_size: int = 512,
    max_image_bytes: int = 32 << 20,
    predict_tags: bool = True,
    min_tag_score: float = 0.3,
    progress: bool = True,
    timer: StageTimer | None = None,
    settings: dict[str, Any] | None = None,
) -> JobResult:
    """The job on Ray; the result (and the index written) is the local job's, up to float rounding."""
    if batch_size < 1 or workers < 1 or chunk_size < 1 or opts.actors < 1:
        raise ValueError("batch_size, workers, chunk_size and actors must be >= 1")
    timer = timer or StageTimer()
    t_start = time.perf_counter()
    ray = init_ray(opts)
    items = source.items
    keys = [(it.id, fingerprint(it)) for it in items]
    gpu = opts.gpus_per_actor > 0
    actor = {"num_cpus": opts.cpus_per_actor, "num_gpus": opts.gpus_per_actor or None}
    with timer("resume"):
        done = checkpoint.load()
        captions: Checkpoint[str] = Checkpoint(checkpoint.folder / "captions", {"caption": writer.key.cl_dim})
        vectors_by_key = {k: r.vectors["caption"] for (k, _), r in captions.load().items()}
    texts = list(dict.fromkeys(it.captions[0] for it in items if it.captions))
    todo_texts = [t for t in texts if text_key(t) not in vectors_by_key]
    todo = [_record(it, k[1]) for it, k in zip(items, keys, strict=True) if k not in done]
    with timer("map"):
        if todo_texts:
            ds = ray.data.from_items([{"text": t} for t in todo_texts])
            ds = ds.map_batches(
                CaptionMapper,
                fn_constructor_kwargs={"bundle": str(bundle_folder), "threads": threads, "gpu": gpu},
                batch_size=128,
                concurrency=1,
                batch_format="numpy",
                **actor,
            )
            with progress_bar(
                total=len(todo_texts), unit="caption", desc="captions", disable=not progress
            ) as bar:
                for batch in ds.iter_batches(batch_size=chunk_size, batch_format="numpy"):
                    with timer("checkpoint"):
                        captions.write(
                            [
                                (str(k), "", Row({"caption": v}))
                                for k, v in zip(batch["key"], batch["caption"], strict=True)
                            ]
                        )
                    bar.update(len(batch["key"]))
        if todo:
            ds = ray.data.from_items(
                todo, override_num_blocks=max(1, min(len(todo) // batch_size, 64 * opts.actors))
            )
            ds = ds.map_batches(
                ImageMapper,
                fn_constructor_kwargs={
                    "bundle": str(bundle_folder),
                    "threads": threads,
                    "gpu": gpu,
                    "max_image_bytes": max_image_bytes,
                    "predict_tags": predict_tags,
                    "min_tag_score": min_tag_score,
                    "workers": workers,
                    "batch_size": batch_size,
                },
                batch_size=batch_size,
                concurrency=opts.actors,
                batch_format="numpy",
                **actor,
            )
            with progress_bar(total=len(todo), unit="img", desc="images", disable=not progress) as bar:
                for batch in ds.iter_batches(batch_size=chunk_size, batch_format="numpy"):
                    with timer("checkpoint"):
                        checkpoint.write(list(_rows(batch)))
                    bar.update(len(batch["id"]))
    with timer("resume"):
        rows = checkpoint.load()
        vectors_by_key = {k: r.vectors["caption"] for (k, _), r in captions.load().items()}
    missing = [k for k in keys if k not in rows]
    if missing:
        raise RuntimeError(f"the Ray job returned no row for {len(missing)} images (first: {missing[0][0]})")
    result = ResumeResult([rows[k] for k in keys], len(items) - len(todo), len(todo))
    vectors = {t: vectors_by_key[text_key(t)] for t in texts}
    return finish_job(
        source, result, vectors, checkpoint, writer, timer, settings, t_start, batch_size, workers, chunk_size
    )
