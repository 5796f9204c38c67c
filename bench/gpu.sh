#!/usr/bin/env bash
# Every GPU check of this project in one script, sized for at most 9 minutes on one H100/H200.
# From the repository root on the GPU machine (see docs/gpu.md):
#
#     bash bench/gpu.sh        # MNIST in data/MNIST/raw, or BENCH_DATA_DIR=<folder with MNIST/raw>
#
# Most important first, so that a cut run loses the least:
#   1. the card, driver and library versions
#   2. python train.py --trainer.accelerator gpu (the defaults: 30 epochs), timed from command to exit,
#      the GPU's memory sampled by nvidia-smi meanwhile; then train.py test on its last.ckpt, on the GPU
#   3. what a user does next, on a machine without a GPU (CUDA_VISIBLE_DEVICES= hides it): train.py test,
#      sample.py and export.py on that GPU-trained checkpoint
#   4. train.py --ckpt_path last on the GPU: the GPU run resumed for one more epoch
#   5. pytest -m gpu, with CUBLAS_WORKSPACE_CONFIG=:4096:8 (deterministic cuBLAS, for bit-identical resume)
#   6. bench/throughput.py --accelerator gpu --batch_sizes 128 1024 (the default 784-512-20 network)
#   7. bench/speed_options.py: float32 (twice, for seed noise), TF32, bf16-mixed, then the cold
#      compiles (compile, CUDA graphs): the rows a time limit cuts first
#
# Each step has a time limit inside one budget (BENCH_BUDGET_S, default 500 s); a step that no longer
# fits is skipped and the summary says so. Full logs go to a folder that is kept and named at the end;
# with OUT set to a folder, after every step they are also packed into
# $OUT/gpu-bench-logs.tar.gz and the summary so far written to $OUT/gpu-bench-summary.txt: two files,
# so a run cut short still leaves what it did. Runs' checkpoints stay in a temporary folder.
# To try the script without a GPU: BENCH_ACCELERATOR=cpu BENCH_QUICK=1 BENCH_DATA_DIR=<folder with MNIST/raw>.
set -u

REPO=$(pwd)
PY=$(command -v python || command -v python3)
ACCELERATOR=${BENCH_ACCELERATOR:-gpu}
DATA_DIR=${BENCH_DATA_DIR:-$REPO/data}
if [ ! -f "$DATA_DIR/MNIST/raw/train-images-idx3-ubyte" ]; then
    echo "bench/gpu.sh: no MNIST in $DATA_DIR/MNIST/raw: put the four MNIST files there (docs/data.md) or set BENCH_DATA_DIR"
    exit 1
fi
DATA_DIR=$(cd "$DATA_DIR" && pwd)
BUDGET=${BENCH_BUDGET_S:-500}
LOGS=$(mktemp -d)/gpu-bench
WORK=$(mktemp -d)
mkdir -p "$LOGS"
START=$(date +%s)
SUMMARY=()

if [ -n "${BENCH_QUICK:-}" ]; then  # tiny sizes, to check the script itself
    EPOCHS=1
    TRAIN_ARGS=(--trainer.limit_train_batches 5 --trainer.limit_val_batches 2)
    TEST_ARGS=(--trainer.limit_test_batches 2 --model.iw_samples 5)
    OPTIONS_ARGS=(--epochs 2 --limit_batches 5 --hidden_dim 64 --variants float32 float32-seed1 tf32)
    THROUGHPUT_ARGS=(--hidden_dims 16 --batch_sizes 1024 --epochs 2 --rounds 1)
else
    EPOCHS=30
    TRAIN_ARGS=()
    TEST_ARGS=()
    OPTIONS_ARGS=(--epochs 10)
    THROUGHPUT_ARGS=(--batch_sizes 128 1024 --hidden_dims 512)
fi
DATA=(--data.data_dir "$DATA_DIR")

# step NAME CAP_SECONDS COMMAND...: runs COMMAND into $LOGS/NAME.log, within CAP and what is left of the budget
step() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    local limit=$((cap < left ? cap : left))
    if ((limit < 20)); then
        SUMMARY+=("$(printf '%-15s skipped: %ss of the budget left' "$name" "$left")")
        echo "== $name: skipped, ${left}s of the budget left"
        return 1
    fi
    local command="$*"
    echo "== $name (limit ${limit}s): ${command:0:200}"
    local t0 t1 rc
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    STEP_SECONDS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    local status="ok"
    ((rc == 124 || rc == 137)) && status="TIMED OUT after ${limit}s"
    ((rc != 0 && rc != 124 && rc != 137)) && status="FAILED (exit $rc)"
    SUMMARY+=("$(printf '%-15s %-28s %7ss' "$name" "$status" "$STEP_SECONDS")")
    echo "   $status in ${STEP_SECONDS}s; log: $LOGS/$name.log"
    ((rc != 0)) && tail -n 15 "$LOGS/$name.log"
    pack
    return $rc
}

# test_metrics FILE: "test/loss L, test/nll N (k=K)" from a run's test_metrics.json
test_metrics() {
    "$PY" - "$1" <<'PY' 2>/dev/null || echo "none"
import json, sys
record = json.load(open(sys.argv[1]))
m, k = record["metrics"], record["hparams"]["iw_samples"]
print(f"test/loss {m['test/loss']:.3f}, test/nll {m.get('test/nll', float('nan')):.3f} (k={k})")
PY
}

summary() {
    echo "================ summary ($(($(date +%s) - START)) s; logs in $LOGS) ================"
    grep -v '^$' "$LOGS/versions.log" 2>/dev/null
    printf '%s\n' "${SUMMARY[@]}"
    echo "--- python train.py --trainer.accelerator $ACCELERATOR (defaults, $EPOCHS epochs): ${TRAIN_SECONDS:-?} s" \
        "command to exit; peak GPU memory used ${PEAK_USED:-?} MiB (nvidia-smi, CUDA context included)"
    echo "--- its test on the GPU: $(test_metrics "$LOGS/test_metrics.json")"
    echo "--- its test with CUDA_VISIBLE_DEVICES= (CPU): $(test_metrics "$LOGS/laptop_test_metrics.json")"
    echo "--- sample.py / export.py with CUDA_VISIBLE_DEVICES=: $(cat "$LOGS/laptop-files.txt" 2>/dev/null || echo none)"
    echo "--- --ckpt_path last on the GPU: $(cat "$LOGS/resumed.txt" 2>/dev/null || echo none)"
    echo "--- pytest -m gpu: $(tail -n 1 "$LOGS/pytest-gpu.log" 2>/dev/null)"
    echo "--- bench/throughput.py"
    sed -n '/^network /,$p' "$LOGS/throughput.log" 2>/dev/null | grep -v '^$'
    echo "--- bench/speed_options.py"
    grep -E '^(\||seed noise|speed options:|[a-z0-9-]+: FAILED)' "$LOGS/speed-options.log" 2>/dev/null
}

# with OUT set: the logs so far as one tarball and the summary so far, both replaced after every step
pack() {
    [ -n "${OUT:-}" ] || return 0
    tar -czf "$OUT/gpu-bench-logs.tar.gz" -C "$(dirname "$LOGS")" gpu-bench
    summary >"$OUT/gpu-bench-summary.txt"
}

# 1. what this machine is
step versions 60 env PY="$PY" bash -c '
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" - <<"PY"
import torch, lightning, torchmetrics
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
      f"lightning {lightning.__version__}, torchmetrics {torchmetrics.__version__}")
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU")
PY'
cat "$LOGS/versions.log"

# 2. the default run, as a user types it, then its test on the GPU
mkdir -p "$WORK/default"
MEMORY_LOG="$LOGS/train-default-gpu-memory.csv"
SAMPLER=""
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$MEMORY_LOG" 2>/dev/null &
    SAMPLER=$!
fi
cd "$WORK/default" || exit 1
STEP_SECONDS="?"
step train-default 150 "$PY" "$REPO/train.py" --trainer.accelerator "$ACCELERATOR" "${DATA[@]}" \
    --trainer.max_epochs "$EPOCHS" "${TRAIN_ARGS[@]}"
TRAIN_SECONDS=$STEP_SECONDS
[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
PEAK_USED=$([ -s "$MEMORY_LOG" ] && sort -n "$MEMORY_LOG" | tail -n 1 || echo "?")
RUN_DIR="$WORK/default/lightning_logs/version_0"
LAST="$RUN_DIR/checkpoints/last.ckpt"
cp "$RUN_DIR"/config.yaml "$LOGS/" 2>/dev/null
step test-default 90 "$PY" "$REPO/train.py" test --ckpt_path last --trainer.accelerator "$ACCELERATOR" \
    "${DATA[@]}" "${TEST_ARGS[@]}"
cp "$RUN_DIR/test_metrics.json" "$LOGS/test_metrics.json" 2>/dev/null

# 3. the same checkpoint on a machine without a GPU: test, sample, export
step laptop-test 150 env CUDA_VISIBLE_DEVICES= "$PY" "$REPO/train.py" test --ckpt_path last "${DATA[@]}" \
    "${TEST_ARGS[@]}"
cp "$RUN_DIR/test_metrics.json" "$LOGS/laptop_test_metrics.json" 2>/dev/null
step laptop-sample 60 env CUDA_VISIBLE_DEVICES= "$PY" "$REPO/sample.py" --ckpt_path "$LAST" --data_dir "$DATA_DIR"
step laptop-export 90 env CUDA_VISIBLE_DEVICES= "$PY" "$REPO/export.py" --ckpt_path "$LAST"
ls "$RUN_DIR/samples" "$RUN_DIR/export" 2>/dev/null | tr '\n' ' ' >"$LOGS/laptop-files.txt"

# 4. the GPU run resumed for one more epoch
step resume-gpu 90 "$PY" "$REPO/train.py" --ckpt_path last --trainer.accelerator "$ACCELERATOR" "${DATA[@]}" \
    --trainer.max_epochs $((EPOCHS + 1)) "${TRAIN_ARGS[@]}"
"$PY" - "$LAST" "$EPOCHS" >"$LOGS/resumed.txt" 2>&1 <<'PY'
import sys, torch
saved, trained = torch.load(sys.argv[1], map_location="cpu", weights_only=True), int(sys.argv[2])
verdict = "resumed" if saved["epoch"] == trained else "NOT resumed"
print(f"{verdict}: last.ckpt at epoch {saved['epoch'] + 1}, global step {saved['global_step']} (trained {trained} epochs)")
PY
cd "$REPO" || exit 1
pack

# 5. the GPU tests (their own addopts: no pytest-xdist options, whatever xdist the machine has)
step pytest-gpu 180 env CUBLAS_WORKSPACE_CONFIG=:4096:8 "$PY" -m pytest -q -m gpu -rs -o addopts="-p no:cacheprovider"
tail -n 3 "$LOGS/pytest-gpu.log"

# 6. project vs bare loop vs Lightning alone, data on the GPU for all three
step throughput 150 "$PY" bench/throughput.py --accelerator "$ACCELERATOR" --data_dir "$DATA_DIR" \
    "${THROUGHPUT_ARGS[@]}"

# 7. the speed options, each a fit and a test (whatever budget is left; each variant prints as it ends)
step speed-options 300 "$PY" bench/speed_options.py --accelerator "$ACCELERATOR" --data_dir "$DATA_DIR" \
    "${OPTIONS_ARGS[@]}"

echo
summary
pack
rm -rf "$WORK"
