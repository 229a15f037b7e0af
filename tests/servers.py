"""Real servers for tests, on 127.0.0.1 only, bounded in time, stopped by PID: moto's S3 server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flows.local_server import stop_process_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    @property
    def storage_options(self) -> dict[str, object]:
        return {"endpoint_url": self.endpoint_url, "key": "testing", "secret": "testing"}


@contextmanager
def moto_s3_server(start_timeout_seconds: float = 30.0, port: int | None = None) -> Iterator[S3Server]:
    """Start moto's standalone server on a free (or the given) loopback port; kill it (by PID) on exit."""
    port = port or free_port()
    moto = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_seconds
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {url}") from None
                time.sleep(0.2)
        yield S3Server(url)
    finally:
        stop_process_group(process, grace_seconds=10)


_DASK_CLUSTER = """
import sys, time
from distributed import LocalCluster
cluster = LocalCluster(n_workers=int(sys.argv[1]), threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=None)
print(cluster.scheduler_address, flush=True)
while True:
    time.sleep(3600)
"""


@contextmanager
def dask_cluster(workers: int = 2, start_timeout_seconds: float = 60.0) -> Iterator[str]:
    """A local Dask cluster of `workers` non-daemonic worker processes (as w2v needs them) in a child process
    group; yields the scheduler's tcp:// address and kills the group on exit."""
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    process = subprocess.Popen(
        [sys.executable, "-c", _DASK_CLUSTER, str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + start_timeout_seconds
        address = ""
        while not address.startswith("tcp://"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the local Dask cluster did not start")
            address = process.stdout.readline().strip()
        yield address
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
