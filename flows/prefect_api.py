"""The Prefect API a command's flow runs talk to: the server PREFECT_API_URL names, checked before any work,
or, with none named, a temporary local server that w2v starts itself.

Why not Prefect's own temporary server: it starts inside the first flow call (after progress output has
begun), gives up after 20 s, and fails in a traceback of dozens of lines. Its start costs ~4 s of Python
imports plus, on a fresh PREFECT_HOME, ~6 s of database migrations (measured on an idle 2-core machine);
four busy processes beside it make that 30 s and more. Here the server process is spawned before the
command's own imports (~3 s, which then run beside it), waited for up to a generous limit that the user's
PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS overrides, and any failure is one line saying what to do.
The client never imports Prefect's server module, which alone costs ~3.5 s of CPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flows.local_server import stop_process_group
from w2v.errors import W2VError

TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# A first start on a fresh PREFECT_HOME with four busy processes on two cores took ~35 s; 180 s leaves room.
DEFAULT_TIMEOUT_SECONDS = 180.0
CHECK_TIMEOUT_SECONDS = 10.0
PORT_IN_USE = 3  # uvicorn's exit status when its port was taken between our choice and its bind
REMEDY = "start a server (w2v server) and export PREFECT_API_URL, or fix or unset PREFECT_API_URL"


class PrefectUnavailable(W2VError):
    """The Prefect API cannot be reached or started; the message says which URL and what to do."""


def startup_timeout_seconds() -> float:
    """The user's PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, else DEFAULT_TIMEOUT_SECONDS.

    Raises PrefectUnavailable when the variable is not a positive whole number (Prefect itself would fail
    on anything else, in a traceback)."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if not text:
        return DEFAULT_TIMEOUT_SECONDS
    if not text.strip().isdigit() or int(text) <= 0:
        raise PrefectUnavailable(f"{TIMEOUT_VARIABLE}={text!r}: expected a whole number of seconds, e.g. 300")
    return float(int(text))


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


@dataclass
class PrefectApi:
    """A Prefect API on its way up: `ready()` waits for it (or checks it) and returns its URL."""

    url: str
    process: subprocess.Popen[bytes] | None = None  # the temporary server, when w2v started one
    log: Path | None = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    first_start: bool = False  # a temporary server that must create its database first (~6 s idle, 30+ s busy)
    started: float = field(default_factory=time.monotonic)
    answered: bool = False
    _settings: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def temporary(self) -> bool:
        return self.process is not None

    def ready(self) -> str:
        """Wait for the temporary server, or check the named one; returns the API URL.

        Raises PrefectUnavailable (one line: the URL, what failed, what to do)."""
        if self.process is None:
            _check_reachable(self.url)
        else:
            self._wait_temporary()
        self.answered = True
        self._use_in_this_process()
        return self.url

    def _wait_temporary(self) -> None:
        assert self.process is not None and self.log is not None
        deadline = self.started + self.timeout
        while True:
            if _healthy(self.url, timeout=2.0):
                return
            status = self.process.poll()
            if status == PORT_IN_USE:
                self._respawn()
                continue
            if status is not None:
                raise PrefectUnavailable(
                    f"Prefect's temporary server exited with status {status} before answering "
                    f"({_last_line(self.log)}; log {self.log}); {REMEDY}"
                )
            if time.monotonic() > deadline:
                raise PrefectUnavailable(
                    f"Prefect's temporary server did not answer on {self.url} within {self.timeout:.0f} s "
                    f"(PREFECT_HOME {prefect_home()}; log {self.log}): raise {TIMEOUT_VARIABLE}, "
                    f"or {REMEDY}"
                )
            time.sleep(0.25)

    def _respawn(self) -> None:
        self.process, self.url, self.log = _spawn_temporary_server()
        os.environ["PREFECT_API_URL"] = self.url

    def _use_in_this_process(self) -> None:
        # Prefect reads its settings once, when first imported; a command that imported it before the URL was
        # set (tests calling the CLI in one process) gets the URL through a settings context instead.
        if self.temporary and "prefect.settings" in sys.modules:
            from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

            updates = {PREFECT_API_URL: self.url, PREFECT_UI_URL: ""}
            self._settings.enter_context(temporary_settings(updates=updates))

    def close(self) -> None:
        self._settings.close()
        if self.process is not None:
            _drain_prefect_clients()  # logs and events still queued go now, while the server is there
            crashed = self.process.poll() is not None
            stop_process_group(self.process, grace_seconds=10)
            if self.answered and not crashed and self.log is not None:
                self.log.unlink(missing_ok=True)  # kept when the server failed: an error may name it


@contextlib.contextmanager
def prefect_api() -> Iterator[PrefectApi]:
    """The API this command's flows use. Enter it before the heavy imports, call `ready()` before the first
    flow; a temporary server is stopped on exit. Raises PrefectUnavailable for a bad timeout variable."""
    named = os.environ.get("PREFECT_API_URL")
    if named:
        api = PrefectApi(named.rstrip("/"))
        yield api
        return
    timeout = startup_timeout_seconds()
    first_start = _database_is_new()
    process, url, log = _spawn_temporary_server()
    api = PrefectApi(url, process, log, timeout, first_start=first_start)
    # Before Prefect is imported here, and for child processes. No UI runs beside a temporary server, so no
    # "View at" links to one.
    saved = {name: os.environ.get(name) for name in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    os.environ.update({"PREFECT_API_URL": url, "PREFECT_UI_URL": ""})
    try:
        yield api
    finally:
        api.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _spawn_temporary_server() -> tuple[subprocess.Popen[bytes], str, Path]:
    """Prefect's API app under uvicorn on a free loopback port, as Prefect's own temporary server runs it:
    no UI, only the services a temporary server needs (PREFECT__SERVER_EPHEMERAL)."""
    port = _free_port()
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"temporary-server-{port}.log"
    command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    environment = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1"}
    environment.pop("PREFECT_API_URL", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
            preexec_fn=_stop_with_parent,
        )
    return process, f"http://127.0.0.1:{port}/api", log


def _database_is_new() -> bool:
    """Whether Prefect's default SQLite database (PREFECT_HOME/prefect.db) is yet to be created."""
    if os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or os.environ.get(
        "PREFECT_SERVER_DATABASE_CONNECTION_URL"
    ):
        return False
    return not (prefect_home() / "prefect.db").exists()


def _drain_prefect_clients(timeout_seconds: float = 10.0) -> None:
    """Send what Prefect's background workers still hold (flow-run logs, events) before the server goes;
    left for interpreter exit, they would retry against a stopped server for over a minute."""
    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=timeout_seconds)
    if "prefect.events.worker" in sys.modules:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=timeout_seconds)


def _stop_with_parent() -> None:
    """In the child, before exec: on Linux, SIGTERM when the command that started it dies, even by kill -9
    (a server left behind would hold its port and PREFECT_HOME's database)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _check_reachable(url: str) -> None:
    """Raises PrefectUnavailable unless `url`/health answers as a Prefect API does."""
    request = urllib.request.Request(f"{url}/health")
    if key := os.environ.get("PREFECT_API_KEY"):
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=CHECK_TIMEOUT_SECONDS):
            return
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise PrefectUnavailable(
                f"Prefect API {url} refused this client (HTTP {error.code}): check PREFECT_API_KEY"
            ) from None
        raise PrefectUnavailable(
            f"{url} answers, but not as a Prefect API (HTTP {error.code} on /health): PREFECT_API_URL should be "
            "the API's address, e.g. http://127.0.0.1:4200/api"
        ) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise PrefectUnavailable(f"Prefect API {url} is not reachable ({reason}): {REMEDY}") from None


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip()[:300] if lines else "nothing logged"
