#!/usr/bin/env bash
# The headline recipe (configs/gpu_binarized.yaml) on one GPU: for each seed, train (at most
# 6 minutes, the config's max_time), then `test` at k = 5000; a table of the seeds last.
#
#   bash bench/gpu_recipe.sh                    # seed 0
#   SEEDS=1 bash bench/gpu_recipe.sh            # seed 1 (SEEDS="0 1 2" BUDGET_S=1800: all three)
#   python bench/recipe_table.py table out*/gpu_recipe/seed*.json          # the 3-seed table, anywhere
#
# One seed per command by default: a seed is up to 6 + 2 minutes of work. Runs (with checkpoints)
# go to lightning_logs/gpu_recipe-<time>/; the logs, each seed's record (JSON) and the table go to
# $OUT/gpu_recipe/ (or to the runs folder when $OUT is unset). The test is stopped, and its row
# marked "not done", when it would end past BUDGET_S seconds after the script started.
#
# Environment: SEEDS ("0"), IW_SAMPLES (5000), BUDGET_S (570), FIT_NEEDS_S (390: a seed's fit
# starts only with this much of BUDGET_S left), FIT_ARGS and TEST_ARGS (extra options for
# `train.py fit` and `train.py test`). A dry run on a CPU, tiny:
#   FIT_ARGS="--trainer.accelerator cpu --trainer.max_epochs 1 --trainer.limit_train_batches 2
#     --trainer.limit_val_batches 2 --trainer.check_val_every_n_epoch 1" IW_SAMPLES=2
#     TEST_ARGS="--trainer.limit_test_batches 2" bash bench/gpu_recipe.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-0}
IW_SAMPLES=${IW_SAMPLES:-5000}
BUDGET_S=${BUDGET_S:-570}
FIT_NEEDS_S=${FIT_NEEDS_S:-390}
FIT_ARGS=${FIT_ARGS:-}
TEST_ARGS=${TEST_ARGS:-}
started=$SECONDS
runs=lightning_logs/gpu_recipe-$(date -u +%Y%m%d-%H%M%S)
report=${OUT:+$OUT/gpu_recipe}
report=${report:-$runs}
mkdir -p "$runs" "$report"
device=$(python3 -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')")
echo "gpu_recipe: seeds $SEEDS, k = $IW_SAMPLES, device $device, runs in $runs, report in $report"
git rev-parse HEAD > "$report/commit.txt" 2>/dev/null || true

for seed in $SEEDS; do
  if [ $((BUDGET_S - (SECONDS - started))) -lt "$FIT_NEEDS_S" ]; then
    echo "gpu_recipe: seed $seed skipped: less than FIT_NEEDS_S = $FIT_NEEDS_S s of BUDGET_S left"
    continue
  fi
  run_dir=$runs/seed$seed/version_0
  t0=$SECONDS
  # shellcheck disable=SC2086  # FIT_ARGS and TEST_ARGS are lists of options
  python3 train.py fit --config configs/gpu_binarized.yaml --seed_everything "$seed" \
    --trainer.logger.init_args.save_dir "$runs" --trainer.logger.init_args.name "seed$seed" \
    --trainer.enable_progress_bar false $FIT_ARGS 2>&1 | tee "$report/seed$seed-fit.log"
  train_s=$((SECONDS - t0))
  stopped=max_epochs
  if grep -q "Time limit reached" "$report/seed$seed-fit.log"; then stopped=max_time; fi
  cp "$run_dir/config.yaml" "$report/seed$seed-config.yaml"
  best=$(ls "$run_dir"/checkpoints/best-epoch*.ckpt 2>/dev/null | tail -n 1 || true)
  best=${best:-$run_dir/checkpoints/last.ckpt}
  left=$((BUDGET_S - (SECONDS - started)))
  t0=$SECONDS
  if [ "$left" -gt 30 ]; then
    # shellcheck disable=SC2086
    timeout "$left" python3 train.py test --ckpt_path "$best" --model.iw_samples "$IW_SAMPLES" \
      --trainer.enable_progress_bar false $TEST_ARGS 2>&1 | tee "$report/seed$seed-test.log" \
      || echo "gpu_recipe: seed $seed's test stopped after $left s (BUDGET_S)"
  else
    echo "gpu_recipe: no time left for seed $seed's test ($left s of BUDGET_S)"
  fi
  test_s=$((SECONDS - t0))
  cp "$run_dir"/events.out.tfevents.* "$report/" 2>/dev/null || true
  python3 bench/recipe_table.py record --run_dir "$run_dir" --seed "$seed" --train_s "$train_s" \
    --test_s "$test_s" --device "$device" --stopped "$stopped" --out "$report/seed$seed.json"
done

if ls "$report"/seed*.json > /dev/null 2>&1; then
  python3 bench/recipe_table.py table "$report"/seed*.json | tee "$report/table.md"
fi
