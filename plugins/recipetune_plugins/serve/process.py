"""``recipe serve`` in a subprocess on a free port of 127.0.0.1: for tests, benchmarks and scripts.

    with ServerProcess(gguf_path, "--threads", "2") as server:
        httpx.get(server.url + "/v1/models")
    # stopped with SIGTERM on leaving; server.returncode and server.output tell how it ended
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

LISTENING = re.compile(r"recipe serve: listening on (http://\S+)")


class ServerProcess:
    """A ``recipe serve MODEL --port 0 ARGS`` process; ``url`` once it listens."""

    def __init__(self, model: str | Path, *args: str, env: dict[str, str] | None = None, start_timeout: float = 120):
        self.command = [sys.executable, "-m", "recipetune", "serve", str(model), "--port", "0", *args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.start_timeout = start_timeout
        self.url: str | None = None
        self.lines: list[str] = []
        self.returncode: int | None = None
        self._listening = threading.Event()
        self.proc: subprocess.Popen | None = None

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def start(self) -> "ServerProcess":
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while not self._listening.wait(0.1):
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader take the last lines
                raise RuntimeError(f"recipe serve exited with {self.proc.returncode}:\n{self.output}")
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise RuntimeError(f"recipe serve did not listen within {self.start_timeout} s:\n{self.output}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.url = match.group(1)
                self._listening.set()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and wait; returns the exit status (SIGKILL after ``timeout`` s, then a negative status)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        return self.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
