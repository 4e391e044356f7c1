"""The machine and the processes a benchmark measures (Linux ``/proc``): ``machine_info`` for the JSON result (CPUs,
load, library versions, commit, thread environment), free memory, the resident memory of a process and its peak
(resettable), its CPU seconds, and ``release_memory`` so RSS deltas count only what is still alive."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    from xlsearch.encode.onnx import available_cpus

    info: dict[str, Any] = {
        "cpus": available_cpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
        "mem_available_mb": mem_available() // (1 << 20),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    versions = {}
    for mod in ("numpy", "faiss", "onnxruntime", "grpc"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    info["versions"] = versions
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "OPENBLAS_", "MKL_"))}
    info["thread_env"] = env
    return info


def mem_available() -> int:
    """MemAvailable in bytes (0 when unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM (peak resident), VmSize of a process, in bytes. Raises OSError when it is gone."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                out[key] = int(value.split()[0]) * 1024
    return out


def rss_bytes() -> int:
    """This process's resident set in bytes (0 when unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return proc_status().get("VmRSS", 0)
    return 0


def reset_peak(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (``/proc/<pid>/clear_refs``); False when not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS deltas measure what is still alive."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def process_cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a process (Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
