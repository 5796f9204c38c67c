#!/usr/bin/env bash
# Wall time of `python report.py` on one checkpoint: first with an empty classifier cache (the feature
# classifier is trained), then again with it cached. Prints both, with the report's own section times.
# The first report goes to a scratch folder; the second is the run's own (<run>/report/).
#
#   bash bench/report_time.sh lightning_logs/version_0/checkpoints/last.ckpt [more report.py options]
#   CLASSIFIER_DIR=DIR bash bench/report_time.sh ...   # keep the classifier there (an empty folder)
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=$1
shift
scratch=$(mktemp -d)
classifiers=${CLASSIFIER_DIR:-$scratch/classifiers}
if compgen -G "$classifiers/classifier-*.pt" >/dev/null; then
    echo "$classifiers already holds a classifier: give an empty CLASSIFIER_DIR" >&2
    exit 1
fi
for pass in first cached; do
    out=$([ "$pass" = first ] && echo "--out $scratch/first" || true)
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    report=$(python report.py --ckpt_path "$ckpt" --classifier_dir "$classifiers" $out "$@" | tail -1)
    end=$(date +%s.%N)
    python - "$pass" "$start" "$end" "$(dirname "$report")/report.json" <<'PY'
import json, sys
name, start, end, path = sys.argv[1:]
times = json.load(open(path))["times_s"]
print(f"{name}: {float(end) - float(start):.1f} s wall, interpreter start included; sections (s): {times}")
PY
done
rm -rf "$scratch"
