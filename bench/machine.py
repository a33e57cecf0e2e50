"""The machine record every benchmark writes beside its figures: CPU, cores, memory, accelerator,
library versions and the date, so a result file says where it was measured."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def machine() -> dict:
    import ray
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(memory_kib / 2**20, 1),
            "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def one_line(host: dict) -> str:
    return (f"{host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB; {host['device']}; "
            f"torch {host['torch']}, ray {host['ray']}, Python {host['python']}; {host['date']}")
