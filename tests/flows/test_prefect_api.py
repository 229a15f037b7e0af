"""Reaching the Prefect API: a named server is checked before any work, a temporary one is started by w2v
with a generous limit; whatever fails is one line naming the URL or the variable to change."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.prefect_api import TIMEOUT_VARIABLE, prefect_api
from tests.servers import free_port

W2V = [sys.executable, "-m", "w2v"]
# The commands that talk to Prefect, with arguments that would otherwise do real work.
COMMANDS = {
    "prepare": ["prepare", "{tmp}/raw", "--out", "{tmp}/shards"],
    "pipeline": ["pipeline", "--shards", "{tmp}/shards", "--output", "{tmp}/runs"],
    "serve": ["serve", "--data", "{tmp}/data"],
}


def _w2v(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    environment.update({"PREFECT_HOME": str(tmp_path / "prefect"), **env})
    filled = [a.format(tmp=tmp_path) for a in args]
    # Each waits at most for one health check (10 s) or the start limit the test sets.
    return subprocess.run([*W2V, *filled], env=environment, capture_output=True, text=True, timeout=120)


def _lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unreachable_api_url_ends_the_command_in_one_line_naming_it(command: str, tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    url = f"http://127.0.0.1:{free_port()}/api"
    result = _w2v(COMMANDS[command], tmp_path, PREFECT_API_URL=url)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = _lines(result)
    assert len(lines) <= 3, lines
    assert url in lines[-1] and "not reachable" in lines[-1] and "w2v server" in lines[-1], lines
    assert not (tmp_path / "shards").exists() and not (tmp_path / "runs").exists()


def test_debug_log_level_adds_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    url = f"http://127.0.0.1:{free_port()}/api"
    result = _w2v(["--log-level", "debug", *COMMANDS["prepare"]], tmp_path, PREFECT_API_URL=url)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and url in _lines(result)[-1]


@pytest.fixture
def not_prefect() -> Iterator[str]:
    """A loopback HTTP server that answers 404 to everything: something, but not a Prefect API."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_that_is_not_a_prefect_api_is_named_as_such(tmp_path: Path, not_prefect: str) -> None:
    (tmp_path / "raw").mkdir()
    result = _w2v(COMMANDS["prepare"], tmp_path, PREFECT_API_URL=not_prefect)
    assert result.returncode == 2
    lines = _lines(result)
    assert len(lines) == 1 and not_prefect in lines[0] and "not as a Prefect API" in lines[0], lines


def test_temporary_server_slower_than_the_limit_fails_in_one_line_and_is_stopped(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    # Importing Prefect's server alone takes seconds, and a fresh PREFECT_HOME must create its database too.
    result = _w2v(COMMANDS["prepare"], tmp_path, **{TIMEOUT_VARIABLE: "1"})
    assert result.returncode == 2
    last = _lines(result)[-1]
    assert "did not answer" in last and TIMEOUT_VARIABLE in last and "w2v server" in last, last
    logs = list((tmp_path / "prefect").glob("temporary-server-*.log"))
    assert len(logs) == 1 and str(logs[0]) in last  # kept, and named
    port = logs[0].stem.rsplit("-", 1)[1]
    assert f"--port {port}" not in _processes()  # the server was stopped with the command


def test_a_bad_startup_limit_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    result = _w2v(COMMANDS["prepare"], tmp_path, **{TIMEOUT_VARIABLE: "0.5"})
    assert result.returncode == 2
    assert _lines(result) == [f"error: {TIMEOUT_VARIABLE}='0.5': expected a whole number of seconds, e.g. 300"]


def test_temporary_server_answers_and_is_gone_after_the_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with prefect_api() as api:
        assert api.temporary and api.first_start
        url = api.ready()
        assert os.environ["PREFECT_API_URL"] == url
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            assert response.status == 200
        process = api.process
    assert process is not None and process.poll() is not None
    assert "PREFECT_API_URL" not in os.environ
    assert not list((tmp_path / "prefect").glob("temporary-server-*.log"))  # a clean stop leaves no log
    with prefect_api() as again:
        assert not again.first_start  # the database now exists


def test_temporary_server_stops_when_its_command_is_killed(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    home = tmp_path / "prefect"
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    environment["PREFECT_HOME"] = str(home)
    args = [a.format(tmp=tmp_path) for a in COMMANDS["prepare"]]
    command = subprocess.Popen([*W2V, *args], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60  # the command spawns the server as soon as it has parsed its options
        while not (logs := list(home.glob("temporary-server-*.log"))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert logs, "no temporary server was started"
        port = logs[0].stem.rsplit("-", 1)[1]
        while f"--port {port}" not in _processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"--port {port}" in _processes()
    finally:
        command.kill()  # kill -9: no finally block, no atexit handler runs in the command
        command.wait()
    deadline = time.monotonic() + 30  # SIGTERM to the server; it shuts down in well under that
    while f"--port {port}" in _processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"--port {port}" not in _processes()


def _processes() -> str:
    return subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
