"""ONNX Runtime sessions for serving (CPU, torch-free)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

__all__ = ["available_cpus", "make_session", "providers", "run"]


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity / container cpusets where the OS exposes them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def make_session(
    path: str | os.PathLike[str], intra_op_threads: int | None = None, spinning: bool = True
) -> ort.InferenceSession:
    """CPU session with all graph optimisations. `intra_op_threads` defaults to the available CPUs; ops run one at
    a time (inter-op 1). Pass `spinning=False` when other threads (e.g. image decoding) need the cores between runs."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_op_threads or available_cpus()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(Path(path)), sess_options=opts, providers=providers())


def providers() -> list[str]:
    """ONNX Runtime execution providers, in order: ``XLSEARCH_ONNX_PROVIDERS`` (comma-separated, e.g.
    ``CUDAExecutionProvider,CPUExecutionProvider``; a GPU worker of ``xlsearch index --ray --gpus-per-actor``
    sets it), those this onnxruntime build lacks dropped; default CPU only."""
    wanted = [p.strip() for p in os.environ.get("XLSEARCH_ONNX_PROVIDERS", "").split(",") if p.strip()]
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    return chosen or ["CPUExecutionProvider"]


def run(
    session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], output: str | None = None
) -> np.ndarray:
    """Run `session` and return one output (by name, default the first)."""
    names = [output] if output is not None else [session.get_outputs()[0].name]
    return session.run(names, dict(feeds))[0]
