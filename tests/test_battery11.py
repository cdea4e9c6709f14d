"""Battery 11's findings (issue 27): each input it found silent-wrong or unclear, refused by name."""

from __future__ import annotations

import json
import math

import pytest

from hhh_bench.evaluation.harness import refuse_non_finite


def _raw(lls: list[list[float]], acc: float = 0.5) -> dict:
    docs = [{"doc_id": i, "filtered_resps": [[v, False] for v in row]} for i, row in enumerate(lls)]
    return {
        "results": {"toy3h_known_qa_val": {"acc,none": acc}},
        "samples": {"toy3h_known_qa_val": docs},
    }


def test_nan_log_likelihoods_of_finite_weights_are_refused_naming_model_task_and_count():
    """m07: merge.params.scaling=1e30 gives finite weights whose forward pass overflows."""
    refuse_non_finite(_raw([[-1.0, -2.0], [-0.5, -3.0]]), "m")  # finite: nothing said
    with pytest.raises(
        ValueError, match=r"model tsv \(/r/merge/k/model\).*1 of 2 items of toy3h_known_qa_val"
    ):
        refuse_non_finite(_raw([[math.nan, -2.0], [-0.5, -3.0]]), "tsv (/r/merge/k/model)")
    generated = {
        "results": {},
        "samples": {"gen": [{"filtered_resps": ["nan"]}, {"filtered_resps": ["inf"]}]},
    }
    refuse_non_finite(generated, "m")  # a generated answer "nan" is text, not a log-likelihood
    with pytest.raises(ValueError, match="metric acc of toy3h_known_qa_val = nan"):
        refuse_non_finite(_raw([[-1.0, -2.0]], acc=math.nan), "m")


_GUARD = {
    "kind": "guard",
    "model": "m",
    "mode": "logprob",
    "labels": ["unsafe", "safe"],
    "on_unparsed": "error",
}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"threshold": -1},
            r"eval.judges.refusal.threshold must be in a probability's range \[0, 1\].*got -1",
        ),
        ({"threshold": math.nan}, r"threshold must be a finite number in .*got nan"),
        ({"threshold": True}, r"threshold must be a finite number"),
        ({"threshold": 3, "labels": ["1", "5"], "label_values": [1, 5]}, None),  # an expected score
        (
            {"threshold": 6, "labels": ["1", "5"], "label_values": [1, 5]},
            r"label_values' range \[1, 5\]",
        ),
        (
            {"mode": "generate", "max_new_tokens": -3},
            r"max_new_tokens must be a whole number .*got -3",
        ),
        ({"mode": "generate", "max_new_tokens": True}, r"max_new_tokens must be a whole number"),
        ({"mode": "generate", "max_new_tokens": 1.5}, r"max_new_tokens must be a whole number"),
    ],
)
def test_a_judges_threshold_and_answer_length_are_checked(extra, message):
    """j11/j12: threshold -1 flagged every answer a refusal, nan none; j15: max_new_tokens=-3."""
    from hhh_bench.evaluation.judges import JudgeSpec

    if message is None:
        JudgeSpec.from_config("refusal", {**_GUARD, **extra})
        return
    with pytest.raises(ValueError, match=message):
        JudgeSpec.from_config("refusal", {**_GUARD, **extra})


def _merge_row(key: str, kappa: float, avg: float, **kw) -> dict:
    return {
        "row_key": key, "name": "resm", "kind": "merge", "method": "resm", "seed": 0,
        "split": "validation", "params": {"kappa": kappa, "device": "cpu"},
        "extra": {"grid_params": {"kappa": kappa}}, "model_key": f"m{kappa}",
        "tasks": {"t": {"acc": avg, "n": 10}}, "helpful": avg, "honest": avg, "harmless": avg,
        "average": avg, "min": avg, **kw,
    }  # fmt: skip


def test_two_configurations_with_byte_identical_weights_keep_a_row_each(tmp_path):
    """sw01/pe03: RESM's kappa had no effect on the toy model, so kappa=2, 3, 4 gave one eval key;
    the last row replaced the others and the chosen kappa=2 had "no validation score". A
    re-evaluation of the same configuration (re-scored, or an old row without the suffix, or
    run on another device) still supersedes."""
    from hhh_bench.tracking.store import append_result, read_results, row_identity

    path = tmp_path / "results.jsonl"
    for kappa in (2.0, 3.0, 4.0):
        append_result(path, _merge_row("e1:resm", kappa, 0.5))
    assert sorted(r["model_key"] for r in read_results(path)) == ["m2.0", "m3.0", "m4.0"]
    again = _merge_row("e1:resm", 2.0, 0.7, params={"kappa": 2.0, "device": "cuda"})
    append_result(path, {**again, "row_key": row_identity(again)})  # as build_row writes it
    rows = {r["model_key"]: r["average"] for r in read_results(path)}
    assert rows == {"m2.0": 0.7, "m3.0": 0.5, "m4.0": 0.5}
    base = {**_merge_row("e0:base", 0, 0.5), "params": {}, "extra": {}, "method": None}
    assert row_identity(base) == "e0:base"  # no configuration: the key as before


def test_a_missing_eval_folder_is_said_as_missing_not_as_log_samples_false(tmp_path):
    """rl05: a copied root without eval/<key> was told to evaluate with eval.log_samples=true."""
    from hhh_bench.tracking.paired import no_items_reason

    (tmp_path / "eval" / "kept").mkdir(parents=True)
    gone = {"row_key": "k:mix", "artifacts": {"eval_dir": str(tmp_path / "eval" / "gone")}}
    assert "eval folder eval/gone is missing from this root" in no_items_reason(gone)
    kept = {"row_key": "k:mix", "artifacts": {"eval_dir": str(tmp_path / "eval" / "kept")}}
    assert "eval.log_samples=true" in no_items_reason(kept)


def test_a_hand_written_row_with_split_null_is_named_by_file_line_and_field(tmp_path):
    """s07: a row with ``split: null`` (no digest) passed the reader and vanished from every
    table; now it is refused by file, line and field, or skipped and counted."""
    import json

    from hhh_bench.tracking.store import StoreError, read_results, scan_results

    good = {**_merge_row("e1:resm", 2.0, 0.5), "split": "test"}
    path = tmp_path / "results.jsonl"
    path.write_text(
        json.dumps(good) + "\n" + json.dumps({**good, "row_key": "e2:x", "split": None}) + "\n"
    )
    with pytest.raises(StoreError, match=r"results.jsonl, line 2: .*'e2:x': split is null"):
        read_results(path)
    scan = scan_results(path, skip_invalid=True)
    assert [r["row_key"] for r in scan.latest()] == ["e1:resm"]
    assert [s.line for s in scan.skipped] == [2]


def test_plan_says_a_mistyped_key_as_the_main_cli_does():
    """pn04: ``hhh-bench plan ... train.learnin_rate=3`` advised Hydra's ``+train.learnin_rate``."""
    from hhh_bench.pipeline import compose_run

    with pytest.raises(
        ValueError,
        match=r"^train.learnin_rate is not a setting \(did you mean train.learning_rate\?\)",
    ):
        compose_run(["train.learnin_rate=3"])


def test_a_bad_wandb_mode_from_the_environment_names_the_variable(monkeypatch):
    """env02: ``WANDB_MODE=bogus`` was reported as ``logger.mode``, which the user never set."""
    from hhh_bench.tracking.wandb_log import wandb_mode

    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ValueError, match=r"^the environment variable WANDB_MODE must be .*'bogus'"):
        wandb_mode({"name": "wandb"})
    with pytest.raises(ValueError, match=r"^logger.mode must be .*'loud'"):
        wandb_mode({"name": "wandb", "mode": "loud"})


def test_the_merge_commands_pickle_refusal_names_its_flag(tmp_path, capsys):
    """mk_pk1: ``hhh-bench merge`` said "pass allow_pickle=true"; its switch is --allow-pickle."""
    from hhh_bench.mergeyaml import main

    for d in ("base", "a"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "config.json").write_text("{}")
        (tmp_path / d / "pytorch_model.bin").write_bytes(b"never read")
    yaml = tmp_path / "m.yaml"
    yaml.write_text(
        f"merge_method: task_arithmetic\nbase_model: {tmp_path}/base\nmodels:\n  - model: {tmp_path}/a\n"
    )
    assert main([str(yaml), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "only pickle checkpoints" in err and "pass --allow-pickle if you trust" in err


@pytest.mark.parametrize(
    ("stage", "refused"), [("base", True), ("all", True), ("data", False), ("report", False)]
)
def test_the_tiny_model_on_real_data_is_refused_before_any_stage(stage, refused):
    """d26: data=paper_3h with the default model=tiny stopped at a missing vocab.txt."""
    from conftest import compose
    from hhh_bench.core.config import GROUPS, load
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import check_tiny_world

    cfg = to_dict(compose(["data=paper_3h", f"stage={stage}"]))
    groups = {g: load(GROUPS[g], cfg[g], g) for g in ("model", "data")}
    if not refused:
        check_tiny_world(cfg, groups)
        return
    with pytest.raises(
        ValueError, match=r"^model=tiny with data=paper_3h .*use data=toy3h, or a hub model"
    ):
        check_tiny_world(cfg, groups)


def test_a_store_of_two_experiments_says_so_with_rows_and_lines(tmp_path):
    """r06: name=b11 said "keep name=zzz" and name=zzz said "keep name=b11"."""
    import json

    from hhh_bench.tracking.store import check_one_experiment

    path = tmp_path / "results.jsonl"
    rows = [{**_merge_row(f"e{i}:x", 2.0, 0.5), "experiment": "b11"} for i in range(3)]
    rows.append({**rows[0], "experiment": "zzz"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("b11", "zzz"):
        with pytest.raises(
            ValueError,
            match=r"holds rows of 2 experiments \(b11: 3 rows, lines 1, 2, 3; zzz: 1 row, line 4\)",
        ):
            check_one_experiment(path, name)


@pytest.mark.parametrize(
    ("skip", "said"), [(False, "a torn last write"), (True, "report.skip_invalid=true")]
)
def test_the_consoles_skipped_line_note_says_why_as_the_setting_is(skip, said, capsys):
    """s05: a torn last line was noted "(report.skip_invalid)" with that setting false."""
    from omegaconf import OmegaConf

    from hhh_bench.stages.report import REPORT_FILES, _show

    rep = {
        **{k: "f" for k in REPORT_FILES},
        "n_rows": 1,
        "main_table": "|t|",
        "skipped": 1,
        "answer_line": "A",
    }
    _show(
        OmegaConf.create({"name": "x", "report": {"skip_invalid": skip}}), "st", rep, cached=False
    )
    out = capsys.readouterr()
    assert f"skipped 1 invalid line(s) of the store ({said}" in out.out + out.err


def test_a_newer_smaller_evaluation_setup_is_said_on_the_console():
    """ev03r: after one eval with a user task, the console's table held only `base` and said
    nothing of the 10 rows of the older setup (only report.md did)."""
    from hhh_bench.tracking.sections import setup_console_line

    line = setup_console_line([{"name": "base"}], [[{"name": str(i)} for i in range(10)]])
    assert line == (
        "note: the table shows the newest evaluation setup (1 row(s)); an older setup of this "
        "store holds 10 row(s): see report.md (Other evaluation setups)"
    )
    assert setup_console_line([{"name": "base"}] * 3, [[{"name": "x"}]]) is None


def test_the_consoles_table_shows_names_without_markdown_escapes(capsys):
    """Cosmetic (ev17, w01): the console showed `base \\[2\\]`; report.md keeps the escapes."""
    from omegaconf import OmegaConf

    from hhh_bench.stages.report import REPORT_FILES, _show
    from hhh_bench.tracking.markdown import md_text

    table = f"| {md_text('base [2]')} | {md_text('a|b')} | {md_text('x<y')} |"
    rep = {**{k: "f" for k in REPORT_FILES}, "n_rows": 1, "main_table": table, "answer_line": "A"}
    _show(OmegaConf.create({"name": "x"}), "st", rep, cached=False)
    assert "| base [2] | a\\|b | x<y |" in capsys.readouterr().out


def test_the_rehearsal_checks_the_users_judges_before_its_stand_ins_replace_them(tmp_path):
    """j15: under +rehearsal=small a judge's max_new_tokens=-3 was silently replaced by the
    stand-in's value; the user's judges are checked as the real path checks them, first."""
    from conftest import compose
    from hhh_bench.rehearsal import _standin_judges
    from hhh_bench.stages.common import to_dict

    cfg = to_dict(compose(["experiment=paper_llama3", "+rehearsal=small", f"root={tmp_path}",
                           "eval.judges.safety.max_new_tokens=-3"]))  # fmt: skip
    with pytest.raises(ValueError, match=r"eval.judges.safety.*max_new_tokens must be a whole "
                       r"number.*got -3.*before the rehearsal's stand-in judges"):  # fmt: skip
        _standin_judges(cfg, cfg["eval"]["judges"])
    assert not (tmp_path / "rehearsal").exists()  # refused before any stand-in was built


def test_a_byte_identical_copy_of_theta0_is_the_base_its_specialists_were_trained_from(tmp_path):
    """m19: a copy of θ0's output folder (records and manifest with it) given as merge.base
    was refused as a folder hhh-bench cannot match; it is matched by its files' content now,
    and an edited copy is still refused by name."""
    import shutil

    from hhh_bench.core import content
    from hhh_bench.stages.merge import check_same_base

    out = tmp_path / "root" / "base" / "k0"  # where the cache writes θ0: <root>/base/<key>
    out.mkdir(parents=True)
    (out / "config.json").write_text('{"model_type": "llama"}\n')
    (out / "model.safetensors").write_bytes(b"weights")
    (out / "base_info.json").write_text('{"seconds": 1.0}')
    (out / content.KEY_FILE).write_text(json.dumps({"stage": "base", "key": "k0"}))
    theta0 = content.write_manifest(out, "base_info.json").identity()
    spec = tmp_path / "root" / "train" / "k1"
    spec.mkdir(parents=True)
    (spec / content.KEY_FILE).write_text(json.dumps(
        {"stage": "train", "key": "k1", "payload": {"base": theta0}, "inputs": ["base/k0"]}))  # fmt: skip
    copy = tmp_path / "mine" / "theta0"
    shutil.copytree(out, copy)
    check_same_base(str(copy), [str(spec)])  # the same θ0
    (copy / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(
        ValueError,
        match=r"was trained from the θ0 stage output base/k0 \(.*"
        r"base/k0\); merge.base='.*theta0' is not a copy of its model files: its "
        r"model\.safetensors differs",
    ):  # fmt: skip (battery 14, F1: named)
        check_same_base(str(copy), [str(spec)])
