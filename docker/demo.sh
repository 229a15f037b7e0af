#!/usr/bin/env bash
# `make demo`: build a small speech corpus (espeak-ng in many formats, plus broken files), run the
# prepare-corpus flow into a local shard folder, then the pretrain flow (tiny model: train a few minutes
# under `accelerate launch`, evaluate, upload into a local "bucket" folder, report), all on Prefect's
# embedded API; it ends by saying where everything is.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
started=$(date +%s)
rm -rf demo
"$BIN/python" -m tests.corpus demo/raw
echo "--- prepare-corpus: decode, resample, segment, bucket into shards"
"$BIN/w2v" prepare demo/raw --out demo/shards --metadata demo/raw/metadata.jsonl --workers 2
echo "--- prepare-corpus again over the same corpus: nothing new to decode"
"$BIN/w2v" prepare demo/raw --out demo/shards --metadata demo/raw/metadata.jsonl --workers 2
"$BIN/w2v" shards verify demo/shards
"$BIN/w2v" shards inspect demo/shards
echo "--- pretrain flow: tiny preset (configs/tiny.yaml), 400 updates, evaluation, upload into demo/bucket"
"$BIN/w2v" pipeline --shards demo/shards --output demo/runs --run-name tiny --config tiny \
  --set max_steps=400 --set log_every=20 --set checkpoint_every=100 --set eval_every=100 \
  --upload-to demo/bucket/tiny --workers 1
cat <<DONE

Demo finished in $(( $(date +%s) - started )) s. Where things are:
  shards and manifest:    demo/shards            (rejected files and why: demo/shards/rejects.jsonl)
  checkpoints:            demo/runs/tiny/checkpoints/*/model and demo/runs/tiny/best/model (from_pretrained folders)
  metrics:                demo/runs/tiny/metrics.jsonl
  TensorBoard logs:       tensorboard --logdir demo/runs/tiny/tensorboard
  training report:        demo/runs/tiny/report.md
  uploaded checkpoint:    demo/bucket/tiny   (_UPLOAD_COMPLETE.json lists every file and its sha256)
DONE
