#!/usr/bin/env bash
# Submit a paper experiment to SLURM as three dependent sbatch jobs, each asking for what its
# stages need (docs/scale.md, "On a SLURM cluster"; the numbers: `hhh-bench plan`):
#
#   1. data    CPU only: the public sets read, filtered, leakage-checked (stage=data: the data
#              of every seed of the experiment's seeds)
#   2. grid    one node, 8 GPUs: every training run (8 processes, FSDP, launched by the train
#              stage), every merge (streaming, GPU 0) and every evaluation (GPU 0); the data
#              stage's output is reused from the cache
#   3. report  CPU only: the tables, plots and the answer from the results store (stage=report)
#
# Every stage is cached by content and written atomically: a job that hits its time limit is
# requeued (--requeue) and resumes where it stopped. Run on a login node, from the repository:
#   cluster/submit_paper.sh paper_llama3 [extra hhh-bench overrides...]
# Settings (environment): PARTITION (default gpu), ACCOUNT (none), CPU_PARTITION (PARTITION),
# GRID_TIME (default 24:00:00: `hhh-bench plan experiment=paper_llama3` puts the grid at about
# 100 H100-hours, 12-13 h on 8 GPUs at MFU 0.4), SETUP (shell lines run first, e.g.
# "module load cuda; source .venv/bin/activate"), SBATCH (the sbatch command; tests pass a stand-in).
# The caches must already hold every model and dataset (compute nodes are offline):
# docs/reproduce.md, "Pinned revisions"; HF_HUB_OFFLINE=1 is set for every job.
set -euo pipefail
experiment="${1:?usage: cluster/submit_paper.sh EXPERIMENT [overrides...]}"
shift
case "$experiment" in
  paper_llama3|paper_mistral) ;;
  *) echo "submit_paper.sh: $experiment is not a paper experiment (paper_llama3 | paper_mistral)" >&2; exit 2 ;;
esac
sbatch="${SBATCH:-sbatch}"
partition="${PARTITION:-gpu}"
cpu_partition="${CPU_PARTITION:-$partition}"
account=()
if [ -n "${ACCOUNT:-}" ]; then account=(--account "$ACCOUNT"); fi
setup="${SETUP:-true}"
run="export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1; $setup; hhh-bench experiment=$experiment $*"

# 1. data: CPU, the leakage guard compares every training pair with every evaluation item
data=$("$sbatch" --parsable --job-name "$experiment-data" --partition "$cpu_partition" "${account[@]}" \
  --nodes 1 --ntasks 1 --cpus-per-task 8 --mem 64G --time 02:00:00 --requeue \
  --wrap "$run stage=data")
# 2. the grid: 8 GPUs for training (train.num_processes=8), GPU 0 for merges and evaluations;
#    host memory for two 8B state dicts while merging and Fisher's float32 accumulators
grid=$("$sbatch" --parsable --job-name "$experiment-grid" --partition "$partition" "${account[@]}" \
  --dependency "afterok:$data" --nodes 1 --ntasks 1 --gpus-per-node 8 --cpus-per-task 32 \
  --mem 512G --time "${GRID_TIME:-24:00:00}" --requeue \
  --wrap "$run stage=all")
# 3. the report: CPU, reads the store the grid wrote
report=$("$sbatch" --parsable --job-name "$experiment-report" --partition "$cpu_partition" "${account[@]}" \
  --dependency "afterok:$grid" --nodes 1 --ntasks 1 --cpus-per-task 2 --mem 16G --time 00:30:00 \
  --wrap "$run stage=report")
echo "submitted $experiment: data $data -> grid $grid -> report $report"
