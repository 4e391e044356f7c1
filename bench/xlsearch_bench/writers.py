"""Background write load for the gRPC load benchmark (``xlsearch loadbench grpc --with-writers N``).

N writer threads, each on its own channel, stream ``AddImages`` calls of ``images_per_call`` real images and then
delete what they added (so the index keeps its size from level to level), until stopped. What the searches measure
meanwhile is whether writes starve reads; what the writers measure is their own throughput.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["WriterLoad", "writer_images"]


def writer_images(manifest: str | None) -> list[Path]:
    """Real images for the write load: the manifest's files."""
    if not manifest:
        return []
    from xlsearch.data.manifest import read_manifest

    m = read_manifest(manifest)
    return [m.image_path(r) for r in m.records]


class WriterLoad:
    def __init__(
        self,
        target: str,
        images: Sequence[Path],
        writers: int,
        images_per_call: int,
        rpc_timeout: float = 120.0,
        tag: str = "w",
    ) -> None:
        if not images:
            raise ValueError("the write load needs images (give --manifest)")
        self.target, self.writers, self.per_call, self.rpc_timeout = (
            target,
            writers,
            images_per_call,
            rpc_timeout,
        )
        self._payloads = [p.read_bytes() for p in images[: max(images_per_call, 1)]]
        self._tag = tag
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._adds: list[float] = []  # seconds per successful AddImages call
        self._images = 0
        self._errors: dict[str, int] = {}
        self._t0 = 0.0
        self._seconds = 0.0

    def _requests(self, pb: Any, prefix: str) -> Iterator[Any]:
        for i in range(self.per_call):
            yield pb.AddImageRequest(image_bytes=self._payloads[i % len(self._payloads)], id=f"{prefix}-{i}")

    def _run(self, w: int) -> None:
        import grpc

        from xlsearch.v1 import search_pb2 as pb
        from xlsearch.v1 import search_pb2_grpc as pb_grpc

        with grpc.insecure_channel(self.target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            stub = pb_grpc.ImageSearchStub(ch)
            seq = 0
            while not self._stop.is_set():
                prefix = f"loadbench-{self._tag}{w}-{seq}"
                seq += 1
                t0 = time.perf_counter()
                try:
                    resp = stub.AddImages(self._requests(pb, prefix), timeout=self.rpc_timeout)
                    seconds = time.perf_counter() - t0
                    stub.DeleteImages(pb.DeleteImagesRequest(ids=list(resp.ids)), timeout=self.rpc_timeout)
                except grpc.RpcError as e:
                    with self._lock:
                        self._errors[e.code().name] = self._errors.get(e.code().name, 0) + 1
                    time.sleep(0.05)  # refused (e.g. the write queue is full): don't spin
                    continue
                with self._lock:
                    self._adds.append(seconds)
                    self._images += resp.added

    def start(self) -> None:
        self._stop.clear()
        self._t0 = time.perf_counter()
        self._threads = [
            threading.Thread(target=self._run, args=(w,), name=f"loadbench-writer-{w}", daemon=True)
            for w in range(self.writers)
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> dict[str, Any]:
        """Stop after the calls in flight; the writers' statistics over the time they ran."""
        self._stop.set()
        for t in self._threads:
            t.join()
        self._seconds = time.perf_counter() - self._t0
        with self._lock:
            return {
                "writers": self.writers,
                "images_per_call": self.per_call,
                "add_calls": len(self._adds),
                "images_added": self._images,
                "images_per_second": self._images / self._seconds if self._seconds > 0 else 0.0,
                "add_seconds": list(self._adds),
                "errors": dict(self._errors),
            }
