"""docker/: what can be checked without a Docker engine (there is none here): the compose file is wired
together, holds no password (they come from docker/.env, which git ignores), the image copies files that
exist and installs the versions CI tests, and the S3 settings the worker gets reach an S3 server through s3fs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import s3fs
import yaml

from flows.deployments import read_specs
from tests.servers import moto_s3_server

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"


ENV_EXAMPLE = ROOT / "docker" / ".env.example"
# What a user writes into docker/.env.
USER_ENV = {"W2V_POSTGRES_PASSWORD": "pg-Chosen-By-User", "W2V_MINIO_PASSWORD": "minio-Chosen-By-User"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def interpolate(text: str, environment: dict[str, str]) -> str:
    """Compose's interpolation of ${NAME}, ${NAME:-default} and ${NAME:?error}; $$ is a literal $."""

    def value(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if environment.get(name):
            return environment[name]
        if kind == "-":
            return rest
        raise KeyError(f"{name}: {rest}")

    return _VARIABLE.sub(value, text).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), USER_ENV))
    return loaded


def test_compose_holds_no_password_and_refuses_to_start_without_docker_env() -> None:
    text = COMPOSE.read_text()
    for password in ("prefect-db-password", "w2v-secret-key"):  # what it once held
        assert password not in text
    required = {m.group(1): m.group(3) for m in _VARIABLE.finditer(text) if m.group(2) == "?"}
    assert set(required) == set(USER_ENV)
    assert all("docker/.env" in hint for hint in required.values())  # the one-line hint says what to do
    with pytest.raises(KeyError, match="W2V_POSTGRES_PASSWORD"):
        interpolate(text, {})
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line)
    assert set(required) <= set(example) and not any(example[name] for name in required)
    ignored = subprocess.run(["git", "check-ignore", "docker/.env"], cwd=ROOT, capture_output=True, text=True)
    assert ignored.returncode == 0  # a docker/.env with real passwords is never committed
    assert "**/.env" in (ROOT / ".dockerignore").read_text().split()  # nor copied into the image
    # mc gets the keys from its environment: a command line is visible to every process of the host.
    assert "W2V_MINIO_PASSWORD" not in str(yaml.safe_load(text)["services"]["minio-setup"]["command"])


def test_compose_services_depend_on_services_and_volumes_that_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "minio", "minio-setup", "worker"}
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"
    assert services["worker"]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert (COMPOSE.parent / services["worker"]["build"]["context"] / "docker" / "Dockerfile").is_file()


def test_the_server_uses_the_postgres_service_with_its_credentials(compose: dict[str, Any]) -> None:
    services = compose["services"]
    database = services["postgres"]["environment"]
    url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    expected = (
        f"postgresql+asyncpg://{database['POSTGRES_USER']}:{database['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{database['POSTGRES_DB']}"
    )
    assert url == expected
    assert services["prefect-server"]["image"] == f"prefecthq/prefect:{_pinned('prefect')}-python3.11"


def test_the_worker_reaches_the_server_and_minio_and_serves_this_projects_pool(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]["environment"]
    server_port = services["prefect-server"]["command"][-1]
    assert worker["PREFECT_API_URL"] == f"http://prefect-server:{server_port}/api"
    minio = services["minio"]["environment"]
    assert worker["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert (worker["AWS_ACCESS_KEY_ID"], worker["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    setup = services["minio-setup"]
    assert (setup["environment"]["MINIO_ROOT_USER"], setup["environment"]["MINIO_ROOT_PASSWORD"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert '"$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"' in setup["command"][0]
    bucket = worker["W2V_UPLOAD_TO"].removeprefix("s3://").split("/")[0]
    assert f"store/{bucket}" in setup["command"][0]
    command = " ".join(services["worker"]["command"])
    pools = {m.group(1) for m in re.finditer(r"--pool (\S+)", command)}
    yaml_pools = {d["work_pool"]["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert pools == yaml_pools == {"w2v"}
    # The deployments render with the worker's environment (nothing left unset).
    variables = {**worker, "W2V_PROJECT_DIR": "/opt/w2v"}
    nightly = {s.name: s for s in read_specs(variables=variables)}["nightly"]
    assert nightly.parameters["upload_to"] == "s3://w2v/nightly"


def test_the_image_copies_files_that_exist_and_pins_what_ci_tests() -> None:
    text = DOCKERFILE.read_text()
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert f"torch=={_pinned('torch')}" in text
    assert "requirements.lock" in text and "--python 3.11" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_the_workers_s3_settings_reach_an_s3_server_through_s3fs(monkeypatch: pytest.MonkeyPatch) -> None:
    """s3fs (through botocore) reads AWS_ENDPOINT_URL: the worker needs no endpoint in any parameter."""
    with moto_s3_server() as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "w2v")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", USER_ENV["W2V_MINIO_PASSWORD"])
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("w2v")
        fs.pipe("w2v/nightly/hello.txt", b"hi")
        assert fs.cat("w2v/nightly/hello.txt") == b"hi"


def _pinned(package: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.startswith(f"{package}=="):
            return line.split("==")[1]
    raise AssertionError(f"{package} is not in requirements.lock")
