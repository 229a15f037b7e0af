#!/usr/bin/env bash
# `make demo`: build a small corpus (speech from espeak-ng in many formats, plus broken files), run the
# prepare-corpus flow on Prefect's embedded server into a local folder, then verify and describe the shards.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
rm -rf demo
"$BIN/python" -m tests.corpus demo/raw
"$BIN/w2v" prepare demo/raw --out demo/shards --metadata demo/raw/metadata.jsonl --workers 2
echo "--- second run over the same corpus: nothing new to decode"
"$BIN/w2v" prepare demo/raw --out demo/shards --metadata demo/raw/metadata.jsonl --workers 2
"$BIN/w2v" shards verify demo/shards
"$BIN/w2v" shards inspect demo/shards
echo "rejected files and why: demo/shards/rejects.jsonl"
