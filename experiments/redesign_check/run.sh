#!/usr/bin/env bash
# Run the small-world pipeline (the e2e test's configuration) at two commits and compare every
# score they store. Usage, from the repository root with `make test` done once (.venv):
#   bash experiments/redesign_check/run.sh a41a51f 7e16df3
# Each commit is checked out into a temporary worktree and run with this checkout's .venv
# (PYTHONPATH points at the worktree's src/); results go to $OUT (default /tmp/redesign_check).
set -euo pipefail
repo=$(git rev-parse --show-toplevel)
out=${OUT:-/tmp/redesign_check}
mkdir -p "$out"
for c in "$@"; do
  wt="$out/wt-$c"
  [ -d "$wt" ] || git -C "$repo" worktree add -q --detach "$wt" "$c"
  root="$out/$c"
  if [ ! -f "$root/results.jsonl" ]; then
    (cd "$wt" && PYTHONPATH="$wt/src" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
      WANDB_MODE=offline WANDB_DIR="$out/wandb" HF_HOME="$out/hf" \
      "$repo/.venv/bin/hhh-bench" root="$root" experiment=toy3h logger=none threads=1 \
      data.world.n_known.train=40 data.world.n_known.validation=12 data.world.n_known.test=12 \
      data.world.n_unknown.sft=12 data.world.n_unknown.train=30 data.world.n_unknown.validation=12 \
      data.world.n_unknown.test=12 data.world.n_benign_objects=10 data.world.n_harmful_objects=10 \
      data.world.pairs_per_dimension=120 data.world.eval_items_per_kind=36 \
      'pipeline.mixtures=[uniform,sequential]' pipeline.oracle.train.epochs=3 '~pipeline.merge_grid' \
      '+pipeline.merge_grid.task_arithmetic.scaling=[0.5,1.0]' '+pipeline.merge_grid.ties.density=[0.5]' \
      '+pipeline.merge_grid.dare_ta.drop_rate=[0.3]' '+pipeline.merge_grid.dare_ties.drop_rate=[0.3]' \
      '+pipeline.merge_grid.tsv.scaling=[1.0]' '+pipeline.merge_grid.resm.scaling=[1.0]') \
      > "$out/$c.log" 2>&1
  fi
done
"$repo/.venv/bin/python" "$repo/experiments/redesign_check/compare.py" "$out/$1" "$out/$2"
