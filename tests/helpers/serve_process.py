"""``recsearch serve`` in a process of its own, as a user runs it: for the tests of the command
and for the load benchmark, which measures what users get."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers.ports import PortTaken, is_port_conflict

RECSEARCH = Path(sys.executable).parent / "recsearch"


class ServeProcess:
    """``recsearch serve MODEL_DIR --port PORT *options`` with ``env``, its output in ``log``."""

    def __init__(self, model_dir: Path | str, env: dict[str, str], log: Path, *options: str):
        self.model_dir, self.env, self.log, self.options = model_dir, env, log, options
        self.process: subprocess.Popen | None = None
        self.port: int | None = None  # once serving

    def start(self, port: int, timeout: float = 240) -> str:
        """Start on ``port`` and wait until it serves; returns its output so far. Raises
        ``PortTaken`` when the port was taken: ``helpers.ports.with_free_port(process.start)``
        tries free ports until one serves (then ``port``)."""
        with open(self.log, "w") as out:
            # a process group of its own, as a shell job gets: ``stop(whole_group=True)`` signals it
            self.process = subprocess.Popen([str(RECSEARCH), "serve", str(self.model_dir), "--port", str(port),
                                             *self.options], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            output = self.log.read_text()
            if "\ningress: " in output:  # printed once the application answers
                self.port = port
                return output
            if self.process.poll() is not None:
                if is_port_conflict(output):
                    raise PortTaken(output[-500:])
                raise RuntimeError(f"recsearch serve exited with {self.process.returncode}:\n{output[-3000:]}")
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"recsearch serve did not come up within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, whole_group: bool = False) -> int:
        """SIGTERM, as `kill` sends, or (``whole_group``) to the command and every process it
        started at once, as `timeout` and systemd's stop send; its exit status once it has shut
        down."""
        if whole_group:
            os.killpg(self.process.pid, signal.SIGTERM)
        else:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)
