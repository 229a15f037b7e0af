"""Hardening: random and mutated input to the decoder and the manifest reader gives the project's typed
errors only (never another exception, never a hang), and bad command-line values get one line naming the option."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from w2v.decode import decode
from w2v.errors import W2VError
from w2v.shards.manifest import Manifest, ShardEntry, manifest_from_json, read_manifest, write_manifest

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _valid_audio(format_: str) -> bytes:
    buffer = io.BytesIO()
    tone = (0.3 * np.sin(np.arange(8000) * 0.05)).astype(np.float32)
    sf.write(buffer, tone, 16000, format=format_, subtype="PCM_16")
    return buffer.getvalue()


WAV, FLAC = _valid_audio("WAV"), _valid_audio("FLAC")


def _mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """Valid bytes with a few bytes overwritten, a slice cut out, or the end cut off."""
    size = len(data)

    def flip(edits: list[tuple[int, int]]) -> bytes:
        out = bytearray(data)
        for position, value in edits:
            out[position % size] = value
        return bytes(out)

    edits = st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=16)
    cuts = st.tuples(st.integers(0, size), st.integers(0, size)).map(lambda c: data[: min(c)] + data[max(c) :])
    return st.one_of(edits.map(flip), st.integers(0, size).map(lambda n: data[:n]), cuts)


@pytest.mark.timeout(300)
@FUZZ
@given(st.one_of(st.binary(max_size=4096), _mutated(WAV), _mutated(FLAC)))
def test_the_decoder_returns_audio_or_a_typed_error(data: bytes) -> None:
    try:
        decoded = decode(io.BytesIO(data), "fuzzed.wav")
    except W2VError as error:
        assert str(error)  # a reason a person can read
        return
    assert decoded.samples.ndim == 2 and decoded.sample_rate > 0


def _valid_manifest_json(tmp: Path) -> dict[str, object]:
    manifest = Manifest(
        sample_rate=16000, generation=1, shards=(ShardEntry("b00-g00001-0000.arrow", 0, 3, 9.0, 10, "ab"),)
    )
    write_manifest(tmp, manifest)
    loaded: dict[str, object] = json.loads((tmp / "manifest.json").read_text())
    return loaded


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@pytest.mark.timeout(300)
@FUZZ
@given(key_path=st.lists(st.text(max_size=12), min_size=1, max_size=3), value=JSON_VALUES)
def test_the_manifest_reader_refuses_mutated_manifests_with_a_manifest_error(
    tmp_path_factory: pytest.TempPathFactory, key_path: list[str], value: object
) -> None:
    data = _valid_manifest_json(tmp_path_factory.mktemp("m"))
    node: object = data
    for key in key_path[:-1]:  # walk into the document where it has mappings, then replace one value
        if isinstance(node, dict) and node:
            node = node[sorted(node)[zlib.crc32(key.encode()) % len(node)]]
    if isinstance(node, dict) and node:
        node[sorted(node)[zlib.crc32(key_path[-1].encode()) % len(node)]] = value
    elif isinstance(node, list) and node:
        node[0] = value
    with contextlib.suppress(W2VError):  # a typed refusal is fine; anything else fails the test
        manifest_from_json(data, "fuzzed")


@pytest.mark.timeout(120)
@FUZZ
@given(st.binary(max_size=512))
def test_a_manifest_file_of_random_bytes_is_a_manifest_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    folder = tmp_path_factory.mktemp("m")
    (folder / "manifest.json").write_bytes(data)
    with pytest.raises(W2VError):
        read_manifest(folder)


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["prepare", "x", "--out", "y", "--workers", "many"], "--workers"),
        (["pretrain", "--shards", "x", "--output", "y", "--set", "nonsense"], "--set"),
        (["prepare", "x", "--out", "y", "--min-snr-db", "loud"], "--min-snr-db"),
        (
            ["finetune", "--task", "poetry", "--pretrained", "p", "--train", "t", "--valid", "v", "--output", "o"],
            "--task",
        ),
        (["--log-level", "chatty", "doctor"], "--log-level"),
        (["doctor", "--corpus", "/no/such/folder"], "--corpus"),
        (["doctor", ".", "--data-dir", "."], "--data-dir"),
        (["doctor", "--config", "configs/base.yaml"], "--config"),
        (["prepare", "x", "--out", "y", "--storage-options", "{endpoint: 1"], "--storage-options"),
        (["upload", "x", "s3://b/k", "--storage-options", "[1, 2]", "--endpoint-url", "http://h"], "--storage-options"),
    ],
)
def test_a_bad_command_line_value_gets_one_line_naming_the_option(argv: list[str], option: str) -> None:
    done = subprocess.run([sys.executable, "-m", "w2v", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip() and set(line.strip()) - set("─│╭╮╰╯ ")]
    assert any(option in line for line in lines), done.stderr
