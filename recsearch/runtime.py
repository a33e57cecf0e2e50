"""Process-level set-up shared by training, sweeps and serving: device, threads, seeds."""

from __future__ import annotations

import ctypes
import os
import random

import numpy as np
import torch

from recsearch.errors import ConfigError


def parse_device(name: str) -> torch.device | None:
    """The device ``name`` means (None for ``auto``), without asking whether this machine has
    it: a sweep's driver may lack the GPUs its trials get."""
    if name == "auto":
        return None
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device: {name!r} is not a device (auto, cpu, cuda, cuda:1, ...): {err}") from None


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, otherwise the CPU; anything else is passed to torch."""
    device = parse_device(name)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} was asked for but CUDA is not available on this machine")
    return device


def available_cpus() -> int:
    """CPUs this process may use: Ray's per-trial allocation when inside a Ray worker, else the
    process's CPU affinity. Ray sets OMP_NUM_THREADS to the CPUs it granted the task/actor."""
    granted = os.environ.get("OMP_NUM_THREADS")
    if granted and granted.isdigit() and int(granted) > 0:
        return int(granted)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(cpus: int | None = None) -> int:
    """Size torch's intra-op pool, and numba's for the compiled kernels (``models.kernels``), to
    the CPUs we were given, so that two trials sharing a two-core machine do not each spin two
    busy threads. numba's count holds for the calling thread (the one that trains)."""
    from recsearch.models import kernels  # chooses numba's threading layer before its threads start

    cpus = max(1, int(cpus or available_cpus()))
    torch.set_num_threads(cpus)
    kernels.set_threads(cpus)
    return cpus


# mallopt's parameters (glibc's malloc.h) and glibc's own ceiling for its adaptive thresholds
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20


def keep_freed_memory() -> None:
    """Pin glibc's malloc thresholds at the ceiling its adaptive ones climb to (mmap 32 MiB, trim
    2x that). Below it, a training step's temporaries (a few MB, freed at the end of each step)
    could be handed back to the OS at every step and faulted in again at the next: the ml-100k
    BPR epoch then took 39,000 page faults and 0.12 s instead of 80 and 0.07 s, depending on which
    state the adaptive thresholds happened to settle in. A no-op where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
