"""A local Prefect server (SQLite under PREFECT_HOME) as a child process: started, waited for, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2v.errors import W2VError


@dataclass(frozen=True)
class LocalServer:
    api_url: str  # http://127.0.0.1:PORT/api
    ui_url: str
    pid: int
    log: Path

    @property
    def environment(self) -> dict[str, str]:
        """What a client process needs to talk to this server."""
        return {"PREFECT_API_URL": self.api_url}


def server_environment(home: Path, api_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_UI_API_URL": api_url,  # where the UI in the browser calls (default: port 4200)
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "true",
    }


@contextmanager
def local_prefect_server(
    home: Path, host: str = "127.0.0.1", port: int = 4200, start_timeout: float = 120.0
) -> Iterator[LocalServer]:
    """`prefect server start` on host:port with its database in `home`; stopped (its process group) on exit."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    prefect = Path(sys.executable).parent / "prefect"
    # With its services: the scheduler is what turns the nightly cron into flow runs.
    command = [str(prefect), "server", "start", "--host", host, "--port", str(port)]
    base = f"http://{host}:{port}"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=server_environment(home, f"{base}/api"),
            start_new_session=True,
        )
    server = LocalServer(f"{base}/api", base, process.pid, log)
    try:
        _wait_healthy(server, process, start_timeout)
        yield server
    finally:
        stop_process_group(process)


def _wait_healthy(server: LocalServer, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if process.poll() is not None:
            raise W2VError(f"the Prefect server exited with status {process.returncode}; see {server.log}")
        if time.monotonic() > deadline:
            raise W2VError(f"the Prefect server did not answer on {server.api_url} within {timeout:.0f} s")
        time.sleep(0.5)


def stop_process_group(process: subprocess.Popen[Any], grace_seconds: float = 20) -> None:
    """Stop a process started with start_new_session=True, and everything it started: SIGTERM, then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
