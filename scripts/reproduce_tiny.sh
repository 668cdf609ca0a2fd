#!/usr/bin/env bash
# The shipped `tiny` / `tiny-mha` pair, reproduced on the CPU in one command from the H200 run's pair:
#
#   bash scripts/reproduce_tiny.sh                  # OUT=runs/reproduce; ~12.5 hours on 2 cores (12,167 steps)
#   bash scripts/reproduce_tiny.sh                  # again after Ctrl-C, a crash or a reboot: goes on
#   SHIP=1 bash scripts/reproduce_tiny.sh           # then `videomla train ship` of the last round
#
# Why a script: the shipped weights are not one `train all`. The H200 run made the pair (its own
# command is in the model card, "Reproduce"); nine CPU rounds fine-tuned both models since, each
# round with its own recipe, starting from the bf16 weights the round before shipped. The card has
# each round's commands in its own section; this runs them in order, as one command.
#
# Each round trains stage 2 (`mla`, for `tiny`) and stage 3 (`twin`, for `tiny-mha`) in OUT/<round>/
# with the step counts the card records. Four rounds ran under `--budget-minutes`, which chose those
# counts and re-fitted its cosine schedule as it went; this script fixes the counts with `--steps`,
# so those rounds repeat the recipe and the steps, not the bytes. The first ran with the recipe's own
# 987 steps and the last four with `--steps`, as here. Each round's weights go to the next as bf16
# (OUT/<round>/tiny.safetensors and tiny-mha.safetensors), as they shipped.
#
# Restarting: a stage whose weights exist is skipped, a stage with a checkpoint continues with
# `--resume` (seeded per step, so bit for bit), and a stage with neither starts. Rounds whose recipes
# render the same clips (size, frames, object weight) read one bank of 1,520 clips, rendered in
# the first such round's folder and hard-linked into the others: every round but the last shares the
# first's 9-frame bank, and the last (12-frame clips) renders its own (a stage checks that a bank was
# rendered for its clips, so a shared one of other clips would stop it). Each round renders its own
# pairs.
#
# Knobs (environment): OUT (runs/reproduce), START (b6b1651: the commit whose assets/ hold the H200
# pair), TINY_FROM / MHA_FROM (start weights instead of START's), AE (assets/ae.safetensors, the
# autoencoder every round reads; unchanged since START), UNTIL (stop after this round), SHIP (0),
# VIDEOMLA (videomla), PYTHON (python). Tested with a stand-in `videomla` in tests/test_reproduce.py.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/reproduce}
START=${START:-b6b1651}
AE=${AE:-assets/ae.safetensors}
UNTIL=${UNTIL:-}
SHIP=${SHIP:-0}
VIDEOMLA=${VIDEOMLA:-videomla}
PYTHON=${PYTHON:-python}

# round, recipe, tiny's steps, tiny-mha's steps (model card, top line and each section)
ROUNDS="
g2      tiny-t4-cpu-g2          987  987
anchor  tiny-t4-cpu-anchor     1027  980
pairs   tiny-t4-cpu-pairs       802  902
counts  tiny-t4-cpu-counts      643  795
motions tiny-t4-cpu-motions     553  595
own750  tiny-t4-cpu-own750      574  574
all     tiny-t4-cpu-own750-all  574  574
chain   tiny-t4-cpu-own750-chain  400  400
chain12 tiny-t4-cpu-own750-chain12  400  400
"

bf16() {  # dir: both stages' fp32 weights -> the bf16 files the app loads, written aside then moved
  [ -f "$1/tiny.safetensors" ] && [ -f "$1/tiny-mha.safetensors" ] && return
  "$PYTHON" -c 'import sys; from pathlib import Path; from videomla_app.train.ship import save_bf16
d = Path(sys.argv[1])
for src, dst in (("mla", "tiny"), ("twin", "tiny-mha")):
    save_bf16(d / f"{src}.safetensors", d / f"{dst}.safetensors.part")' "$1"
  mv "$1/tiny.safetensors.part" "$1/tiny.safetensors"
  mv "$1/tiny-mha.safetensors.part" "$1/tiny-mha.safetensors"
}

stage() {  # stage dir recipe steps from
  local s=$1 dir=$2 recipe=$3 steps=$4 from=$5 resume=()
  if [ -f "$dir/$s.safetensors" ]; then
    echo "$(basename "$dir"): $s done"
    return
  fi
  [ -f "$dir/$s.ckpt.pt" ] && resume=(--resume)
  echo "$(basename "$dir"): $s, $steps steps from $from ${resume[*]+${resume[*]}}"
  "$VIDEOMLA" train "$s" --recipe "$recipe" --out "$dir" "--$s-from" "$from" --steps "$steps" \
    ${resume[@]+"${resume[@]}"}
}

[ -f "$AE" ] || { echo "error: no autoencoder at $AE" >&2; exit 2; }
if [ -n "$UNTIL" ] && ! grep -q "^$UNTIL " <<< "$ROUNDS"; then
  echo "error: UNTIL=$UNTIL is not a round: use $(awk 'NF {printf "%s%s", s, $1; s=", "}' <<< "$ROUNDS")" >&2
  exit 2
fi
mkdir -p "$OUT"
tiny=${TINY_FROM:-$OUT/start-tiny.safetensors}
mha=${MHA_FROM:-$OUT/start-tiny-mha.safetensors}
for pair in "tiny:$tiny" "tiny-mha:$mha"; do
  name=${pair%%:*} file=${pair#*:}
  if [ ! -f "$file" ]; then
    git show "$START:assets/$name/model.safetensors" > "$file.part"
    mv "$file.part" "$file"
  fi
done

# each recipe's bank: what its clips are rendered from, as its bank record says (bank.clip_settings;
# one Python start for the whole list)
banks=$("$PYTHON" -c 'import json, sys; from videomla_app.train.bank import clip_settings
from videomla_app.train.stages import RECIPES
for name in sys.argv[1:]:
    print(name, json.dumps(clip_settings(RECIPES[name]), separators=(",", ":"), sort_keys=True))' \
  $(awk 'NF {print $2}' <<< "$ROUNDS"))
declare -A bank_dir  # bank key -> the first round's folder with that bank

while read -r round recipe steps_mla steps_twin <&3; do  # fd 3: training must not read the list
  [ -n "$round" ] || continue
  dir=$OUT/$round
  mkdir -p "$dir"
  [ -f "$dir/ae.safetensors" ] || cp "$AE" "$dir/ae.safetensors"
  key=$(awk -v r="$recipe" '$1 == r {print $2}' <<< "$banks")
  src=${bank_dir[$key]:-}
  if [ -n "$src" ] && [ -d "$src/bank" ] && [ ! -e "$dir/bank" ]; then
    cp -al "$src/bank" "$dir/bank"
  fi
  bank_dir[$key]=${src:-$dir}
  stage mla "$dir" "$recipe" "$steps_mla" "$tiny"
  stage twin "$dir" "$recipe" "$steps_twin" "$mha"
  bf16 "$dir"
  tiny=$dir/tiny.safetensors mha=$dir/tiny-mha.safetensors last=$dir last_recipe=$recipe
  [ "$round" != "$UNTIL" ] || break
done 3<<< "$ROUNDS"

echo "done: $tiny and $mha (compare: cmp $tiny assets/tiny/model.safetensors)"
if [ "$SHIP" = 1 ]; then
  "$VIDEOMLA" train ship --recipe "$last_recipe" --out "$last"
fi
