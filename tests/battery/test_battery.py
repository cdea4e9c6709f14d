"""The acceptance battery of issue 27: what a user does wrong, one case each, run as typed.

Every case runs ``hhh-bench`` in-process (:func:`battery_support.hhh`) on one bad input (a value
on the command line, a file, a model folder, a plugin, a prepared root tampered with) and checks
what the user sees (:func:`battery_support.assert_refused`): exit status 2 (or the documented
status), a message naming the input and what is wrong, no traceback, and nothing added under
the root but Hydra's log folder. ``make battery`` runs it (``-m battery``; ``make test`` leaves
it out); docs/testing.md.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from battery_support import assert_refused, hhh, pattern, snapshot

from conftest import SMALL_WORLD


@pytest.fixture(scope="module", autouse=True)
def _punkt_tab(tmp_path_factory):
    """The battery's machine has NLTK's ``punkt_tab`` (as one prepared for IFEval), so that cases
    about the harness suite's other inputs reach them; the refusal of a machine without it has
    its own test (tests/test_input_contracts.py)."""
    from hhh_bench.rehearsal import ensure_standin_punkt, use_nltk_data

    use_nltk_data(ensure_standin_punkt(tmp_path_factory.mktemp("nltk_data")))


pytestmark = pytest.mark.battery

# The small world with a 2-epoch θ0: a case that got past its check would run small stages.
QUICK = [w for w in SMALL_WORLD if not w.startswith("model.base_sft.epochs")] + [
    "model.base_sft.epochs=2",
    "threads=1",
]
REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets" / "sources"


@pytest.fixture(autouse=True)
def _plain_console(monkeypatch):
    """As a user runs it: no --verbose (no tracebacks on the console), W&B offline."""
    for name in ("HYDRA_FULL_ERROR", "HHH_VERBOSE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cwd = os.getcwd()
    yield
    os.chdir(cwd)


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "root"


def refused(root: Path, *args: str, says: tuple[str, ...] | str, code: int = 2, quick=True):
    """``hhh-bench root=ROOT logger=none [QUICK] ARGS`` is refused: :func:`assert_refused`."""
    before = snapshot(root)
    o = hhh(f"root={root}", "logger=none", *(QUICK if quick else []), *args)
    assert_refused(o, before, root, *((says,) if isinstance(says, str) else says), code=code)
    return o


def case(id_: str, *args: str, says: str | tuple[str, ...]):
    return pytest.param(list(args), says, id=id_)


# ---------------------------------------------------------------------------------------------
# 1. The command line: a group option, a key or the override's syntax that Hydra cannot compose


COMPOSE = [
    case("merge=tie", "merge=tie", says=pattern("Could not find 'merge/tie'", "ties")),
    case("merge=TIES", "merge=TIES", says=pattern("Could not find 'merge/TIES'")),
    case("merge=_common", "merge=_common", says=pattern("Could not find 'merge/_common'")),
    case("merge=merge_common", "merge=merge_common", says="Could not find 'merge/merge_common'"),
    case("experiment=nonexistent", "experiment=nonexistent",
         says=pattern("Could not find 'experiment/nonexistent'", "toy3h")),
    case("model=gpt5", "model=gpt5", says=pattern("Could not find 'model/gpt5'", "tiny")),
    case("data=paper", "data=paper", says=pattern("Could not find 'data/paper'", "paper_3h")),
    case("eval=harness", "eval=harness", says=pattern("Could not find 'eval/harness'")),
    case("train=ppo", "train=ppo", says=pattern("Could not find 'train/ppo'", "dpo")),
    case("mix=uniforn", "mix=uniforn", says=pattern("Could not find 'mix/uniforn'", "uniform")),
    case("logger=tensorboard", "logger=tensorboard", says="Could not find 'logger/tensorboard'"),
    case("merge_engine=fast", "merge_engine=fast", says="Could not find 'merge_engine/fast'"),
    case("pipeline=quick", "pipeline=quick", says="Could not find 'pipeline/quick'"),
    case("report=fancy", "report=fancy", says="Could not find 'report/fancy'"),
    case("hydra/launcher=nonexistent", "hydra/launcher=nonexistent",
         says="Could not find 'hydra/launcher/nonexistent'"),
    case("unknown key foo", "foo=1", says=pattern("foo is not a setting", "+foo=...")),
    case("unknown nested key", "merge.paramz.scaling=1",
         says=pattern("merge.paramz is not a setting", "did you mean merge.params?")),
    case("key typo without +", "train.learnin_rate=0.1",
         says=pattern("train.learnin_rate is not a setting", "did you mean train.learning_rate?")),
    case("grid knob typo", "pipeline.merge_grid.ties.densty=[0.2]",
         says="did you mean pipeline.merge_grid.ties.density?"),
    case("world knob typo", "data.world.n_know.train=3", says="data.world.n_know"),
    case("unclosed list", "merge.params.scaling=[1,", says=pattern("'merge.params.scaling=[1,' is not a valid override")),
    case("seeds unclosed", "seeds=[0,1", says=pattern("'seeds=[0,1' is not a valid override")),
    case("--cfg bogus", "--cfg", "bogus", says=pattern("--cfg", "invalid choice: 'bogus'")),
    case("+accelerate=fsdp", "+accelerate=fsdp",
         says=pattern("+accelerate=fsdp", "accelerate is no config group")),
    case("accelerate.key", "accelerate.num_processes=2",
         says=pattern("accelerate.num_processes=2", "accelerate launch")),
    case("sweep without -m", "experiment=merge_optuna", says=pattern("a sweep", "add -m")),
]  # fmt: skip


@pytest.mark.parametrize(("args", "says"), COMPOSE)
def test_compose(root, args, says):
    refused(root, *args, says=says)


# ---------------------------------------------------------------------------------------------
# 2. Values: refused when the config is checked, before any stage


VALUES = [
    # seeds
    case("seeds=2", "seeds=2", says=pattern("seeds=2 must be a list of integers", "seeds=[2]")),
    case("seeds=[a]", "seeds=[a]", says=pattern("seeds=['a']", "not integer")),
    case("seeds=[1,1]", "seeds=[1,1]", says=pattern("seeds=[1, 1] repeats [1]")),
    case("seeds=[0,1.5]", "seeds=[0,1.5]", says=pattern("seeds=[0, 1.5]", "not integer")),
    case("seeds=abc", "seeds=abc", says=pattern("seeds='abc' must be a list of integers")),
    case("seed=abc", "seed=abc", says=pattern("seed='abc' must be an integer")),
    case("seed=1.5", "seed=1.5", says=pattern("seed=1.5 must be an integer")),
    case("stage=nonsense", "stage=nonsense", says=pattern("unknown stage 'nonsense'", "merge")),
    case("stage=Data", "stage=Data", says=pattern("unknown stage 'Data'")),
    # eval
    case("eval.limit=0", "eval.limit=0", says=pattern("eval.limit=0", "positive integer")),
    case("eval.limit=-5", "eval.limit=-5", says=pattern("eval.limit=-5", "positive integer")),
    case("eval.limit=1.5", "eval.limit=1.5", says=pattern("eval.limit=1.5", "(0, 1)")),
    case("eval.limit=true", "eval.limit=true", says=pattern("eval.limit")),
    case("eval.limit=abc", "eval.limit=abc", says=pattern("eval.limit", "abc")),
    case("eval.metric=accc", "eval.metric=accc",
         says=pattern("eval.metric='accc' is not a metric of task", "acc_norm")),
    case("eval.metrics.<task> typo", "+eval.metrics.unknown_qa=sfot",
         says=pattern("eval.metrics.unknown_qa='sfot'")),
    case("eval.batch_size=-1", "eval.batch_size=-1", says=pattern("eval.batch_size", "-1")),
    case("eval.batch_size=0", "eval.batch_size=0", says=pattern("eval.batch_size", "0")),
    case("eval.batch_size=big", "eval.batch_size=big", says=pattern("eval.batch_size", "big")),
    case("eval.select_split=test for merge_eval", "eval.select_split=test", "stage=merge_eval",
         says=pattern("eval.select_split", "'test'")),
    case("eval.select_by typo", "eval.select_by=averge", "stage=merge_eval",
         says=pattern("eval.select_by='averge'", "average")),
    case("eval.report_split typo", "eval.report_split=tset", "stage=eval",
         says=pattern("eval.report_split", "tset")),
    case("eval.bootstrap_iters=-1", "eval.bootstrap_iters=-1",
         says=pattern("eval.bootstrap_iters", "-1")),
    case("eval.summary_bootstrap_iters=-1", "eval=harness_3h", "model.device=cpu",
         "eval.summary_bootstrap_iters=-1", says=pattern("eval.summary_bootstrap_iters", "-1")),
    # devices
    case("model.device=cdua", "model.device=cdua", says=pattern("model.device='cdua' is not a device")),
    case("model.device=auto", "model.device=auto", says=pattern("model.device='auto'")),
    case("model.device=cuda (none here)", "model.device=cuda", "stage=base",
         says=pattern("model.device=cuda", "no usable CUDA device")),
    case("model.device=mps (none here)", "model.device=mps",
         says=pattern("model.device=mps", "no usable MPS device")),
    case("train.device=gpu", "train.device=gpu", says=pattern("train.device='gpu' is not a device")),
    case("merge_engine.device=cuda1", "merge_engine.device=cuda1",
         says=pattern("merge_engine.device='cuda1'")),
    case("merge.params.device=cdua", "merge.params.device=cdua",
         says=pattern("'device'", "'cdua'")),
    # model
    case("model.dtype=float13", "model.dtype=float13", says=pattern("model.dtype", "float13")),
    case("model.kind=gguf", "model.kind=gguf", says=pattern("model.kind", "gguf")),
    case("model.spec.hidden_size=-1", "model.spec.hidden_size=-1",
         says=pattern("model.spec", "hidden_size", "-1")),
    case("model.spec.num_layers=0", "model.spec.num_hidden_layers=0",
         says=pattern("model.spec", "num_hidden_layers", "0")),
    case("model.base_sft.epochs=-1", "model.base_sft.epochs=-1",
         says=pattern("model.base_sft.epochs", "-1")),
    case("model.base_sft.batch_size=0", "model.base_sft.batch_size=0",
         says=pattern("model.base_sft.batch_size", "0")),
    case("model.base_sft.warmup_ratio=2", "model.base_sft.warmup_ratio=2",
         says=pattern("model.base_sft.warmup_ratio", "2")),
    case("model.base_sft.learning_rate=0", "model.base_sft.learning_rate=0",
         says=pattern("model.base_sft.learning_rate", "0")),
    # train
    case("train.learning_rate=abc", "train.learning_rate=abc",
         says=pattern("train.learning_rate must be float", "'abc'")),
    case("train.learning_rate=-1", "train.learning_rate=-1", says=pattern("train.learning_rate", "> 0")),
    case("train.learning_rate=nan", "train.learning_rate=nan", says=pattern("train.learning_rate", "nan")),
    case("train.epochs=0", "train.epochs=0", says=pattern("train.epochs", "> 0")),
    case("train.batch_size=0", "train.batch_size=0", says=pattern("train.batch_size", "> 0")),
    case("train.batch_size=1.5", "train.batch_size=1.5", says=pattern("train.batch_size", "1.5")),
    case("train.grad_accum=0", "train.grad_accum=0", says=pattern("train.grad_accum", "0")),
    case("train.beta=-1", "train.beta=-1", says=pattern("train.beta", "> 0")),
    case("train.method=qlora", "train.method=qlora", says=pattern("train.method", "'qlora'")),
    case("train.max_length=0", "train.max_length=0", says=pattern("train.max_length", "> 0")),
    case("train.warmup_ratio=2", "train.warmup_ratio=2", says=pattern("train.warmup_ratio", "2")),
    case("train.weight_decay=-1", "train.weight_decay=-1", says=pattern("train.weight_decay", "-1")),
    case("train.lr_scheduler_type typo", "train.lr_scheduler_type=cosin",
         says=pattern("train.lr_scheduler_type", "'cosin'")),
    case("train.loss_type typo", "train.loss_type=hinge2", says=pattern("train.loss_type", "hinge2")),
    case("train.gradient_checkpointing=maybe", "train.gradient_checkpointing=maybe",
         says=pattern("train.gradient_checkpointing", "maybe")),
    case("train.lora.r=0", "train=dpo_lora", "train.lora.r=0", says=pattern("train.lora.r", "0")),
    case("train.lora.bias typo", "train=dpo_lora", "train.lora.bias=some",
         says=pattern("train.lora.bias", "some")),
    case("train.loss_weights length", "train.loss_type=[sigmoid,sft]", "train.loss_weights=[1.0]",
         says=pattern("loss_weights", "loss_type")),
    # data
    case("data.dimensions typo", "data.dimensions=[helpfull]",
         says=pattern("data.dimensions", "helpfull")),
    case("data.dimensions=[]", "data.dimensions=[]", says=pattern("data.dimensions", "[]")),
    case("data.dimensions repeated", "data.dimensions=[helpful,helpful]", says="data.dimensions"),
    case("data.noise.flip_rate=1.5", "data.noise.flip_rate=1.5",
         says=pattern("data.noise.flip_rate", "1.5")),
    case("data.noise.flip_rate=-0.1", "data.noise.flip_rate=-0.1",
         says=pattern("data.noise.flip_rate", "-0.1")),
    case("data.noise.dimension typo", "data.noise.dimension=honset",
         says=pattern("data.noise.dimension", "honset")),
    case("data.world.n_known.train=-1", "data.world.n_known.train=-1", says="n_known.train"),
    case("data.world.n_values=99", "data.world.n_values=99", says=pattern("n_values", "99")),
    case("data.world.seed=1.5", "data.world.seed=1.5",
         says=pattern("data.world.seed=1.5 must be an integer")),
    case("data.world.seed='0'", "data.world.seed='0'",
         says=pattern("data.world.seed='0' must be an integer")),
    case("data.world.n_known.test=2.5", "data.world.n_known.test=2.5",
         says=pattern("data.world.n_known.test=2.5 must be an integer")),
    case("data.world.conflict_rate=true", "data.world.conflict_rate=true",
         says=pattern("data.world.conflict_rate=True must be a number")),
    # the fourth independent battery's (all accepted before, or named no key)
    case("data.world.seed=-5", "data.world.seed=-5", says="data.world.seed must be >= 0"),
    case("data.world.popular_value_weight=-1", "data.world.popular_value_weight=-1",
         says=pattern("popular_value_weight must be in (0, 1e6]")),
    case("data.world.sft_templates_per_fact=9", "data.world.sft_templates_per_fact=9",
         says=pattern("sft_templates_per_fact must be in [1, 5]")),
    case("trust_remote_code=maybe", "trust_remote_code=maybe",
         says=pattern("trust_remote_code='maybe' must be true or false")),
    case("threads=1.5", "threads=1.5", says=pattern("threads=1.5 must be an integer")),
    case("threads=two", "threads=two", says=pattern("threads='two' must be an integer")),
    case("name=../../x", "name=../../x", says=pattern("name must be one folder name")),
    case("train.beta=inf", "train.beta=inf", says=pattern("train.beta must be a finite number")),
    case("train.loss_weights negative", "train.loss_type=[sigmoid,sft]",
         "train.loss_weights=[1.0,-0.5]", says=pattern("train.loss_weights=[1.0, -0.5]", ">= 0")),
    case("eval weight nan", "eval.dimensions.helpful.known_qa=nan",
         says=pattern("eval.dimensions.helpful.known_qa: weight nan")),
    case("data.kind typo", "data.kind=source", says=pattern("data.kind", "source")),
    # merge: every method's knobs
    case("merge.method=nonexistent", "merge.method=nonexistent",
         says=pattern("unknown merge method 'nonexistent'", "ties")),
    case("ties density=0", "merge=ties", "merge.params.density=0", says=pattern("'density'", "(0, 1]")),
    case("ties density=-0.1", "merge=ties", "merge.params.density=-0.1", says=pattern("'density'", "-0.1")),
    case("ties density=2", "merge=ties", "merge.params.density=2", says=pattern("'density'", "2")),
    case("ties density=abc", "merge=ties", "merge.params.density=abc", says=pattern("'density'", "abc")),
    case("ties scope=layer", "merge=ties", "merge.params.scope=layer", says=pattern("'scope'", "'layer'")),
    case("dare_ta drop_rate=1", "merge=dare_ta", "merge.params.drop_rate=1",
         says=pattern("'drop_rate'", "[0, 1)")),
    case("dare_ta drop_rate=-0.1", "merge=dare_ta", "merge.params.drop_rate=-0.1",
         says=pattern("'drop_rate'", "-0.1")),
    case("dare_ties drop_rate=1.5", "merge=dare_ties", "merge.params.drop_rate=1.5",
         says=pattern("'drop_rate'", "1.5")),
    case("dare_ties has no density", "merge=dare_ties", "++merge.params.density=0.5",
         says=pattern("'dare_ties'", "unknown parameter(s) ['density']")),
    case("tsv rank_fraction=0", "merge=tsv", "merge.params.rank_fraction=0",
         says=pattern("'rank_fraction'", "(0, 1]")),
    case("tsv rank_fraction=1.5", "merge=tsv", "merge.params.rank_fraction=1.5",
         says=pattern("'rank_fraction'", "1.5")),
    case("tsv embeddings=keep", "merge=tsv", "merge.params.embeddings=keep",
         says=pattern("'embeddings'", "'keep'")),
    case("tsv rank_rtol=-1", "merge=tsv", "merge.params.rank_rtol=-1", says=pattern("'rank_rtol'", "-1")),
    case("resm kappa=-1", "merge=resm", "merge.params.kappa=-1", says=pattern("'kappa'", "-1")),
    case("resm rank=bogus", "merge=resm", "merge.params.rank=bogus", says=pattern("'rank'", "'bogus'")),
    case("resm rank_spread=-1", "merge=resm", "merge.params.rank_spread=-1",
         says=pattern("'rank_spread'", "-1")),
    case("resm rank_spread=2", "merge=resm", "merge.params.rank_spread=2",
         says=pattern("'rank_spread'", "2")),
    case("resm outlier_ratio_M=0", "merge=resm", "merge.params.outlier_ratio_M=0",
         says=pattern("'outlier_ratio_M'", "0")),
    case("resm reweight typo", "merge=resm", "merge.params.reweight=huber",
         says=pattern("'reweight'", "'huber'")),
    case("resm restore_norm=maybe", "merge=resm", "merge.params.restore_norm=maybe",
         says=pattern("'restore_norm'", "maybe")),
    case("fisher minimal_fisher_weight=-1", "merge=fisher", "merge.params.minimal_fisher_weight=-1",
         says=pattern("'minimal_fisher_weight'", "-1")),
    case("fisher statistics=[]", "merge=fisher", "merge.params.statistics=[]",
         says=pattern("'statistics' is empty")),
    case("regmean reduce_non_diagonal_ratio=2", "merge=regmean",
         "merge.params.reduce_non_diagonal_ratio=2", says=pattern("'reduce_non_diagonal_ratio'", "2")),
    case("scaling=nan", "merge.params.scaling=nan", says=pattern("'scaling'", "finite", "nan")),
    case("scaling=inf", "merge.params.scaling=inf", says=pattern("'scaling'", "inf")),
    case("scaling=-inf", "merge=task_arithmetic", "merge.params.scaling=-inf",
         says=pattern("'scaling'", "-inf")),
    case("scaling=1e40", "merge.params.scaling=1e40", says=pattern("'scaling'", "1e+40", "float32")),
    case("scaling=abc", "merge.params.scaling=abc", says=pattern("'scaling'", "'abc'")),
    case("scaling=true", "merge.params.scaling=true", says=pattern("'scaling'", "True")),
    case("weights=[a,b,c]", "merge.params.weights=[a,b,c]", says=pattern("'weights'", "'a'")),
    case("weights length 2 of 3", "merge.params.weights=[1,2]", "stage=merge",
         says=pattern("'weights'", "2", "3")),
    case("weights length 4 of 3", "merge=task_arithmetic", "merge.params.weights=[1,1,1,1]",
         "stage=merge", says=pattern("'weights'", "4", "3")),
    case("weights length for 2 dims", "merge=ties", "data.dimensions=[helpful,honest]",
         "merge.params.weights=[1,1,1]", "stage=merge", says=pattern("'weights'", "3", "2")),
    case("weights with nan", "merge=task_arithmetic", "merge.params.weights=[1,nan,1]",
         says=pattern("'weights'", "nan")),
    case("weight_average weights all 0", "merge=weight_average", "merge.params.weights=[0,0,0]",
         says=pattern("'weights'")),
    case("compute_dtype=float16", "merge.params.compute_dtype=float16",
         says=pattern("'compute_dtype'", "'float16'")),
    case("merge seed=abc", "merge.params.seed=abc", says=pattern("'seed'", "abc")),
    case("unknown merge knob", "+merge.params.bogus=1", says=pattern("unknown parameter(s) ['bogus']")),
    case("TIES knob on task_arithmetic", "merge=task_arithmetic", "+merge.params.density=0.5",
         says=pattern("'task_arithmetic'", "density")),
    case("merge.models=[]", "stage=merge", "merge.models=[]", says="merge.models is an empty list"),
    case("merge.base among merge.models", "stage=merge", "merge.base=org/m",
         "merge.models=[org/m,org/n]", says=pattern("merge.models[0]='org/m' is merge.base")),
    # the merge engine
    case("merge_engine.out_dtype=float13", "merge_engine.out_dtype=float13",
         says=pattern("merge_engine.out_dtype", "float13")),
    case("merge_engine.vocab_policy typo", "merge_engine.vocab_policy=bases",
         says=pattern("merge_engine.vocab_policy", "bases")),
    case("merge_engine.cache_max_gb=-1", "merge_engine.cache_max_gb=-1",
         says=pattern("merge_engine.cache_max_gb", "-1")),
    case("merge_engine.max_shard_size=lots", "merge_engine.max_shard_size=lots",
         says=pattern("merge_engine.max_shard_size", "lots")),
    case("merge_engine.max_shard_size=0", "merge_engine.max_shard_size=0",
         says=pattern("merge_engine.max_shard_size", "0")),
    case("merge_engine.statistics.num_samples=0", "merge_engine.statistics.num_samples=0",
         says=pattern("merge_engine.statistics.num_samples", "0")),
    case("merge_engine.statistics.dtype=float8", "merge_engine.statistics.dtype=float8",
         says=pattern("merge_engine.statistics.dtype", "float8")),
    case("merge_engine.diagnostics_top_k=0", "merge_engine.diagnostics_top_k=0",
         says=pattern("merge_engine.diagnostics_top_k", "0")),
    case("merge_engine.diagnostics_tail_sigmas=[-1]", "merge_engine.diagnostics_tail_sigmas=[-1]",
         says=pattern("merge_engine.diagnostics_tail_sigmas", "-1")),
    # the pipeline's grid, tuning, mixtures, oracle; the mix group
    case("merge_grid point out of range", "pipeline.merge_grid.ties.density=[0.5,2]",
         says=pattern("pipeline.merge_grid.ties", "'density'", "2")),
    case("merge_grid unknown method", "+pipeline.merge_grid.tie={scaling:[1]}",
         says=pattern("tie")),
    case("tuning.emphasis length", "pipeline.tuning.emphasis=[[1,1]]",
         says=pattern("pipeline.tuning.emphasis[0]", "one weight per dimension")),
    case("tuning.emphasis negative", "pipeline.tuning.emphasis=[[1,1,-1]]",
         says=pattern("pipeline.tuning.emphasis[0]", "> 0")),
    case("tuning.mixtures without shares", "pipeline.tuning.mixtures=[uniform]",
         says=pattern("pipeline.tuning.mixtures", "'uniform'", "shares")),
    case("pipeline.base_seed=abc", "pipeline.base_seed=abc", says=pattern("pipeline.base_seed", "'abc'")),
    case("pipeline.mixtures typo", "pipeline.mixtures=[uniform,sequentail]",
         says=pattern("pipeline.mixtures", "sequentail")),
    case("pipeline.oracle.mix typo", "pipeline.oracle.mix=resolvd",
         says=pattern("pipeline.oracle.mix", "resolvd")),
    case("mix.shares.helpful=2", "mix=fixed_ratio", "mix.shares.helpful=2",
         says=pattern("mix", "shares")),
    case("mix.budget=-3", "mix=fixed_ratio", "mix.budget=-3", says=pattern("mix", "budget", "-3")),
    case("mix reward_select scope typo", "mix=reward_select", "mix.scope=everywhere",
         says=pattern("mix", "scope", "everywhere")),
    case("mix unknown knob", "mix=uniform", "+mix.sharez=1", says=pattern("mix", "sharez")),
    # console, cache, threads, report, logger
    case("console.verbosity=7", "console.verbosity=7", says=pattern("console.verbosity", "7")),
    case("console.progress typo", "console.progress=sometimes",
         says=pattern("console.progress", "sometimes")),
    case("cache.on_mismatch typo", "cache.on_mismatch=ignore", says=pattern("cache.on_mismatch", "ignore")),
    case("threads=-1", "threads=-1", says=pattern("threads", "-1")),
    case("threads=abc", "threads=abc", says=pattern("threads", "'abc'")),
    case("report.judge_failure_threshold=2", "report.judge_failure_threshold=2",
         says=pattern("report.judge_failure_threshold", "2")),
    case("report.skip_invalid=maybe", "report.skip_invalid=maybe",
         says=pattern("report.skip_invalid", "maybe")),
    case("report key typo", "+report.skip_invalids=true", says="report.skip_invalids"),
    case("logger.mode typo", "logger=wandb", "logger.mode=sometimes", says=pattern("logger.mode", "sometimes")),
    case("plugins: no such module", "plugins=[nonexistent_module_xyz]",
         says=pattern("plugins", "nonexistent_module_xyz")),
    # the judges (eval=harness_3h): checked before any stage
    case("guard without on_unparsed", "eval=harness_3h", "model.device=cpu",
         "eval.judges.safety.on_unparsed=null", says=pattern("safety", "on_unparsed")),
    case("guard on_unparsed typo", "eval=harness_3h", "model.device=cpu",
         "eval.judges.safety.on_unparsed=unsafe", says=pattern("safety", "on_unparsed", "unsafe")),
    case("judge kind typo", "eval=harness_3h", "model.device=cpu", "eval.judges.safety.kind=gaurd",
         says=pattern("safety", "gaurd")),
    case("parse judge: parser typo", "eval=harness_3h", "model.device=cpu",
         "eval.judges.rating.parser=mtbench", says=pattern("eval.judges.rating.parser", "mtbench")),
    case("parse judge without max_new_tokens", "eval=harness_3h", "model.device=cpu",
         "eval.judges.rating.max_new_tokens=null", says=pattern("eval.judges.rating.max_new_tokens")),
    case("parse judge with a guard's policy", "eval=harness_3h", "model.device=cpu",
         "eval.judges.strongreject_rubric.on_unparsed=positive",
         says=pattern("eval.judges.strongreject_rubric.on_unparsed", "lowest", "positive")),
]  # fmt: skip


@pytest.mark.parametrize(("args", "says"), VALUES)
def test_value(root, args, says):
    refused(root, *args, says=says)


# ---------------------------------------------------------------------------------------------
# 3. Folders and the environment: a cache, the root, W&B


def test_merge_engine_cache_dir_is_a_file(root, tmp_path):
    (tmp_path / "f").write_text("x")
    refused(root, f"merge_engine.cache_dir={tmp_path}/f",
            says=pattern("merge_engine.cache_dir=", "is a regular file"))  # fmt: skip


def test_merge_engine_cache_dir_under_a_file(root, tmp_path):
    (tmp_path / "f").write_text("x")
    refused(
        root,
        f"merge_engine.cache_dir={tmp_path}/f/sub",
        says=pattern("merge_engine.cache_dir=", "regular file"),
    )


def test_data_cache_dir_is_a_file(root, tmp_path):
    (tmp_path / "f").write_text("x")
    refused(root, "data=paper_3h", f"data.cache_dir={tmp_path}/f", "stage=data", quick=False,
            says=pattern("data.cache_dir=", "is a regular file"))  # fmt: skip


def test_wandb_dir_is_a_file(root, tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "f"))
    before = snapshot(root)
    o = hhh(f"root={root}", "logger=wandb", *QUICK)
    assert_refused(o, before, root, pattern("WANDB_DIR=", "regular file"))


def test_wandb_online_without_a_key(root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    before = snapshot(root)
    o = hhh(f"root={root}", "logger=wandb", *QUICK)
    assert_refused(o, before, root, pattern("WANDB_MODE=online", "no API key", "wandb login"))


def test_root_is_a_regular_file(tmp_path):
    f = tmp_path / "root"
    f.write_text("not a folder")
    o = hhh(f"root={f}", "logger=none", *QUICK)
    assert_refused(o, set(), tmp_path / "none", pattern(f"root='{f}'", "regular file"))
    assert f.read_text() == "not a folder"


def test_root_under_a_regular_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    o = hhh(f"root={f}/runs", "logger=none", *QUICK)
    assert_refused(o, set(), tmp_path / "none", pattern(f"root='{f}/runs'", "regular file"))


def test_help_lists_only_real_choices():
    """``--help`` (exit 0): no ``_common``, no ``merge_common``, no ``accelerate`` group."""
    o = hhh("--help")
    assert o.code == 0 and "Traceback" not in o.console
    groups = o.out.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert "ties" in groups and "_common" not in groups and "accelerate" not in groups


# ---------------------------------------------------------------------------------------------
# 4. Plugins


PLUGINS = {
    "syntax error": ("def oops(:\n", r"plugins.*{mod}.*SyntaxError|plugins.*{mod}.*invalid syntax"),
    "raises at import": ("raise RuntimeError('boom: no GPU here')\n", r"plugins.*{mod}.*boom"),
    "imports a missing module": (
        "import not_installed_xyz\n",
        r"plugins.*{mod}.*not_installed_xyz",
    ),
    "registers an existing method": (
        "from hhh_bench.merging import register_method\n"
        "from hhh_bench.merging.methods.ties import TIES\n"
        "register_method('ties')(TIES)\n",
        r"{mod}.*ties|ties.*{mod}|'ties'.*already",
    ),
}


@pytest.mark.parametrize("kind", list(PLUGINS))
def test_plugin(root, tmp_path, monkeypatch, kind):
    src, says = PLUGINS[kind]
    mod = f"battery_plugin_{abs(hash(kind)) % 10**8}"
    (tmp_path / f"{mod}.py").write_text(src)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, mod, raising=False)
    refused(root, f"plugins=[{mod}]", says=says.format(mod=mod))


@pytest.mark.parametrize("kind", ["syntax error", "raises at import"])
def test_list_plugin(tmp_path, monkeypatch, kind):
    src, says = PLUGINS[kind]
    mod = f"battery_lplugin_{abs(hash(kind)) % 10**8}"
    (tmp_path / f"{mod}.py").write_text(src)
    monkeypatch.syspath_prepend(str(tmp_path))
    o = hhh("list", "methods", "--plugin", mod)
    assert_refused(o, set(), tmp_path / "none", says.format(mod=mod).replace("plugins", "--plugin"))


# ---------------------------------------------------------------------------------------------
# 5. The results store: stage=report validates every line before it writes anything


def row(key: str, avg: float = 0.5, **kw) -> dict:
    """A hand-made row of one task: its suite is not the toy one (whose six tasks a report
    compares stored rows with: stages/report.check_scored_as_configured)."""
    return {
        "row_key": key, "name": key, "kind": "merge", "method": "ties", "params": {}, "seed": 0,
        "split": "test", "suite": "fixture", "metric": "acc",
        "task_specs": [{"name": "t", "dimension": "helpful", "weight": 1.0, "metric": "acc"}],
        "tasks": {"t": {"acc": avg, "acc_stderr": 0.01, "n": 10}},
        "helpful": avg, "honest": avg, "harmless": avg, "average": avg, "min": avg, **kw,
    }  # fmt: skip


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


STORE = {
    "helpful NaN": (json.dumps(row("b", helpful=float("nan"))), "helpful = nan"),
    "average Infinity": (json.dumps(row("b", average=float("inf"))), "average = inf"),
    "helpful true": (json.dumps(row("b", helpful=True)), "helpful = True"),
    "honest null": (json.dumps(row("b", honest=None)), "honest"),
    "harmless string": (json.dumps(row("b", harmless="0.5")), "harmless = '0.5'"),
    "no kind": (json.dumps(_without(row("b"), "kind")), "lacks `kind`"),
    "unknown kind": (json.dumps(row("b", kind="merged")), "kind 'merged'"),
    "JSON array line": ("[1, 2, 3]", "a JSON array"),
    "broken JSON": ('{"row_key": "b", "helpful": 0.5,, }', "not valid JSON"),
    "newer schema_version": (json.dumps(row("b", schema_version=99)), "schema_version 99"),
    "no row_key": (json.dumps(_without(row("b"), "row_key")), "row_key"),
    "task metric NaN": (json.dumps({**row("b"), "tasks": {"t": {"acc": float("nan"), "n": 9}}}),
                        "tasks.t.acc = nan"),
    "not UTF-8": (b'{"row_key": "b\xff"}', "not UTF-8"),
}  # fmt: skip


def _store(root: Path, bad: str | bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "results.jsonl"
    bad_b = bad if isinstance(bad, bytes) else bad.encode()
    path.write_bytes(
        b"\n".join([json.dumps(row("a")).encode(), bad_b, json.dumps(row("c")).encode()]) + b"\n"
    )
    return path


@pytest.mark.parametrize("kind", list(STORE))
def test_results_store_line(root, kind):
    bad, says = STORE[kind]
    path = _store(root, bad)
    refused(root, "stage=report", says=(pattern(f"{path}, line 2", says),))


def test_results_store_skip_invalid_counts(root):
    """The documented way past a bad line: report.skip_invalid=true, exit 0, the count said."""
    _store(root, json.dumps(row("b", helpful=True)))
    o = hhh(f"root={root}", "logger=none", *QUICK, "stage=report", "report.skip_invalid=true")
    assert o.code == 0 and "Traceback" not in o.console, o.console[-2000:]
    md = next(root.rglob("report.md")).read_text()
    assert "Skipped 1 invalid row" in md and "line 2" in md, md[-1500:]


def test_results_store_torn_last_line_is_said_on_the_console_and_in_the_report(root):
    """A crash mid-write leaves a torn last line: skipped (the documented result, exit 0), and
    said where the user looks, not only in the log file."""
    root.mkdir(parents=True)
    good = "\n".join(json.dumps(row(k)) for k in ("a", "c"))
    (root / "results.jsonl").write_text(good + "\n" + json.dumps(row("b"))[:-30])
    o = hhh(f"root={root}", "logger=none", *QUICK, "stage=report")
    assert o.code == 0 and "Traceback" not in o.console, o.console[-2000:]
    assert re.search(r"skipped 1 line.*line 3: a torn line", o.console), o.console[-2000:]
    md = next(root.rglob("report.md")).read_text()
    assert "Skipped 1 invalid row" in md and "line 3: a torn line" in md, md[-1500:]


def test_results_store_is_a_folder(root):
    (root / "results.jsonl").mkdir(parents=True)
    refused(root, "stage=report", says=pattern("results.jsonl"))


# ---------------------------------------------------------------------------------------------
# 6. Source files (data=paper_3h, one local source): named with the file and line


FIRST = (ASSETS / "hh_rlhf_helpful_base.jsonl").read_bytes().splitlines()[0]


def _truncated_gz(data: bytes) -> bytes:
    whole = gzip.compress(data)
    return whole[: len(whole) // 2]


SOURCES = {
    "empty file": ("raw.jsonl", b"", "is empty (0 bytes)"),
    "white space only": ("raw.jsonl", b"\n \n", "holds no data"),
    "JSON array line": ("raw.jsonl", FIRST + b"\n[1, 2]\n", ", line 2: a JSON array"),
    "JSON string line": ("raw.jsonl", FIRST + b'\n"text"\n', ", line 2: a JSON string"),
    "non-UTF-8 byte": ("raw.jsonl", FIRST + b'\n{"chosen": "caf\xe9"}\n', ", line 2: not UTF-8"),
    "broken JSON": ("raw.jsonl", FIRST + b'\n{"chosen": \n', ", line 2: not valid JSON"),
    "truncated gz": ("raw.jsonl.gz", _truncated_gz(FIRST * 400), "cannot be decompressed"),
    "no field the adapter reads": ("raw.jsonl", b'{"foo": 1}\n', "the adapter kept no pair"),
}


def _paper(path: Path | str, name: str = "hh_rlhf_helpful", **more: str) -> list[str]:
    extra = "".join(f",{k}:{v}" for k, v in more.items())
    return ["data=paper_3h", "data.dimensions=[helpful]", "~data.sources.honest",
            "~data.sources.harmless", f"data.sources.helpful=[{{name:{name},path:'{path}'{extra}}}]",
            "stage=data"]  # fmt: skip


@pytest.mark.parametrize("kind", list(SOURCES))
def test_source_file(root, tmp_path, kind):
    name, data, says = SOURCES[kind]
    path = tmp_path / name
    path.write_bytes(data)
    refused(root, *_paper(path), quick=False, says=(pattern("'hh_rlhf_helpful'", str(path), says),))


def test_source_missing_file(root, tmp_path):
    refused(root, *_paper(tmp_path / "nope.jsonl"), quick=False,
            says=pattern("'hh_rlhf_helpful'", str(tmp_path / "nope.jsonl"), "does not exist"))  # fmt: skip


def test_source_unknown_name(root, tmp_path):
    args = ["data=paper_3h", "data.dimensions=[helpful]", "~data.sources.honest",
            "~data.sources.harmless", "data.sources.helpful=[hh_rlhf_helpfull]", "stage=data"]  # fmt: skip
    refused(root, *args, quick=False, says=pattern("hh_rlhf_helpfull", "known sources"))


def test_source_unknown_key(root, tmp_path):
    refused(root, *_paper(ASSETS / "hh_rlhf_helpful_base.jsonl", max_rowz=3), quick=False,
            says=pattern("hh_rlhf_helpful", "max_rowz"))  # fmt: skip


def test_source_under_the_wrong_dimension(root):
    refused(root, *_paper(ASSETS / "halueval_qa.jsonl", name="halueval_qa"), quick=False,
            says=pattern("'halueval_qa'", "'honest'", "'helpful'"))  # fmt: skip


def test_source_for_a_dimension_not_trained(root):
    args = ["data=paper_3h", "data.dimensions=[helpful]", "stage=data"]
    refused(root, *args, quick=False, says=pattern("sources", "not in", "dimensions"))


def test_data_eval_fraction_out_of_range(root):
    refused(root, "data=paper_3h", "data.eval_fraction=2", "stage=data", quick=False,
            says=pattern("data.eval_fraction", "2"))  # fmt: skip


def test_data_max_malformed_fraction_out_of_range(root):
    refused(root, "data=paper_3h", "data.max_malformed_fraction=2", "stage=data", quick=False,
            says=pattern("data.max_malformed_fraction", "2"))  # fmt: skip


def test_data_max_rows_per_source_negative(root):
    refused(root, "data=paper_3h", "data.max_rows_per_source=-1", "stage=data", quick=False,
            says=pattern("data.max_rows_per_source", "-1"))  # fmt: skip


def test_data_leakage_on_overlap_typo(root):
    refused(root, "data=paper_3h", "data.leakage.on_overlap=explode", "stage=data", quick=False,
            says=pattern("data.leakage", "on_overlap", "explode"))  # fmt: skip


def test_data_leakage_min_chars_negative(root):
    refused(root, "data=paper_3h", "data.leakage.min_chars=-3", "stage=data", quick=False,
            says=pattern("data.leakage.min_chars", "-3"))  # fmt: skip


def test_source_repeated_rows_are_dropped_and_counted(root, tmp_path):
    """The documented result: the same row 22 times gives one pair, 21 dropped and counted."""
    path = tmp_path / "raw.jsonl"
    path.write_bytes((FIRST + b"\n") * 22)
    o = hhh(f"root={root}", "logger=none", *_paper(path))
    assert o.code == 0 and "Traceback" not in o.console, o.console[-2000:]
    assert "dropped 21 repeated pair(s)" in o.console
    (manifest,) = root.glob("data/*/manifest.json")
    assert json.loads(manifest.read_text())["dropped_duplicates"] == 21


# ---------------------------------------------------------------------------------------------
# 7. Model folders: merge.models, merge.base, eval.model, model.path


def _models(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    return a, b


def test_merge_models_missing_folder(root, tmp_path):
    a, b = _models(tmp_path)
    refused(root, "stage=merge", f"merge.models=[{a},{b}]",
            says=pattern(f"merge.models[0]='{a}'", "does not exist"))  # fmt: skip


def test_merge_base_missing_folder(root, tmp_path):
    a, b = _models(tmp_path)
    a.mkdir()
    b.mkdir()
    refused(root, "stage=merge", f"merge.base={tmp_path}/nobase", f"merge.models=[{a},{b}]",
            says=pattern(f"merge.base='{tmp_path}/nobase'", "does not exist"))  # fmt: skip


def test_merge_models_folder_without_config(root, tmp_path):
    a, b = _models(tmp_path)
    a.mkdir()
    (a / "notes.txt").write_text("x")
    b.mkdir()
    refused(root, "stage=merge", f"merge.models=[{a},{b}]",
            says=pattern(f"merge.models[0]='{a}'", "config.json"))  # fmt: skip


def test_merge_models_a_file(root, tmp_path):
    a, b = _models(tmp_path)
    a.write_text("x")
    b.mkdir()
    refused(root, "stage=merge", f"merge.models=[{a},{b}]",
            says=pattern(f"merge.models[0]='{a}'", "file"))  # fmt: skip


def test_merge_models_relative_missing(root, tmp_path):
    os.chdir(tmp_path)
    refused(root, "stage=merge", "merge.models=[./spec_a,./spec_b]",
            says=pattern("merge.models[0]='./spec_a'", "does not exist"))  # fmt: skip


def test_eval_model_missing_folder(root, tmp_path):
    refused(root, "stage=eval", f"+eval.model={tmp_path}/nomodel",
            says=pattern(f"eval.model='{tmp_path}/nomodel'", "does not exist"))  # fmt: skip


def test_eval_model_folder_without_config(root, tmp_path):
    (tmp_path / "m").mkdir()
    refused(root, "stage=eval", f"+eval.model={tmp_path}/m",
            says=pattern(f"eval.model='{tmp_path}/m'", "config.json"))  # fmt: skip


def test_model_path_missing_folder(root, tmp_path):
    refused(root, "model=llama3_8b_instruct", "model.device=cpu", f"model.path={tmp_path}/nope",
            "stage=base", quick=False, says=pattern(f"model.path='{tmp_path}/nope'"))  # fmt: skip


def test_model_hub_id_offline_not_cached(root):
    refused(root, "model=llama3_8b_instruct", "model.device=cpu", "model.path=org/not-cached-xyz",
            "stage=base", quick=False, says=pattern("model.path='org/not-cached-xyz'", "HF cache"))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 8. A prepared root (data, θ0, three specialists, a TA merge, θ0 evaluated), built once per run
#    and copied per case; each case breaks one thing in its copy


@pytest.fixture(scope="session")
def pristine(tmp_path_factory) -> Path:
    """Built once per test run (the first xdist worker to need it, under a file lock)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "battery-pristine"
    with FileLock(str(shared) + ".lock"):
        if not (shared / ".built").is_file():
            import torch

            from conftest import compose
            from hhh_bench.pipeline import run

            torch.set_num_threads(1)
            root = shared / "root"
            for stage in (["stage=merge", "merge=task_arithmetic"], ["stage=eval"]):
                run(compose([f"root={root}", "logger=none", *QUICK, *stage]))
            (shared / ".built").touch()
    return shared / "root"


@pytest.fixture
def prepared(pristine, tmp_path) -> Path:
    dst = tmp_path / "root"
    shutil.copytree(pristine, dst, symlinks=True)
    return dst


def _one(root: Path, stage: str) -> Path:
    (out,) = [p for p in (root / stage).iterdir() if not p.name.startswith(".")]
    return out


def _specialists(root: Path) -> dict[str, Path]:
    out = {}
    for d in (root / "train").iterdir():
        if not d.name.startswith("."):
            out[json.loads((d / "train_info.json").read_text())["dimensions"][0]] = d
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# what the case breaks, the stage it then runs, what the message names
def _t_data_manifest(root):
    p = _one(root, "data") / "manifest.json"
    _truncate(p)
    return ["stage=train", "data.dimensions=[honest]"], (
        pattern(str(_one(root, "data"))),
        "manifest.json",
    )


def _t_train_info(root):
    d = _specialists(root)["helpful"]
    _truncate(d / "train_info.json")
    return ["stage=merge", "merge=task_arithmetic"], (pattern(str(d)), "train_info.json")


def _t_checksums(root):
    d = _one(root, "base")
    _truncate(d / "checksums.json")
    return ["stage=train", "data.dimensions=[honest]"], (pattern(str(d)), "checksums.json")


def _t_key_json(root):
    d = _one(root, "base")
    (d / "key.json").write_text("{not json")
    return ["stage=train", "data.dimensions=[honest]"], (pattern(str(d)), "key.json")


def _t_base_weights_changed(root):
    from safetensors.torch import load_file, save_file

    d = _one(root, "base")
    sd = load_file(str(d / "model.safetensors"))
    k = sorted(sd)[0]
    sd[k] = sd[k] * 2
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return ["stage=train", "data.dimensions=[honest]"], (pattern(str(d), "model.safetensors"),)


def _t_base_weights_truncated(root):
    d = _one(root, "base")
    _truncate(d / "model.safetensors")
    return ["stage=eval"], (pattern(str(d), "model.safetensors"),)


def _t_base_weights_deleted(root):
    d = _one(root, "base")
    (d / "model.safetensors").unlink()
    return ["stage=eval"], (pattern(str(d), "model.safetensors"),)


def _t_specialists_swapped(root):
    sp = _specialists(root)
    a, b = sp["helpful"] / "model.safetensors", sp["honest"] / "model.safetensors"
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    return ["stage=merge", "merge=task_arithmetic"], ("model.safetensors differs",)


def _t_eval_metrics_truncated(root):
    d = _one(root, "eval")
    name = "results.json"
    _truncate(d / name)
    return ["stage=eval"], (pattern(str(d)), name)


def _t_merge_output_file_added(root):
    d = _one(root, "merge")
    (d / "model.safetensors").write_bytes(b"garbage")
    return ["stage=merge", "merge=task_arithmetic"], (pattern(str(d)), "model.safetensors")


def _t_judge_cache_garbage(root):
    (root / "cache").mkdir(exist_ok=True)
    (root / "cache" / "judges.sqlite").write_bytes(b"this is not a database" * 100)
    return ["stage=eval", "eval=harness_3h", "model.device=cpu"], (pattern("judges.sqlite"),)


def _t_results_store_truncated_line(root):
    p = root / "results.jsonl"
    data = p.read_bytes().rstrip(b"\n")
    p.write_bytes(data[: len(data) - 40])
    return ["stage=report"], (pattern(str(p)),)


TAMPER = {
    "truncated data manifest.json": _t_data_manifest,
    "truncated train_info.json": _t_train_info,
    "truncated checksums.json": _t_checksums,
    "key.json not JSON": _t_key_json,
    "θ0 weights changed": _t_base_weights_changed,
    "θ0 weights truncated": _t_base_weights_truncated,
    "θ0 weights deleted": _t_base_weights_deleted,
    "specialists' weights swapped": _t_specialists_swapped,
    "truncated eval result": _t_eval_metrics_truncated,
    "merged weights replaced": _t_merge_output_file_added,
    "judge cache not a database": _t_judge_cache_garbage,
    "results store's one row cut mid-line": _t_results_store_truncated_line,
}


@pytest.mark.parametrize("kind", list(TAMPER))
def test_prepared_root(prepared, kind):
    args, says = TAMPER[kind](prepared)
    refused(prepared, *args, says=says)


def _copy_model(src: Path, dst: Path) -> Path:
    """A stage output copied as a user's own model folder (without the stage's records)."""
    shutil.copytree(src, dst)
    for name in ("checksums.json", "key.json", "provenance.json"):
        (dst / name).unlink(missing_ok=True)
    return dst


def test_specialist_equal_to_theta0_at_another_path(prepared, tmp_path):
    base = _copy_model(_one(prepared, "base"), tmp_path / "theta0-copy")
    sp = _specialists(prepared)
    refused(prepared, "stage=merge", "merge=task_arithmetic",
            f"merge.models=[{base},{sp['honest']}]", says=pattern(str(base), "same weights as the base"))  # fmt: skip


def test_two_specialists_with_the_same_weights(prepared, tmp_path):
    sp = _specialists(prepared)
    twin = _copy_model(sp["helpful"], tmp_path / "twin")
    refused(prepared, "stage=merge", "merge=task_arithmetic",
            f"merge.models=[{sp['helpful']},{twin}]", says=pattern("same weights"))  # fmt: skip


def test_specialist_without_weights(prepared, tmp_path):
    sp = _specialists(prepared)
    m = _copy_model(sp["helpful"], tmp_path / "noweights")
    (m / "model.safetensors").unlink()
    refused(prepared, "stage=merge", "merge=task_arithmetic",
            f"merge.models=[{m},{sp['honest']}]", says=pattern(str(m), "model.safetensors"))  # fmt: skip


def test_specialist_config_not_json(prepared, tmp_path):
    sp = _specialists(prepared)
    m = _copy_model(sp["helpful"], tmp_path / "badconfig")
    (m / "config.json").write_text("{oops")
    refused(prepared, "stage=merge", "merge=task_arithmetic",
            f"merge.models=[{m},{sp['honest']}]", says=pattern(str(m), "config.json"))  # fmt: skip


def test_specialist_weights_truncated(prepared, tmp_path):
    sp = _specialists(prepared)
    m = _copy_model(sp["helpful"], tmp_path / "cut")
    _truncate(m / "model.safetensors")
    refused(prepared, "stage=merge", "merge=task_arithmetic",
            f"merge.models=[{m},{sp['honest']}]", says=pattern(str(m), "model.safetensors"))  # fmt: skip


def test_specialist_of_another_shape(prepared, tmp_path):
    from safetensors.torch import load_file, save_file

    sp = _specialists(prepared)
    m = _copy_model(sp["helpful"], tmp_path / "shape")
    sd = load_file(str(m / "model.safetensors"))
    k = next(k for k in sorted(sd) if sd[k].dim() == 2 and "embed" not in k)
    sd[k] = sd[k][:-1].clone()
    save_file(sd, str(m / "model.safetensors"), metadata={"format": "pt"})
    refused(prepared, "stage=merge", "merge=task_arithmetic",
            f"merge.models=[{m},{sp['honest']}]", says=pattern(k, "shape"))  # fmt: skip


def test_specialist_with_a_nan(prepared, tmp_path):
    from safetensors.torch import load_file, save_file

    sp = _specialists(prepared)
    m = _copy_model(sp["helpful"], tmp_path / "nan")
    sd = load_file(str(m / "model.safetensors"))
    k = sorted(sd)[-1]
    sd[k] = sd[k].clone()
    sd[k].view(-1)[0] = float("nan")
    save_file(sd, str(m / "model.safetensors"), metadata={"format": "pt"})
    refused(prepared, "stage=merge", "merge=task_arithmetic",
            f"merge.models=[{m},{sp['honest']}]", says=pattern(k))  # fmt: skip


def test_ties_density_that_keeps_nothing(prepared):
    refused(prepared, "stage=merge", "merge=ties", "merge.params.density=1e-9",
            says=pattern("density", "keeps"))  # fmt: skip


@pytest.fixture(scope="session")
def adapters(pristine, tmp_path_factory) -> tuple[Path, Path]:
    from conftest import save_random_lora

    base = _one(pristine, "base")
    out = tmp_path_factory.mktemp("battery-adapters")
    a, _ = save_random_lora(base, out / "a", r=2, alpha=4, targets=["q_proj", "v_proj"], seed=3)
    b, _ = save_random_lora(base, out / "b", r=2, alpha=4, targets=["q_proj", "v_proj"], seed=4)
    return a, b


def _without_keys(adapter: Path, dst: Path, drop: str) -> tuple[Path, str]:
    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter, dst)
    f = dst / "adapter_model.safetensors"
    sd = load_file(str(f))
    key = sorted(k for k in sd if drop in k)[0]
    del sd[key]
    save_file(sd, str(f))
    return dst, key.split(f".{drop}")[0].removeprefix("base_model.model.")


@pytest.mark.parametrize("drop", ["lora_A", "lora_B"])
def test_adapter_with_an_orphan_factor(prepared, adapters, tmp_path, drop):
    bad, module = _without_keys(adapters[0], tmp_path / "bad", drop)
    base = _one(prepared, "base")
    refused(prepared, "stage=merge", "merge=task_arithmetic", f"merge.base={base}",
            f"merge.models=[{bad},{adapters[1]}]", says=pattern(module))  # fmt: skip


def test_adapter_config_not_lora(prepared, adapters, tmp_path):
    bad = tmp_path / "ia3"
    shutil.copytree(adapters[0], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    base = _one(prepared, "base")
    refused(prepared, "stage=merge", "merge=task_arithmetic", f"merge.base={base}",
            f"merge.models=[{bad},{adapters[1]}]", says=pattern(str(bad), "LoRA"))  # fmt: skip


def test_adapter_without_weights(prepared, adapters, tmp_path):
    bad = tmp_path / "noweights"
    shutil.copytree(adapters[0], bad)
    (bad / "adapter_model.safetensors").unlink()
    base = _one(prepared, "base")
    refused(prepared, "stage=merge", "merge=task_arithmetic", f"merge.base={base}",
            f"merge.models=[{bad},{adapters[1]}]", says=pattern(str(bad), "adapter_model.safetensors"))  # fmt: skip


# A merge method of a plugin that fails or returns something that cannot be a merged tensor:
# named with its module and the tensor, no traceback, and no sweep-cache entry, diagnostics row
# or merge output left (the second independent battery's G01-G08)
BAD_METHODS = {
    "raises": ("raise RuntimeError('bad math')", "failed on parameter .*RuntimeError: bad math"),
    "wrong shape": ("return taus[0].reshape(-1)[:1]", r"returned shape \(1,\) for parameter"),
    "integer tensor": ("return taus.sum(0).to(torch.int32)", "returned a torch.int32 tensor"),
    "sys.exit(0)": ("import sys; sys.exit(0)", "failed on parameter .*SystemExit"),
    "NaN": ("return taus.sum(0) * float('nan')", "NaN/Inf value.* from finite inputs"),
    "Inf": ("return taus.sum(0) / 0.0", "NaN/Inf value.* from finite inputs"),
    "None": ("return None", "returned a NoneType for parameter"),
}


def _misbehaving_plugin(prepared, tmp_path, monkeypatch, *, kind, what, registry, head, deco,
                        signature, body, args, says):  # fmt: skip
    """A plugin module whose registered ``what`` (a merge method or a mixing strategy) runs
    ``body``: the run is refused naming it and its module (:func:`refused`)."""
    mod = f"battery_{what.split()[0]}_{abs(hash(kind)) % 10**8}"
    name = f"bad_{mod[-8:]}"
    (tmp_path / f"{mod}.py").write_text(
        f"{head}\n\n@{deco}({name!r}{signature[0]})\ndef bad({signature[1]}):\n    {body}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        refused(prepared, f"plugins=[{mod}]", *[a.format(name=name) for a in args],
                says=pattern(f"{what} {name!r} (from module {mod!r})") + ".*" + says)  # fmt: skip
    finally:
        registry.remove(name) if name in registry.names() else None


@pytest.mark.parametrize("kind", list(BAD_METHODS))
def test_plugin_method_that_misbehaves(prepared, tmp_path, monkeypatch, kind):
    from hhh_bench.merging.base import METHODS

    body, says = BAD_METHODS[kind]
    _misbehaving_plugin(
        prepared, tmp_path, monkeypatch, kind=kind, what="merge method", registry=METHODS,
        head="import torch\nfrom hhh_bench.merging import merge_function", deco="merge_function",
        signature=("", "taus, weights, params"), body=body,
        args=("stage=merge", "merge.method={name}"), says=says,
    )  # fmt: skip


@pytest.mark.parametrize(("args", "says"), [
    case("slerp with three models", "merge=slerp",
         says=pattern("'slerp' interpolates two models", "got 3")),
    case("consensus min_agreement above the models", "merge=consensus_ta",
         "merge.params.min_agreement=5", says=pattern("'min_agreement' = 5 exceeds the 3")),
])  # fmt: skip
def test_model_count_refused_before_any_work(prepared, args, says):
    """Known from the config alone: refused before the diagnostics, the statistics or the
    merge (no diagnostics row, no sweep-cache entry)."""
    refused(prepared, "stage=merge", *args, says=says)


def test_plugins_given_as_a_string(root):
    refused(root, "plugins=badplug", says=pattern("plugins='badplug' must be a list", "[badplug]"))


def test_root_empty(tmp_path):
    os.chdir(tmp_path)
    o = hhh("root=", "logger=none", "stage=data")
    assert_refused(o, set(), tmp_path, "root is empty")
    assert not list(tmp_path.iterdir())


def test_source_glob_matching_no_file(root, tmp_path):
    refused(root, *_paper(tmp_path / "nothing-*.jsonl"), quick=False,
            says=pattern("'hh_rlhf_helpful'", "nothing-*.jsonl", "matches no file"))  # fmt: skip


def test_ctrl_c_is_one_line_and_exit_130(root, monkeypatch):
    """A KeyboardInterrupt anywhere in a run (here: as the data stage starts)."""
    import hhh_bench.pipeline as pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "load_plugins", interrupted)
    o = hhh(f"root={root}", "logger=none", *QUICK, "stage=data")
    assert o.code == 130 and "Traceback" not in o.console, o.console[-2000:]
    assert "interrupted" in o.err


# The third independent battery's findings (a model transformers would load with a warning in
# its log, a strategy that breaks its contract, a store line the report dropped)


def _damaged(src: Path, dst: Path, how: str) -> Path:
    """A specialist copied as a user's folder and damaged one way."""
    import torch
    from safetensors.torch import load_file, save_file

    m = _copy_model(src, dst)
    st = m / "model.safetensors"
    sd = load_file(str(st))
    up = next(k for k in sorted(sd) if "mlp.up_proj" in k)
    if how == "nan":
        sd[up] = sd[up].clone()
        sd[up][0, 0] = float("nan")
    elif how == "empty weights":
        sd = {}
    elif how == "a tensor missing":
        del sd[up]
    elif how == "a tensor too many":
        sd["model.extra.weight"] = torch.zeros(4, 4)
    elif how == "config of fewer layers":
        cfg = json.loads((m / "config.json").read_text())
        cfg["num_hidden_layers"] -= 1
        (m / "config.json").write_text(json.dumps(cfg))
    elif how == "no tokenizer":
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (m / f).unlink(missing_ok=True)
    elif how == "float16":
        sd = {k: v.half() for k, v in sd.items()}
    save_file(sd, str(st), metadata={"format": "pt"})
    return m


EVAL_MODELS = {
    "nan": "holds 1 NaN/Inf value",
    "empty weights": "lacks: .*would be initialised at random",
    "a tensor missing": "lacks: .*mlp.up_proj",
    "a tensor too many": "has no place for: .*model.extra.weight",
    "config of fewer layers": "has no place for: .*model.layers.1",
    "no tokenizer": "has no tokenizer",
}


@pytest.mark.parametrize("how", list(EVAL_MODELS))
def test_eval_model_that_transformers_would_only_warn_about(prepared, tmp_path, how):
    m = _damaged(_specialists(prepared)["helpful"], tmp_path / "m", how)
    refused(prepared, "stage=eval", f"+eval.model={m}",
            says=pattern(f"model '{m}'") + ".*" + EVAL_MODELS[how])  # fmt: skip


def test_specialist_of_another_dtype_named_before_merging(prepared, tmp_path):
    sp = _specialists(prepared)
    m = _damaged(sp["helpful"], tmp_path / "half", "float16")
    refused(prepared, "stage=merge", "merge=task_arithmetic",
            f"merge.models=[{m},{sp['honest']}]", says=pattern(str(m), "float16", "save every model in one dtype"))  # fmt: skip


def test_merge_grid_empty_list(root):
    refused(root, "pipeline.merge_grid.ties.density=[]",
            says=pattern("pipeline.merge_grid.ties.density is an empty list"))  # fmt: skip


STRATEGIES = {
    "raises": ("raise RuntimeError('boom')", "failed: RuntimeError: boom"),
    "counts that lie": (
        "return MixResult(sets['helpful'][:5], {'helpful': 50}, {})",
        "do not match its 5 rows",
    ),
    "counts of no dimension": (
        "return MixResult(sets['helpful'][:5], {'bogus': 5}, {})",
        r"returned counts for \['bogus'\], which are not among the mixed dimensions",
    ),
    "over budget": (
        "rows = [r for d in sets for r in sets[d]] * 3\n"
        "    return MixResult(rows, {'all': len(rows)}, {})",
        "more than its budget",
    ),
    "no rows": ("return MixResult([], {}, {})", "returned no preference pairs"),
    "rows without rejected": (
        "rows = [{'prompt': r['prompt'], 'chosen': r['chosen']} for r in sets['helpful'][:4]]\n"
        "    return MixResult(rows, {'helpful': 4}, {})",
        "returned an invalid row",
    ),
}


@pytest.mark.parametrize("kind", list(STRATEGIES))
def test_plugin_mixing_strategy_that_breaks_its_contract(prepared, tmp_path, monkeypatch, kind):
    from hhh_bench.data.mixing.registry import STRATEGIES as REG

    body, says = STRATEGIES[kind]
    _misbehaving_plugin(
        prepared, tmp_path, monkeypatch, kind=kind, what="mixing strategy", registry=REG,
        head="from hhh_bench.data.mixing.registry import MixResult, NoParams, register_strategy",
        deco="register_strategy", signature=(", NoParams", "sets, *, budget, rng, params"),
        body=body, args=("stage=train", "mix.name={name}"), says=says,
    )  # fmt: skip


def test_diagnostics_store_with_a_garbage_line(prepared):
    path = prepared / "diagnostics.jsonl"
    path.write_text(path.read_text() + "{garbage}\n")
    refused(prepared, "stage=report", says=pattern(f"{path}, line", "not valid JSON"))


def test_diagnostics_store_with_a_torn_line_is_said_on_the_console(prepared):
    """The documented result for a torn line (no closing brace): skipped, and said."""
    path = prepared / "diagnostics.jsonl"
    path.write_text(path.read_text() + '{"row_key": "x", "stat')
    o = hhh(f"root={prepared}", "logger=none", *QUICK, "stage=report")
    assert o.code == 0 and "Traceback" not in o.console, o.console[-2000:]
    assert re.search(rf"{re.escape(str(path))}, line \d+: skipped a torn line", o.console)


def test_results_store_row_with_a_string_seed(root):
    _store(root, json.dumps(row("b", seed="zero")))
    refused(root, "stage=report", says=pattern("line 2", "seed = 'zero' is not an integer"))


def test_train_max_length_below_the_prompts(prepared):
    refused(prepared, "stage=train", "data.dimensions=[helpful]", "train.max_length=2",
            says=pattern("train.max_length=2 leaves some pairs no response token"))  # fmt: skip


def test_sweep_with_a_bad_value_in_a_later_job_runs_no_job(prepared):
    """``-m ... scaling=0.5,nan``: job 0 would have merged and written a row before job 1 was
    refused; every job of a grid is checked before the first runs."""
    before = snapshot(prepared)
    o = hhh("-m", f"root={prepared}", "logger=none", *QUICK, "stage=merge_eval",
            "merge=task_arithmetic", "merge.params.scaling=0.5,nan")  # fmt: skip
    assert_refused(o, before, prepared,
                   pattern("sweep job 1 (merge.params.scaling=nan)", "no job was run"))  # fmt: skip


def test_eval_model_empty(root):
    refused(root, "stage=eval", "+eval.model=", says=pattern("eval.model is empty"))


def test_report_path_is_a_users_file(prepared):
    (prepared / "report").write_text("my notes, not a report folder\n")
    refused(prepared, "stage=report", says=pattern(str(prepared / "report"), "is a file"))
    assert (prepared / "report").read_text().startswith("my notes")


def test_name_escaping_runs_creates_nothing(tmp_path):
    os.chdir(tmp_path)
    o = hhh("name=../../esc", "logger=none", "stage=data")
    assert_refused(o, set(), tmp_path, "name must be one folder name")
    assert not list(tmp_path.iterdir()) and not (tmp_path.parent.parent / "esc").exists()


def test_seed_negative(root):
    refused(root, "seed=-1", says=pattern("seed=-1 must be in [0, 2**32 - 1]"))


# ---------------------------------------------------------------------------------------------
# 9. The subcommands: hhh-bench cache verify|gc, hhh-bench list


SUBCOMMANDS = [
    case("cache (no subcommand)", "cache", says="required: cmd"),
    case("cache bogus", "cache", "bogus", says=pattern("invalid choice: 'bogus'", "verify")),
    case("cache verify --bogus", "cache", "verify", "--bogus", says="unrecognized arguments: --bogus"),
    case("cache gc --force", "cache", "gc", "--force", says="unrecognized arguments: --force"),
    case("cache verify two roots", "cache", "verify", "a", "b", says="unrecognized arguments: b"),
    case("list bogus", "list", "bogus", says=pattern("unknown list 'bogus'", "methods")),
    case("list methods bogus", "list", "methods", "bogus", says="unknown list 'bogus'"),
    case("list --plugin (no module)", "list", "--plugin", says="--plugin: expected one argument"),
    case("list --plugin missing", "list", "methods", "--plugin", "no_such_mod_xyz",
         says=pattern("--plugin 'no_such_mod_xyz'", "cannot be imported")),
    case("list --bogus", "list", "--bogus", says="unrecognized arguments: --bogus"),
    case("merge --seed -1", "merge", "c.yaml", "out", "--seed", "-1",
         says=pattern("argument --seed: -1 is outside [0, 2**32 - 1]")),
]  # fmt: skip


@pytest.mark.parametrize(("args", "says"), SUBCOMMANDS)
def test_subcommand(tmp_path, args, says):
    os.chdir(tmp_path)
    o = hhh(*args)
    assert_refused(o, set(), tmp_path / "none", says)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("sub", ["verify", "gc"])
def test_cache_on_a_missing_root(tmp_path, sub):
    o = hhh("cache", sub, str(tmp_path / "nope"))
    assert_refused(o, set(), tmp_path / "nope", pattern(str(tmp_path / "nope"), "is not a folder"))


@pytest.mark.parametrize("sub", ["verify", "gc"])
def test_cache_on_a_file(tmp_path, sub):
    (tmp_path / "f").write_text("x")
    o = hhh("cache", sub, str(tmp_path / "f"))
    assert_refused(o, set(), tmp_path / "none", pattern(str(tmp_path / "f"), "is not a folder"))


def test_cache_verify_default_root_missing(tmp_path):
    os.chdir(tmp_path)
    o = hhh("cache", "verify")
    assert_refused(o, set(), tmp_path / "none", pattern("runs/default", "is not a folder"))


def test_cache_verify_finds_a_changed_file(prepared):
    """The documented result: exit status 1, the output and the file named."""
    d = _one(prepared, "base")
    (d / "model.safetensors").write_bytes(b"x" + (d / "model.safetensors").read_bytes()[1:])
    o = hhh("cache", "verify", str(prepared))
    assert_refused(
        o, snapshot(prepared), prepared, pattern(f"MISMATCH {d}", "model.safetensors"), code=1
    )


def test_cache_verify_on_a_truncated_checksums(prepared):
    d = _one(prepared, "base")
    _truncate(d / "checksums.json")
    before = snapshot(prepared)
    o = hhh("cache", "verify", str(prepared))
    assert_refused(o, before, prepared, pattern(str(d), "checksums.json"), code=1)


def test_cache_gc_on_a_store_with_a_bad_line(prepared):
    """gc reads the stores to keep what they name: a bad line is named, nothing removed."""
    with (prepared / "results.jsonl").open("a") as f:
        f.write("[1, 2]\n")
    before = snapshot(prepared)
    o = hhh("cache", "gc", "--yes", str(prepared))
    assert_refused(o, before, prepared, pattern("results.jsonl", "line"))
    assert snapshot(prepared) == before


def test_cache_verify_on_a_root_that_is_not_a_run(tmp_path):
    """A folder that is no run's root: verify refuses it by name, exit 2 (it said "0 stage
    output(s), 0 differ" with exit 0, as if a run had verified: the eighth battery), and never
    writes into it."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    before = snapshot(tmp_path)
    o = hhh("cache", "verify", str(tmp_path))
    assert o.code == 2 and "Traceback" not in o.console and "is not a run's root" in o.console
    assert snapshot(tmp_path) == before
