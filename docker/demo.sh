#!/usr/bin/env bash
# `make demo`: build a speech corpus (24 synthetic speakers with espeak-ng, some noisy or reverberant, plus files
# in many formats and some broken ones), run the prepare-corpus flow into a local shard folder, then the
# pretrain flow (configs/tiny.yaml under `accelerate launch`, evaluation with a speaker probe, upload into a
# local "bucket" folder, report with learning curves), all on Prefect's embedded API. Then the evidence that the
# model learned: a short CTC fine-tune on new recordings from the pretrained model and from a random
# initialization of it, and a table of pretrained vs random init (demo/summary.json).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
started=$(date +%s)
rm -rf demo
mkdir -p demo
# One Prefect API for every command of the demo (each would otherwise start its own): its database, with the
# flow runs and artifacts, stays in demo/prefect. It starts while the corpus is being built.
export PREFECT_HOME="$PWD/demo/prefect"
port=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/python" -m uvicorn --factory prefect.server.api.server:create_app --host 127.0.0.1 --port "$port" \
  --log-level error --lifespan on >demo/prefect-server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
export PREFECT_API_URL="http://127.0.0.1:$port/api"
echo "--- a corpus: 900 utterances by 24 voices, files in many formats and broken ones; 150 test recordings"
"$BIN/python" -m tests.speech_corpus demo/raw/speech --utterances 900 --speakers 24 --seed 0 >/dev/null &
speech=$!
"$BIN/python" -m tests.speech_corpus demo/test-raw --utterances 150 --speakers 24 --seed 1 >/dev/null &
test_set=$!
"$BIN/python" -m tests.corpus demo/raw/formats >/dev/null
wait "$speech" "$test_set"
"$BIN/python" - <<'MERGE'  # one metadata file for the corpus: paths relative to demo/raw
import json, pathlib
root = pathlib.Path("demo/raw")
rows = []
for part in ("speech", "formats"):
    listed = root / part / "metadata.jsonl"
    rows += [{**row, "path": f"{part}/{row['path']}"} for row in map(json.loads, listed.read_text().splitlines())]
    listed.unlink()
(root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
MERGE
"$BIN/python" - "$PREFECT_API_URL" <<'READY'  # the API answers (its first start creates the database)
import sys, time, urllib.request
deadline = time.monotonic() + 180
while True:
    try:
        urllib.request.urlopen(sys.argv[1] + "/health", timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"the demo's Prefect API did not start: see demo/prefect-server.log")
        time.sleep(0.5)
READY
echo "--- prepare-corpus: decode, resample, segment, bucket into shards"
"$BIN/w2v" prepare demo/raw --out demo/shards --metadata demo/raw/metadata.jsonl --workers 2
echo "--- prepare-corpus again over the same corpus: nothing new to decode (the test recordings meanwhile)"
"$BIN/w2v" prepare demo/test-raw --out demo/test-shards --metadata demo/test-raw/metadata.jsonl --workers 1 \
  >demo/prepare-test.log 2>&1 &
test_shards=$!
"$BIN/w2v" prepare demo/raw --out demo/shards --metadata demo/raw/metadata.jsonl --workers 2
wait "$test_shards" || { tail -n 5 demo/prepare-test.log; exit 1; }
"$BIN/w2v" shards inspect demo/shards
echo "--- pretrain flow: tiny model (configs/tiny.yaml), evaluation with a speaker probe, upload into demo/bucket"
"$BIN/w2v" pipeline --shards demo/shards --output demo/runs --run-name tiny --config tiny \
  --upload-to demo/bucket/tiny --workers 1
echo "--- CTC fine-tune on the corpus' transcripts, scored on the 150 test recordings: pretrained, then random init"
# The two fine-tunes side by side, a core each: a tiny model uses two cores poorly.
tunes=()
for init in pretrained random-init; do
  flag=$([ "$init" = random-init ] && echo --random-init || true)
  OMP_NUM_THREADS=1 "$BIN/w2v" finetune --task ctc --pretrained demo/runs/tiny/best/model $flag \
    --config configs/tiny-ctc.yaml --train demo/shards --valid demo/test-shards --output "demo/ctc/$init" \
    --workers 0 >"demo/ctc-$init.log" 2>&1 &
  tunes+=($!)
done
"$BIN/w2v" doctor demo/runs/tiny >demo/doctor.txt 2>&1 || true  # its verdict is printed below
for tune in "${tunes[@]}"; do wait "$tune" || { tail -n 5 demo/ctc-*.log; exit 1; }; done
echo "--- w2v doctor on the run: loss, codebook, masking, data wait, against what a healthy run shows"
cat demo/doctor.txt
echo "--- what pretraining bought: pretrained vs random initialization"
"$BIN/python" docker/demo_summary.py demo
cat <<DONE

Demo finished in $(( $(date +%s) - started )) s. Where things are:
  evidence:               demo/summary.json      (the table above, with the final model's evaluation)
  learning curves:        demo/runs/tiny/learning-curves.png
  Prefect flow runs:      PREFECT_HOME=demo/prefect .venv/bin/prefect server start, then http://127.0.0.1:4200
                          (the flow runs of this demo and their artifacts: "pretraining-report", corpus reports)
  shards and manifest:    demo/shards            (rejected files and why: demo/shards/rejects.jsonl)
  checkpoints:            demo/runs/tiny/checkpoints/*/model and demo/runs/tiny/best/model (from_pretrained folders)
  metrics:                demo/runs/tiny/metrics.jsonl
  TensorBoard logs:       tensorboard --logdir demo/runs/tiny/tensorboard
  training report:        demo/runs/tiny/report.md
  CTC fine-tunes:         demo/ctc/pretrained/best/model, demo/ctc/random-init/best/model (logs: demo/ctc-*.log)
  bucket (a folder here): demo/bucket/tiny/best (the best model), demo/bucket/tiny/checkpoints (each checkpoint
                          as it was written, LATEST names the newest; _UPLOAD_COMPLETE.json lists files and sha256)
DONE
