"""Storage credentials never reach what Prefect stores: the old way (credentials in --storage-options or in a
flow parameter) is refused in one line, the safe ways (a Secret block loaded inside the tasks, or the AWS
variables s3fs reads) work against a loopback S3 server, and the secret is then found nowhere: not in the
Prefect database, its logs, the command's output, nor the shard folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs
from botocore.exceptions import NoCredentialsError
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.deployments import read_specs
from flows.local_server import LocalServer, local_prefect_server
from tests.conftest import Corpus
from tests.servers import S3Server, free_port, moto_s3_server
from w2v.cli.prepare import _watched
from w2v.errors import CredentialsInOptions
from w2v.shards.location import Location
from w2v.storage import credential_keys

W2V = [sys.executable, "-m", "w2v"]
ROOT = Path(__file__).resolve().parents[2]


def test_credential_keys_are_found_in_every_spelling_and_at_any_depth() -> None:
    options = {
        "endpoint_url": "http://127.0.0.1:9000",
        "key": "k",
        "Secret": "s",
        "anon": False,
        "sse_kms_key_id": "arn:…",  # names a key, holds none
        "client_kwargs": {"region_name": "eu-west-1", "aws_secret_access_key": "s", "aws_session_token": "t"},
        "config_kwargs": {"s3": {"addressing_style": "path", "password": "p"}},
    }
    assert credential_keys(options) == [
        "key",
        "Secret",
        "client_kwargs.aws_secret_access_key",
        "client_kwargs.aws_session_token",
        "config_kwargs.s3.password",
    ]
    assert credential_keys({"endpoint_url": "x", "profile": "dev", "client_kwargs": {"region_name": "x"}}) == []


@pytest.mark.parametrize(
    "command",
    [
        ["prepare", "s3://raw/", "--out", "{tmp}/shards"],
        ["upload", "{tmp}", "s3://bucket/run"],
    ],
)
def test_credentials_on_the_command_line_are_refused_in_one_line(command: list[str], tmp_path: Path) -> None:
    options = json.dumps({"endpoint_url": "http://127.0.0.1:1", "client_kwargs": {"aws_secret_access_key": "S"}})
    args = [a.format(tmp=tmp_path) for a in command] + ["--storage-options", options]
    result = subprocess.run([*W2V, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "client_kwargs.aws_secret_access_key" in lines[0], lines
    assert "AWS_ACCESS_KEY_ID" in lines[0] and "--credentials-block" in lines[0]


def test_a_prefect_yaml_with_credentials_in_its_parameters_is_refused(tmp_path: Path) -> None:
    assert all(not credential_keys(s.parameters.get("storage_options") or {}) for s in read_specs())
    document = (ROOT / "prefect.yaml").read_text()
    leaky = document.replace(
        'out: "{{ $W2V_DATA }}/shards"',
        'out: "{{ $W2V_DATA }}/shards"\n      storage_options: {endpoint_url: "http://minio:9000", key: w2v}',
    )
    assert leaky != document
    (tmp_path / "prefect.yaml").write_text(leaky)
    with pytest.raises(CredentialsInOptions, match=r"prefect.yaml: default: key would be stored"):
        read_specs(tmp_path / "prefect.yaml")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    home = tmp_path_factory.mktemp("prefect-server")
    with local_prefect_server(home, port=free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_s3_server() as server:
        yield server


def _client_environment(server: LocalServer, tmp_path: Path) -> dict[str, str]:
    """A client with no AWS credentials of its own: neither variables nor files nor instance metadata."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    environment.update(
        {
            "PREFECT_API_URL": server.api_url,
            "PREFECT_HOME": str(tmp_path / "client-home"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
            "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return environment


def _files_containing(secret: str, *roots: Path) -> list[str]:
    needle = secret.encode()
    return [str(p) for root in roots for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
@pytest.mark.network
def test_a_secret_block_reads_s3_and_the_secret_is_stored_nowhere(
    corpus: Corpus, s3: S3Server, prefect_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, secret = f"key-{uuid.uuid4().hex}", f"secret-{uuid.uuid4().hex}"
    fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint_url, key=key, secret=secret)
    fs.mkdir("raw")
    for name in ("speech.flac", "pcm16_16k.wav"):
        fs.put(str(corpus.path(name)), f"raw/corpus/{name}")
    environment = _client_environment(prefect_server, tmp_path)
    saved = subprocess.run(
        [*W2V, "credentials", "minio"],
        input=json.dumps({"key": key, "secret": secret}),
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert saved.returncode == 0, saved.stderr
    # Into the bucket too: the folder's Location travels between tasks, its credentials must not.
    endpoint = json.dumps({"endpoint_url": s3.endpoint_url})
    command = [*W2V, "prepare", "s3://raw/corpus/", "--out", "s3://raw/shards", "--storage-options", endpoint]
    command += ["--workers", "1", "--credentials-block", "minio"]
    run = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    # The client has no credentials of its own (without the block, listing fails: NoCredentialsError).
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    manifest = json.loads(fs.cat_file("raw/shards/manifest.json"))
    assert manifest["counts"]["utterances"] >= 2
    # The progress bar reads the bucket with the block's credentials, loaded in the command's own process.
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.setenv(name, environment[name])
    public = Location.of("s3://raw/shards", {"endpoint_url": s3.endpoint_url})
    with pytest.raises(NoCredentialsError):
        public.names()
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        watched = _watched(public, "minio")
    assert "manifest.json" in watched.names()

    # The other safe way: the variables s3fs reads, here with a second output folder.
    from_environment = {**environment, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    command = [*W2V, "prepare", "s3://raw/corpus/", "--out", str(tmp_path / "shards-env")]
    command += ["--storage-options", endpoint, "--workers", "1"]
    second = subprocess.run(command, env=from_environment, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]

    assert secret not in saved.stdout + saved.stderr + run.stdout + run.stderr + second.stdout + second.stderr
    server_home = prefect_server.log.parent
    assert _files_containing(secret, server_home, tmp_path) == []
    # The search can find what is there: the block's name and the endpoint are in the flow run's parameters.
    assert _files_containing("minio", server_home) and _files_containing(s3.endpoint_url, server_home)


@pytest.mark.slow
def test_the_server_refuses_a_deployment_run_given_credentials(prefect_server: LocalServer, tmp_path: Path) -> None:
    environment = _client_environment(prefect_server, tmp_path)
    register = (
        "from flows.deployments import read_specs, runner_deployment; "
        "spec = next(s for s in read_specs() if s.entrypoint.endswith('prepare_corpus')); "
        "runner_deployment(spec).apply()"
    )
    applied = subprocess.run(
        [sys.executable, "-c", register], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert applied.returncode == 0, applied.stderr[-2000:]
    secret = f"secret-{uuid.uuid4().hex}"
    parameters = json.dumps({"storage_options": {"endpoint_url": "http://x", "client_kwargs": {"secret": secret}}})
    prefect = Path(sys.executable).parent / "prefect"
    refused = subprocess.run(
        [str(prefect), "deployment", "run", "prepare-corpus/default", "--params", parameters],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0, refused.stdout
    assert "storage_options" in refused.stdout + refused.stderr
    assert _files_containing(secret, prefect_server.log.parent) == []
