"""What every benchmark writes beside its figures: the machine record (CPU, cores, memory,
accelerator, library versions, date), so a result file says where it was measured, and the
JSON + Markdown pair of a table of results."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

from recsearch.output import markdown_table, write_json


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


def write_results(stem: str | Path, rows: list[dict], columns: list[str], description: str, *,
                  shown: list[dict] | None = None, notes: str = "", host: dict | None = None, **extra) -> None:
    """``<stem>.json`` (machine record, ``extra``, rows) and ``<stem>.md`` (``description``, the
    machine, the benchmark's command, a table of ``columns`` of ``shown``, the rows as
    formatted for reading, by default the rows themselves, then ``notes``). ``host``: the
    machine record, when the benchmark adds to it."""
    host = host or machine()
    write_json(f"{stem}.json", {"machine": host, **extra, "rows": rows})
    command = " ".join([".venv/bin/python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    Path(f"{stem}.md").write_text(f"{description}; {one_line(host)}; command: `{command}`\n\n"
                                  + markdown_table(shown or rows, columns) + (f"\n{notes}\n" if notes else ""))
    print(f"wrote {stem}.json and .md")
