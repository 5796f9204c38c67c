#!/usr/bin/env bash
# Wall time of `python report.py` on one checkpoint: first with an empty classifier cache (the feature
# classifier is trained), then again with it cached. Prints both and the report's own section times.
#
#   bash bench/report_time.sh lightning_logs/version_0/checkpoints/last.ckpt [more report.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=$1
shift
scratch=$(mktemp -d)
for pass in first cached; do
    start=$(date +%s.%N)
    python report.py --ckpt_path "$ckpt" --classifier_dir "$scratch/classifiers" --out "$scratch/$pass" "$@" >/dev/null
    end=$(date +%s.%N)
    python - "$pass" "$start" "$end" "$scratch/$pass/report.json" <<'PY'
import json, sys
name, start, end, path = sys.argv[1:]
times = json.load(open(path))["times_s"]
print(f"{name}: {float(end) - float(start):.1f} s wall, interpreter start included; sections (s): {times}")
PY
done
rm -rf "$scratch"
