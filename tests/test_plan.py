"""``hhh-bench plan`` (issue 34, part 3): every job of a run in order, cached or to run, and
what the others cost by the formulas of docs/reproduce.md ("Planned cost"). That the dry run
marks a finished run's jobs cached is tested beside that run (tests/test_pipeline_e2e.py)."""

from __future__ import annotations

import json

import pytest

from conftest import SMALL_WORLD, compose
from hhh_bench.cli import SUBCOMMANDS
from hhh_bench.planning import (
    GPU_PROFILES,
    count_parameters,
    gpu_hours,
    plan,
    render,
    train_flops,
    train_memory,
)

LLAMA3_8B = 8_030_261_248  # Meta-Llama-3-8B(-Instruct): its model card's 8.03B, exactly


def test_the_parameters_are_counted_from_the_public_config():
    from pathlib import Path

    import hhh_bench

    asset = (
        Path(hhh_bench.__file__).parent / "models" / "standin_assets" / "llama3_8b_instruct.json"
    )
    assert count_parameters(json.loads(asset.read_text())) == LLAMA3_8B


def test_the_paper_plan_has_a_training_row_as_the_formula_says(tmp_path):
    """experiment=paper_llama3's helpful specialist, by hand: LoRA DPO with gradient
    checkpointing, the reference's log-probs precomputed. Per sequence of T tokens: forward
    2NT, backward through the frozen weights 2NT (LoRA), the recomputed forward 2NT; two
    sequences per pair, each pass; the reference's forward on both, once."""
    from hhh_bench.pipeline import prepare

    # no leakage check: its key reads every lm-eval task index (~45 s), as the run does
    overrides = ["experiment=paper_llama3", f"root={tmp_path}", "data.leakage.check_overlap=false"]
    cfg, _ = prepare(compose(overrides))
    t = cfg.train
    assert (t.method, t.gradient_checkpointing, t.precompute_ref_log_probs) == ("lora", True, True)
    assert (t.max_steps, t.epochs, t.max_length, t.num_processes) == (-1, 2, 1024, 8)
    pairs = 2 * 10_000 * 95 // 100  # data=paper_3h: two sources of helpful, 10000 each, 5% held out
    jobs, pl = plan(cfg, profile="H100", mfu=0.4)
    row = next(j for j in jobs if j.name == "helpful specialist")
    n, tokens, passes = LLAMA3_8B, 1024, 2
    per_sequence = 2 * n * tokens + 2 * n * tokens + 2 * n * tokens
    expected = pairs * passes * 2 * per_sequence + pairs * 2 * (2 * n * tokens)
    assert pl.n == n and row.status == "to run" and row.gpus == 8
    assert row.flops == pytest.approx(expected, rel=1e-12)
    assert gpu_hours(row.flops, "H100", 0.4) == pytest.approx(expected / (989e12 * 0.4) / 3600)
    assert row.mem == 2 * n  # LoRA: the frozen bf16 weights, the reference the same weights
    assert row.disk == pytest.approx(2 * n * 1.01)  # merge_adapter: merged weights and the adapter
    assert f"{pairs} pairs x 2 passes x 1024 tokens" in row.note
    text = render(jobs, pl)
    assert "8.03B parameters" in text and "jobs: " in text and "GPU-hours to run:" in text


def test_the_formulas_for_full_fine_tuning_and_sft():
    n, t = 1e9, 100
    # full DPO: backward 4NT, no checkpointing, reference forward every pass (not precomputed)
    assert train_flops(n, 10, t, kind="dpo", lora=False, passes=3, checkpointing=False,
                       precompute_ref=False) == 10 * 3 * 2 * 6 * n * t + 10 * 3 * 2 * 2 * n * t  # fmt: skip
    # SFT: one sequence per example, no reference
    assert train_flops(n, 10, t, kind="sft", lora=False, passes=2, checkpointing=True,
                       precompute_ref=False) == 10 * 2 * 8 * n * t  # fmt: skip
    # bf16 weights and grads, fp32 Adam moments and master: 16 bytes, + the bf16 reference
    assert train_memory(n, lora=False, dtype="bfloat16", gpus=8, sharded=False,
                        precompute_ref=False) == 18 * n  # fmt: skip
    assert train_memory(n, lora=False, dtype="bfloat16", gpus=8, sharded=True,
                        precompute_ref=True) == 16 * n / 8  # fmt: skip
    assert train_memory(n, lora=False, dtype="float32", gpus=1, sharded=False,
                        precompute_ref=True) == 16 * n  # fmt: skip
    assert set(GPU_PROFILES) == {"A100", "H100", "H200"}


def test_a_plan_marks_what_the_cache_holds(small_cfg, session_root, small_base, small_specialists):
    """The small world's data, θ0 and specialists are cached (the session's fixtures); a merge
    grid point no test runs, its evaluations and what depends on its choice are to run."""
    from hhh_bench.pipeline import prepare

    cfg, _ = prepare(compose([f"root={session_root}", "logger=none", *SMALL_WORLD,
                              "pipeline.mixtures=[]", "pipeline.oracle.enabled=false",
                              "pipeline.merge_grid={task_arithmetic: {scaling: [0.37]}}"]))  # fmt: skip
    jobs, pl = plan(cfg)
    status = {(j.stage, j.name): j.status for j in jobs}
    assert status[("data", "data")] == "cached" and status[("base", "base")] == "cached"
    for d in ("helpful", "honest", "harmless"):
        assert status[("train", f"{d} specialist")] == "cached"
    assert status[("merge", "task_arithmetic scaling=0.37")] == "to run"
    assert status[("eval", "task_arithmetic scaling=0.37 (validation)")] == "to run"
    assert status[("eval", "task_arithmetic: chosen (test)")] == "to run"
    assert [j.stage for j in jobs][-1] == "report"
    assert not list(session_root.glob("merge/.*tmp*"))  # nothing computed, nothing begun


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mfu", "0"], "--mfu 0.0: give a share in (0, 1]"),
        (["--gpu", "V100"], "invalid choice: 'V100'"),
        (["+train.learnin_rate=0.1"], "train.learnin_rate"),
        (["seed=-1"], "seed=-1 must be in [0, 2**32 - 1]"),
        # what stage=all refuses at once, plan refuses too (battery 12, F15)
        (["seeds=[0,1]", "pipeline.base_seed=0"], "pipeline.base_seed=0 asks for one θ0 for every"),
    ],
)
def test_bad_plan_arguments_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) if argv[0].startswith("--") else _returns(2) as rc:
        rc.value = SUBCOMMANDS["plan"](argv)
    assert message in capsys.readouterr().err


class _returns:
    """A context that checks the exit status a subcommand returned (no SystemExit)."""

    def __init__(self, code: int) -> None:
        self.code, self.value = code, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        assert exc[0] is None and self.value == self.code
        return False
