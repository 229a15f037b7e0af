#!/usr/bin/env bash
# End-to-end checks of `w2v pretrain` on one CUDA GPU (not a benchmark: each step prints PASS or FAIL).
#   1. FSDP (configs/accelerate/fsdp.yaml, one process), base preset in bf16: a few steps with checkpoints,
#      then resumed for a few more; the last checkpoint's model/ loads with from_pretrained.
#   2. Plain single-GPU `python -m w2v pretrain`, base preset in bf16, 20 steps: checkpoints, metrics.jsonl.
# Usage: bash benchmarks/gpu_checks.sh [WORKDIR]   (logs in WORKDIR/logs; needs a CUDA GPU)
# W2V_ENTRY=path/to/script.py runs that script instead of `-m w2v` (e.g. one that patches something first).
set -u
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/w2v-gpu-checks}
LOGS=$WORK/logs
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if command -v accelerate >/dev/null; then LAUNCH=(accelerate launch); else LAUNCH=("$PY" -m accelerate.commands.launch); fi
if [ -n "${W2V_ENTRY:-}" ]; then W2V=("$W2V_ENTRY"); else W2V=(-m w2v); fi
failed=0
check() {  # check NAME COMMAND...: runs it with its output in LOGS/NAME.log
  local name=$1; shift
  echo "== $name: $*" | tee -a "$LOGS/commands.txt"
  local started=$SECONDS
  if "$@" >"$LOGS/$name.log" 2>&1; then echo "PASS $name ($((SECONDS - started)) s)"
  else echo "FAIL $name (exit $?, $((SECONDS - started)) s); last lines:"; tail -n 30 "$LOGS/$name.log"; failed=1; fi
}

"$PY" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null || { echo "gpu_checks.sh: no CUDA device" >&2; exit 2; }

check shards "$PY" -c "
import sys; from pathlib import Path
from benchmarks.loader import utterance_lengths
from tests.data.shard_folders import write_shard_folder
write_shard_folder(Path(sys.argv[1]), utterance_lengths(12.0), rows_per_shard=128)" "$WORK/shards"

# Short runs of configs/base.yaml: one micro-batch per update, frequent checkpoints, an evaluation at the end.
COMMON=(--shards "$WORK/shards" --config configs/base.yaml --set gradient_accumulation=1 --set log_every=1
  --set optim.warmup_steps=2 --set val_share=0.1 --set max_val_batches=4)

check fsdp_first "${LAUNCH[@]}" --config_file configs/accelerate/fsdp.yaml --num_processes 1 "${W2V[@]}" pretrain \
  "${COMMON[@]}" --output "$WORK/runs/fsdp" --max-steps 4 --set checkpoint_every=2 --set eval_every=4
check fsdp_resume "${LAUNCH[@]}" --config_file configs/accelerate/fsdp.yaml --num_processes 1 "${W2V[@]}" pretrain \
  "${COMMON[@]}" --output "$WORK/runs/fsdp" --max-steps 7 --set checkpoint_every=2 --set eval_every=4
check plain_bf16 "$PY" "${W2V[@]}" pretrain "${COMMON[@]}" --output "$WORK/runs/plain" --max-steps 20 \
  --set checkpoint_every=10 --set log_every=5 --set eval_every=20

check inspect "$PY" -c "
import json, sys
from pathlib import Path
import torch
from transformers import Wav2Vec2ForPreTraining
failures = []
for run in sys.argv[1:]:
    run = Path(run)
    checkpoints = sorted(p.name for p in (run / 'checkpoints').glob('step-*'))
    records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines() if line.strip()]
    steps = [r['step'] for r in records if 'loss' in r]
    print(run.name, 'checkpoints', checkpoints, 'logged steps', steps)
    for r in records:
        print(' ', json.dumps({k: r[k] for k in r if k not in ('warnings',)})[:400])
    newest = run / 'checkpoints' / checkpoints[-1]
    print('  files:', sorted(str(p.relative_to(newest)) for p in newest.rglob('*') if p.is_file())[:40])
    model, info = Wav2Vec2ForPreTraining.from_pretrained(newest / 'model', output_loading_info=True)
    missing = {k: v for k, v in info.items() if v}
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    params = sum(p.numel() for p in model.parameters())
    print(f'  {newest.name}/model loads: {params} parameters, loading info {missing or \"clean\"}, finite {finite}')
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 32000))
    print('  forward:', tuple(out.projected_states.shape))
    trainer = json.loads((newest / 'trainer.json').read_text())
    print('  trainer.json step', trainer['step'])
    if missing or not finite or not steps:
        failures.append(run.name)
sys.exit(1 if failures else 0)" "$WORK/runs/fsdp" "$WORK/runs/plain"
cat "$LOGS/inspect.log"
exit $failed
