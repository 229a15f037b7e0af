#!/usr/bin/env bash
# `make demo`: build a small corpus (speech from espeak-ng in many formats, plus broken files), run the
# prepare-corpus flow on Prefect's embedded server into a local folder, verify and describe the shards,
# then pretrain the tiny model on them for a minute and resume it (nothing to do: it is finished).
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
echo "--- pretraining the tiny preset (configs/tiny.yaml) on the shards"
"$BIN/w2v" pretrain --shards demo/shards --output demo/run --config configs/tiny.yaml --workers 1
"$BIN/w2v" pretrain --shards demo/shards --output demo/run --config configs/tiny.yaml --workers 1
echo "metrics: demo/run/metrics.jsonl; checkpoints (from_pretrained folders): demo/run/checkpoints/*/model"
