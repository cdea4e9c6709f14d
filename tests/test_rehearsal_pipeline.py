"""The real path rehearsed (issue 12): the pipeline on the offline stand-ins, end to end; and the
defects the rehearsal exposed, each with a test: selection on a holdout never reported, the
leakage guard in the data stage, merges reading adapters, training under accelerate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, compose
from hhh_bench.stages.train_launch import free_port

TINY_WORLD = [
    "data.world.n_known.train=10", "data.world.n_known.validation=4", "data.world.n_known.test=4",
    "data.world.n_unknown.sft=4", "data.world.n_unknown.train=8",
    "data.world.n_unknown.validation=4", "data.world.n_unknown.test=4",
    "data.world.n_benign_objects=6", "data.world.n_harmful_objects=6",
    "data.world.pairs_per_dimension=32", "data.world.eval_items_per_kind=8",
    "model.base_sft.enabled=false", "logger=none",
]  # fmt: skip


# -- selection never uses the report split -------------------------------------------------------


class _Task:
    def __init__(self, n: int) -> None:
        self.eval_docs = list(range(n))


class _Manager:
    """lm-eval's TaskManager.load, on made-up tasks of given sizes."""

    def __init__(self, tasks: dict) -> None:
        self.tasks = tasks

    def load(self, names: list) -> dict:
        return {"tasks": {n: self.tasks[n] for n in names}}


def test_holdout_parts_are_disjoint_seeded_and_cover_every_item():
    """A suite with one split: ``select`` and ``report`` are disjoint, together every item,
    ``select`` holds round(fraction·N) items, and the draw depends on the seed and the task."""
    from hhh_bench.evaluation.harness import holdout_indices

    sizes = {"a": 10, "b": 7, "c": 2}
    tm = _Manager({n: _Task(k) for n, k in sizes.items()})

    def parts(seed: int, part: str) -> dict:
        return holdout_indices(list(sizes), tm, {"fraction": 0.3, "seed": seed, "part": part})

    sel, rep = parts(0, "select"), parts(0, "report")
    for name, n in sizes.items():
        a, b = set(sel[name]["indices"]), set(rep[name]["indices"])
        assert not a & b and a | b == set(range(n))
        assert len(a) == min(n - 1, max(1, int(0.3 * n + 0.5)))  # a: 3, b: 2, c: 1
    assert parts(0, "select") == sel  # deterministic
    assert parts(1, "select")["a"]["indices"] != sel["a"]["indices"]  # seeded
    capped = holdout_indices(["a"], tm, {"fraction": 0.3, "seed": 0, "part": "report"}, limit=2)
    assert capped["a"]["indices"] == sorted(rep["a"]["indices"])[:2]
    with pytest.raises(ValueError, match="'one' has 1 item"):
        holdout_indices(
            ["one"], _Manager({"one": _Task(1)}), {"fraction": 0.3, "seed": 0, "part": "select"}
        )


def test_real_suite_chooses_on_a_holdout_and_reports_on_the_rest():
    """eval=harness_3h (before: select_split null, which crashed stage=all at its first merge)."""
    from hhh_bench.core.config import EvalConfig, load
    from hhh_bench.stages.common import to_dict

    e = load(EvalConfig, to_dict(compose(["eval=harness_3h"]).eval))
    assert e.select_split == "validation" != e.report_split and e.holdout == {
        "fraction": 0.2,
        "seed": 0,
    }


# -- the leakage guard runs in the data stage ----------------------------------------------------


def _rehearsal_data_cfg(tmp_path: Path, honest_rows: Path, *extra: str):
    fixtures = REPO / "tests" / "assets"
    src = fixtures / "rehearsal" / "sources"
    return compose(
        [
            "experiment=paper_llama3", "+rehearsal=small", f"root={tmp_path}", "logger=none",
            f"rehearsal.fixtures={fixtures}", f"data.cache_dir={tmp_path / 'cache'}",
            f"data.sources.helpful=[{{name: hh_rlhf_helpful, path: {src / 'hh_rlhf_helpful_base.jsonl'}}}]",
            f"data.sources.honest=[{{name: halueval_qa, path: {honest_rows}}}]",
            f"data.sources.harmless=[{{name: pku_saferlhf_harmless, path: {src / 'pku_saferlhf.jsonl'}}}]",
            *extra,
        ]
    )  # fmt: skip


def _with_a_truthfulqa_question(tmp_path: Path) -> tuple[Path, str]:
    """The rehearsal's HaluEval QA fixture with one question replaced by a TruthfulQA item the
    suite evaluates (stand-in of truthfulqa_mc2)."""
    fixtures = REPO / "tests" / "assets" / "rehearsal"
    tqa = json.loads((fixtures / "eval" / "truthfulqa_mc.jsonl").read_text().splitlines()[0])
    rows = [
        json.loads(x) for x in (fixtures / "sources" / "halueval_qa.jsonl").read_text().splitlines()
    ]
    rows[0]["question"] = tqa["question"]
    out = tmp_path / "halueval_qa_leaky.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, tqa["question"]


def test_data_stage_fails_on_a_training_pair_that_is_an_eval_item(tmp_path):
    from hhh_bench.data.leakage import LeakageError
    from hhh_bench.stages.data import run_data

    leaky, question = _with_a_truthfulqa_question(tmp_path)
    cfg = _rehearsal_data_cfg(tmp_path, leaky, "data.leakage.on_overlap=fail")
    with pytest.raises(LeakageError, match=r"halueval_qa x truthfulqa_mc2: 1 shared eval prompt"):
        run_data(cfg)
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").glob("*/manifest.json"))


def test_data_stage_drops_a_training_pair_that_is_an_eval_item(tmp_path):
    from hhh_bench.stages.data import run_data

    leaky, question = _with_a_truthfulqa_question(tmp_path)
    out = run_data(_rehearsal_data_cfg(tmp_path, leaky))  # paper_3h: on_overlap drop
    leak = out["manifest"]["leakage"]
    assert (
        leak["overlap_checked"] and leak["overlap"]["passed"] and leak["dropped_eval_overlap"] == 1
    )
    assert "truthfulqa_mc2" in leak["eval_sets"] and "halueval_qa_mc" in leak["eval_sets"]
    honest = (Path(out["dir"]) / "prefs" / "honest_train.jsonl").read_text()
    assert question not in honest


# -- merges read adapters ------------------------------------------------------------------------


def test_merges_read_the_adapter_when_a_specialist_has_one():
    from hhh_bench.pipeline import eval_input, merge_input

    lora_merged = {"path": "/r/t/k", "model_path": "/r/t/k", "adapter_path": "/r/t/k/adapter"}
    full = {"path": "/r/t/f", "model_path": "/r/t/f", "adapter_path": None}
    assert merge_input(lora_merged) == "/r/t/k/adapter"  # exact factors, not bf16 weights
    assert eval_input(lora_merged) == "/r/t/k" and merge_input(full) == eval_input(full) == "/r/t/f"


# -- training under accelerate launch -------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero3"])
def test_accelerate_configs_load(name):
    """accelerate's own loader accepts each shipped launch config."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "accelerate" / f"{name}.yaml"))
    assert cfg.num_processes >= 1 and cfg.compute_environment.value == "LOCAL_MACHINE"


@pytest.mark.e2e
@pytest.mark.rehearse
def test_training_under_accelerate_launch_with_two_processes(tmp_path):
    """`accelerate launch --num_processes 2` with accelerate/ddp.yaml trains on the CPU
    (gloo): one trained folder written by rank 0, then evaluated into a results row."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    exe = Path(sys.executable).parent
    common = [*TINY_WORLD, f"root={tmp_path}", "threads=1"]
    subprocess.run([exe / "hhh-bench", "stage=base", *common], check=True, env=env, timeout=600,
                   capture_output=True)  # fmt: skip
    run = subprocess.run(
        [exe / "accelerate", "launch", "--config_file", str(REPO / "accelerate" / "ddp.yaml"),
         "--num_processes", "2", "--main_process_port", str(free_port()), "--mixed_precision",
         "no", "-m", "hhh_bench", "stage=train",
         *common, "train.max_steps=2", "data.dimensions=[helpful]"],
        env=env, timeout=600, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    (trained,) = [p for p in (tmp_path / "train").iterdir() if not p.name.startswith(".")]
    info = json.loads((trained / "train_info.json").read_text())
    assert info["steps"] == 2 and info["counts"] == {"helpful": 32}
    # the reference log-probs were precomputed (the default) through rank 0's on-disk dataset,
    # which is gone once training ends; the libraries' bars and our INFO lines are in the log
    # files of the ranks (docs/console.md), not on the console
    logs = "".join(p.read_text() for p in tmp_path.glob("hydra/*/*.log"))
    assert "Computing reference log probs" in logs
    assert not list(trained.rglob("dpo_dataset"))
    assert "this rank writes nothing" in logs  # rank 1
    assert "\r" not in run.stdout + run.stderr
    ev = subprocess.run(
        [exe / "hhh-bench", "stage=eval", *common, f"+eval.model={trained}"], env=env, timeout=600,
        capture_output=True, text=True,
    )  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rows[-1]["artifacts"]["model"] == str(trained) and 0 <= rows[-1]["average"] <= 1


@pytest.mark.e2e
@pytest.mark.rehearse
def test_stage_all_launches_only_training_in_two_processes(tmp_path):
    """`stage=all` with `train.num_processes=2` (accelerate/ddp.yaml, gloo on the CPU): the
    train stage launches each specialist's training in two processes (both ranks train, rank 0
    writes), and the data, base, merge, evaluation and report stages run once each."""
    exe = Path(sys.executable).parent
    grid = [
        f"pipeline.merge_grid.{m}=null" for m in ("ties", "dare_ta", "dare_ties", "tsv", "resm")
    ]
    run = subprocess.run(
        [exe / "hhh-bench", "stage=all", *TINY_WORLD, f"root={tmp_path}", "threads=1", "seeds=[0]",
         "train.max_steps=2", "train.num_processes=2",
         f"train.accelerate_config={REPO / 'accelerate' / 'ddp.yaml'}", "pipeline.mixtures=[]",
         "pipeline.oracle.enabled=false", "pipeline.tuning.emphasis=[]", *grid,
         "pipeline.merge_grid.task_arithmetic.scaling=[1.0]"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1200, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    for stage, n in (("data", 1), ("base", 1), ("train", 3), ("merge", 1), ("report", 1)):
        outs = [p for p in (tmp_path / stage).iterdir() if not p.name.startswith(".")]
        assert len(outs) == n or stage == "report", (stage, outs)
        lines = [x for x in run.stdout.splitlines() if re.match(rf"\[\s*\d+/\d+\] {stage}\b", x)]
        assert len(lines) == 1, (stage, lines)  # one line for the three specialists
    for info in (tmp_path / "train").glob("*/train_info.json"):
        assert json.loads(info.read_text())["steps"] == 2
    logs = "".join(p.read_text() for p in tmp_path.glob("hydra/*/*.log"))
    assert logs.count("in 2 processes: ") == 3
    assert logs.count("hhh-bench: rank 1 of 2: ") == 3 and logs.count("rank 0 of 2: ") == 3
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    once = [(r["name"], r["split"], r["setup_key"]) for r in rows]
    assert len(once) == len(set(once)), "a model was evaluated twice"
    assert {r["name"] for r in rows} >= {"base", "task_arithmetic"}


# -- the rehearsal, end to end -------------------------------------------------------------------


CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there
NO_NETWORK = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
              **{k: CLOSED for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                                     "ALL_PROXY", "all_proxy")}}  # fmt: skip
"""A compute node without network: the offline variables set, and every proxy variable at a
closed loopback port, so that any request a library still tried would fail, and say so."""
DOWNLOAD_ATTEMPT = re.compile(
    r"urlopen error|ProxyError|Connection refused|HTTPS?ConnectionPool|MaxRetryError|Max retries"
    r"|Error loading|ConnectTimeout|NameResolutionError|name resolution|127\.0\.0\.1:9|"
    r"Downloading|huggingface\.co/api",
    re.IGNORECASE,
)


def _rehearse(root: Path, experiment: str = "paper_llama3") -> subprocess.CompletedProcess:
    """``hhh-bench experiment=<experiment> +rehearsal=small`` into ``root``, one thread, with
    the network unreachable (:data:`NO_NETWORK`)."""
    return subprocess.run(
        [Path(sys.executable).parent / "hhh-bench", f"experiment={experiment}",
         "+rehearsal=small", f"root={root}", "logger=none", "threads=1"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **NO_NETWORK}, timeout=1500,
        capture_output=True, text=True,
    )  # fmt: skip


_rehearse_paper_llama3 = _rehearse


@pytest.mark.e2e
@pytest.mark.rehearse
@pytest.mark.parametrize("experiment", ["paper_mistral", "released_specialists"])
def test_the_other_real_path_experiments_rehearse_to_a_report(experiment, tmp_path):
    """The other two real-path experiments end to end on their stand-ins (Mistral's
    architecture; the released specialists merged as given, one of them a LoRA adapter), offline;
    a report with every merge method of the experiment's grid. Tests, not a loop after them, so
    that `make rehearse`'s two workers share them with paper_llama3's."""
    out = _rehearse(tmp_path, experiment)
    assert out.returncode == 0, out.stderr[-4000:]
    _no_download_attempt(out, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    methods = {r["method"] for r in rows if r["kind"] == "merge" and r["split"] == "test"}
    assert methods == set(compose([f"experiment={experiment}"]).pipeline.merge_grid)
    assert (tmp_path / "report" / "report.md").is_file()
    print(f"report: {tmp_path / 'report' / 'report.md'}")


def _no_download_attempt(out: subprocess.CompletedProcess, root: Path) -> None:
    """Nothing on the console or in the run's log files says a download was tried (issue 34:
    an offline compute node, once the caches hold what the run needs)."""
    texts = {"stdout": out.stdout, "stderr": out.stderr}
    texts.update({str(p): p.read_text(errors="replace") for p in root.glob("hydra/*/cli.log")})
    assert len(texts) > 2, "the run wrote no log file"
    for where, text in texts.items():
        hit = DOWNLOAD_ATTEMPT.search(text)
        assert hit is None, f"{where}: {text[max(hit.start() - 300, 0) : hit.end() + 300]}"


@pytest.mark.e2e
@pytest.mark.rehearse
def test_paper_llama3_rehearsal_runs_to_a_report(tmp_path):
    """experiment=paper_llama3 +rehearsal=small stage=all: stand-in Llama-3, the public sets'
    fixtures through their adapters, the experiment's LoRA DPO, every mixture and merge method,
    harness_3h with lm-eval's built-ins on local files; a report with every family."""
    out = _rehearse_paper_llama3(tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    _no_download_attempt(out, tmp_path)
    report = (tmp_path / "report" / "report.md").read_text()
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    test_rows = [r for r in rows if r["split"] == "test"]
    kinds = {r["kind"] for r in test_rows}
    assert kinds == {"base", "specialist", "mixture", "merge"}  # paper_llama3 runs no oracle
    mixtures = {r["mix_strategy"] for r in test_rows if r["kind"] == "mixture"}
    planned = compose(["experiment=paper_llama3"]).pipeline.mixtures
    assert mixtures == {m if isinstance(m, str) else m["name"] for m in planned}
    methods = {r["method"] for r in test_rows if r["kind"] == "merge"}
    assert methods == set(compose(["experiment=paper_llama3"]).pipeline.merge_grid)  # all 14
    stats = list((tmp_path / "stats").iterdir())  # one per specialist and kind, for every point
    assert len(stats) == 6, stats
    chosen = [r for r in test_rows if (r.get("extra") or {}).get("selected_on")]
    assert {r["extra"]["selected_on"] for r in chosen} == {"validation"}
    holdouts = {
        json.dumps(
            json.loads((Path(r["artifacts"]["eval_dir"]) / "results.json").read_text())["harness"][
                "holdout"
            ]["part"]
        )
        for r in rows
    }
    assert holdouts == {'"select"', '"report"'}
    for family in ("Merge: ties", "Merge: resm", "Mixture: "):
        assert family.split(": ")[1] in report or family in report
    # issue 32's 3H table: the headline columns in the main table, every cell with its n and
    # ± (one seed: the standard error over the items it is over); the likelihood probes in a
    # diagnostics table of their own. The judges in parse mode (stand-ins writing in their
    # graders' formats) give the MT-Bench and StrongREJECT-rubric columns.
    main = report.split("## Main table")[1].split("\n## ")[0]
    probes = report.split("## Diagnostics (outside the 3H scores)")[1].split("\n## ")[0]
    head = next(x for x in main.splitlines() if x.startswith("| Method |"))
    for col in ("Helpful", "Honest", "Harmless", "Avg", "Min", "Lc-win-rate", "Length (·)",
                "Asr-direct ↓", "Asr-attacked ↓", "Strongreject ↓", "Strongreject-rubric ↓",
                "Over-refusal ↓", "True-info", "Mt-score", "Orbench-over-refusal ↓"):  # fmt: skip
        assert f"| {col} |" in head + " |", (col, head)
    for col in ("Truthfulqa-mc2", "Halueval-qa-mc", "Pku-saferlhf-mc", "Mmlu", "Arc-challenge",
                "Win-vs-base"):  # fmt: skip
        assert col not in main and f"| {col} |" in probes + " |", col
    for table in (main, probes):
        for line in table.splitlines():
            if line.startswith("| ") and not line.startswith(("| Method", "| *")):
                cells = line.strip("| ").split(" | ")[1:]
                bad = [c for c in cells if not re.search(r"\d ± \d+\.\d+\*?\*? n=[1-9]", c)]
                assert not bad, (line, bad)
    # the root moved to another folder reruns with every stage reused (issue 26: keys hold
    # content and code, never a location)
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    tmp_path.rename(moved)
    again = _rehearse_paper_llama3(moved)
    assert again.returncode == 0, again.stderr[-4000:]
    summary = re.search(r"(\d+) stage run\(s\) computed, (\d+) reused", again.stdout)
    assert summary, again.stdout[-3000:]
    assert int(summary[1]) == 0 and int(summary[2]) > 50, summary[0]
