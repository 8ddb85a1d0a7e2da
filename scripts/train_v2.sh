#!/usr/bin/env bash
# Train one model of the built-in set v2 from a fresh checkout, in one go: the venv and the emoji designs
# (scripts/setup.sh, scripts/designs.sh), the version 2 scenes (48,000 training scenes and the evaluation splits,
# about 7 min on two cores), then `python -m attnviz.train --recipe v2 --compile` under `chrt -r 1` when it is
# allowed (so that other work slows instead of the training). Resumable: run it again and it skips what exists
# and goes on from the state file. ResNet50 trains eager (compiling gains it nothing on these cores).
#
#   bash scripts/train_v2.sh cbam                 # data in data/scenes_v2, results in runs/v2/
#   bash scripts/train_v2.sh se /tmp/v2           # data, state and results under /tmp/v2 instead
#
# On two cores a model takes about two hours (ResNet50: 110.7 min with this recipe, bench/results/
# v2_recipe2_resnet50.json; CBAM compiled ran its 96 px steps at about 80 images/s in the 2026-12-06 session's
# log, about ResNet50's eager rate); do nothing heavy beside it: a second torch process beside a real-time
# training slowed it from 0.8 to 60 s per step in that session. The model lands in <root>/out/<variant>.safetensors
# with its record <variant>.json (accuracy on val, test, unseen glyphs and the unseen design).
# Those times need a CPU with native bfloat16 (AVX512-BF16 or AMX). Without it training runs in float32 (bf16 would
# be emulated: 13x slower) and a model takes about 10-12 hours on two AVX2 cores (README, "Training"): more than a
# working session; this script then stops at once unless ATTNVIZ_TRAIN_ANYWAY=1.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:?usage: scripts/train_v2.sh VARIANT [ROOT]}
root=${2:-}
data=${root:+$root/data}
data=${data:-data/scenes_v2}
runs=${root:-runs/v2}
bash scripts/setup.sh 1
if [ "${ATTNVIZ_TRAIN_ANYWAY:-0}" != 1 ] && ! .venv/bin/python -c "import sys, torch; from attnviz.recipe import native_bf16
sys.exit(0 if native_bf16() or torch.cuda.is_available() else 1)"; then
  echo "this CPU has no native bfloat16: a model of set v2 would take about 10-12 hours here in float32; train on a" \
       "machine with AVX512-BF16 or AMX (or a GPU), or set ATTNVIZ_TRAIN_ANYWAY=1 to train here anyway" >&2
  exit 3
fi
bash scripts/designs.sh
if [ ! -f "$data/train/.complete" ]; then
  .venv/bin/python -m attnviz.scenes generate --version 2 --out "$data" --splits train --count 48000
  .venv/bin/python -m attnviz.scenes generate --version 2 --out "$data" --splits val test unseen unseen_design
  touch "$data/train/.complete"
fi
mkdir -p "$runs/out" "$runs/state"
compile=--compile
[ "$variant" = resnet50 ] && compile=
rt=()
chrt -r 1 true 2>/dev/null && rt=(chrt -r 1)
"${rt[@]}" .venv/bin/python -m attnviz.train --variant "$variant" --recipe v2 $compile --data "$data" \
  --out "$runs/out" --state "$runs/state/$variant.pt"
