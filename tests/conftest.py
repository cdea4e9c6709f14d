"""Shared fixtures. Everything runs offline on tiny models; heavy objects are session-scoped so
the suite pays for imports and training once."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

# Offline and quiet before anything imports transformers / datasets / wandb.
_CACHE = Path(tempfile.gettempdir()) / "hhh-bench-test-cache"
for k, v in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "HF_HOME": str(_CACHE / "hf"),
    "HHH_BENCH_HASH_CACHE": str(_CACHE / "hashes"),  # content hashes of files outside any root
    "HF_DATASETS_CACHE": str(_CACHE / "hf" / "datasets"),
    "WANDB_DIR": str(_CACHE / "wandb"),
}.items():
    os.environ.setdefault(k, v)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# A smaller world than the demo's, so the session's base SFT takes well under a minute.
SMALL_WORLD = [
    "data.world.n_known.train=40",
    "data.world.n_known.validation=12",
    "data.world.n_known.test=12",
    "data.world.n_unknown.sft=12",
    "data.world.n_unknown.train=30",
    "data.world.n_unknown.validation=12",
    "data.world.n_unknown.test=12",
    "data.world.n_benign_objects=10",
    "data.world.n_harmful_objects=10",
    "data.world.pairs_per_dimension=120",
    "data.world.eval_items_per_kind=36",
    "model.base_sft.epochs=20",  # KNOWN_FACTS_BAR's margin was measured with 20 (the demo: 12)
    # the model is conf/model/tiny.yaml's 64 x 2 layers (measured: 36/36 known facts after the
    # SFT for seeds 0 and 1, in ~47 s on one core, against 32/36 and 21/36 in ~150 s for the
    # 128 x 4 layers the demo used before)
]

KNOWN_FACTS_BAR = 0.9
"""The small test world's SFT base answers all 36 of its known-fact test questions (measured
2026-11-30: 1.000 for seeds 0 and 1, final loss 0.04). The bar leaves 3 items of margin for float
differences between CPUs and fails an SFT that did not learn (untrained: ~0.1). (With the demo's
larger model the same SFT reached only 0.889 on this machine against >= 0.9 elsewhere, and 0.583
for seeds 1 and 3: the reason the tests use the smaller model of SMALL_WORLD.)"""


def _parse_each_yaml_once() -> None:
    """Hydra parses every YAML file of conf/ again on each composition (~a third of its time,
    PyYAML in pure Python), and the suite composes some hundreds of configs in each worker:
    OmegaConf's YAML reads are memoized by the file's text, each caller getting a fresh deep copy
    of the parsed object, so what Hydra composes is what it composes without the memo."""
    import copy
    import types

    import omegaconf.omegaconf as oc_module
    import yaml

    if isinstance(oc_module.yaml, types.SimpleNamespace):  # already in place
        return
    parsed: dict[tuple[str, str], object] = {}

    def load(stream, Loader):  # noqa: N803 - yaml.load's own keyword
        text = stream if isinstance(stream, str) else stream.read()
        key = (text, f"{Loader.__module__}.{Loader.__qualname__}")
        if key not in parsed:
            parsed[key] = yaml.load(text, Loader=Loader)
        return copy.deepcopy(parsed[key])

    oc_module.yaml = types.SimpleNamespace(**{**vars(yaml), "load": load})


_parse_each_yaml_once()


@contextlib.contextmanager
def _coverage_paused():
    """Pause the coverage tracer (``make test``'s ``--cov``) inside a block that runs library
    code only. Python 3.11's tracer runs every line of every module in its slow path: Hydra's
    composition, ~1M Python calls and no line of ``hhh_bench`` (the project registers no
    resolver, schema or search-path plugin), took twice its time under coverage (measured
    2026-12-07: 8 compositions 0.12 -> 0.24 s of CPU each), and the suite composes some
    hundreds of configs. No coverage data is lost: what runs in the block is not measured."""
    import coverage

    cov = coverage.Coverage.current()
    if cov is None:
        yield
        return
    cov.stop()
    try:
        yield
    finally:
        cov.start()


def _import_libraries_untraced() -> None:
    """In a pytest-xdist worker (``make test``), import the heavy libraries every worker imports
    anyway (collection imports them through the test modules) with coverage paused: their
    module-level code is no line of ``hhh_bench``, and ran ~1.4x slower traced (measured
    2026-12-07: torch, transformers, datasets, peft, pandas, lm-eval and trl, 6.5-7.2 s of CPU
    untraced against 8.7-9.4 s traced). Not in the controller, which runs no test."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import importlib

    with _coverage_paused():
        for name in ("torch", "transformers", "datasets", "peft", "pandas", "lm_eval.evaluator",
                     "lm_eval.models.huggingface", "trl"):  # fmt: skip
            importlib.import_module(name)


_import_libraries_untraced()


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False):
    """Compose the project config the way the CLI does (no Hydra app, no chdir)."""
    from hydra import compose as h_compose
    from hydra import initialize_config_dir

    with _coverage_paused(), initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return h_compose(
            config_name="config",
            overrides=list(overrides or []),
            return_hydra_config=return_hydra_config,
        )


def run_cli(*args: str, cwd: Path, timeout: int = 120):
    """``python -m hhh_bench ARGS`` in a subprocess, as a user types it: this checkout's source,
    no ``--verbose`` (``HHH_VERBOSE``, ``HYDRA_FULL_ERROR`` unset), output captured."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for name in ("HYDRA_FULL_ERROR", "HHH_VERBOSE"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "hhh_bench", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="session")
def session_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def small_cfg(session_root):
    """The small-world config every stage test shares (same root: stages reuse each other)."""
    return compose([f"root={session_root}", "logger=none", *SMALL_WORLD])


def _one_thread() -> None:
    import torch

    # One thread by default: on a 2-core machine shared with anything else, oversubscribed torch
    # threads run 10-20x slower (benchmarks/README.md); HHH_TEST_THREADS=2 on an idle machine.
    torch.set_num_threads(int(os.environ.get("HHH_TEST_THREADS", 1)))


@pytest.fixture(scope="session")
def shared_world(tmp_path_factory) -> Path:
    """A root holding the small world's data and θ0, built once per test run: under pytest-xdist
    (`make test` runs two workers) the first worker to need it builds it, under a file lock, in
    the folder the workers share; the others wait for it. Each worker's session root gets a copy
    (:func:`small_data`, :func:`small_base`), which its stages then reuse: stage keys hold
    content, not location (docs/caching.md)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-world"
    with FileLock(str(shared) + ".lock"):
        if not (shared / ".built").is_file():
            from hhh_bench.pipeline import run
            from hhh_bench.stages.base import run_base
            from hhh_bench.stages.data import run_data

            _one_thread()
            cfg = compose([f"root={shared}", "logger=none", *SMALL_WORLD])
            run_base(cfg, run_data(cfg))
            for dim in DIMS:  # seed 0's specialists (:func:`small_specialists`)
                run(compose([f"root={shared}", "logger=none", "threads=1", "seeds=[0]",
                             *SMALL_WORLD, "stage=train", f"data.dimensions=[{dim}]"]))  # fmt: skip
            (shared / ".built").touch()
    return shared


def _copy_stage(shared: Path, root: Path, stage: str) -> set[Path]:
    """Copy the outputs of ``shared/<stage>`` that ``root`` lacks into it; the stage outputs
    copied or already there."""
    import shutil

    out = set()
    for entry in (shared / stage).iterdir():
        if not entry.name.startswith("."):
            if not (root / stage / entry.name).exists():
                shutil.copytree(entry, root / stage / entry.name)
            out.add(root / stage / entry.name)
    return out


def _reused(out: dict, copied: set[Path], what: str) -> dict:
    """``out`` came from a copied output (its key matched), not from a new computation."""
    folder = Path(out.get("dir") or out["path"])
    assert out["cached"] and folder in copied, f"the shared world's {what} was not reused: {folder}"
    return out


DIMS = ("helpful", "honest", "harmless")


@pytest.fixture(scope="session")
def small_specialists(shared_world, session_root, small_base) -> set[Path]:
    """Seed 0's three specialists of the small world, trained once per test run in the shared
    world and copied into this worker's session root, where any run of that world with seed 0
    reuses them (their keys hold content, not location). The outputs copied."""
    return _copy_stage(shared_world, session_root, "train")


@pytest.fixture(scope="session")
def small_data(small_cfg, shared_world, session_root):
    from hhh_bench.stages.data import run_data

    copied = _copy_stage(shared_world, session_root, "data")
    return _reused(run_data(small_cfg), copied, "data")


@pytest.fixture(scope="session")
def small_base(small_cfg, small_data, shared_world, session_root):
    """θ0 of the small world: the tiny model SFT'd on the world (trained once per test run)."""
    from hhh_bench.stages.base import run_base

    _one_thread()
    copied = _copy_stage(shared_world, session_root, "base")
    return _reused(run_base(small_cfg, small_data), copied, "θ0")


def save_random_lora(base, out, *, r: int, alpha: int, targets: list[str], seed: int = 3):
    """Save a LoRA adapter on ``base`` with random B (so τ = s·B·A ≠ 0) to ``out/adapter`` and
    the same adapter merged into full weights to ``out/full``; returns the two folders."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    out = Path(out)
    peft_model.save_pretrained(out / "adapter")
    peft_model.merge_and_unload().save_pretrained(out / "full")
    return out / "adapter", out / "full"


@pytest.hookimpl(trylast=True)  # after -m has deselected: the halves are of what runs
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test``: two workers, ``--dist worksteal``), put the modules
    holding end-to-end tests (marker ``e2e``: the suite's slowest, tens of seconds each) at the
    head of both workers' shares, whole modules together (their module fixtures are built
    once). worksteal first gives the first worker the first half of the collection and the
    second the rest, and steals from the end of a queue: in collection order these modules all
    sat in the second half and ended the run on one worker. The modules that need the shared
    world (:func:`shared_world`, built once under a lock, ~25 s) alternate between the halves,
    the first half first; those that do not open the second half, so that its worker has work
    while the first builds the world. Only the order changes; every test runs. One process (no
    xdist) keeps pytest's order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    heavy: dict[str, list] = {}
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            heavy.setdefault(item.module.__name__, [])
    if not heavy:
        return
    for item in items:
        if item.module.__name__ in heavy:
            heavy[item.module.__name__].append(item)
    rest = [item for item in items if item.module.__name__ not in heavy]
    needs_world = sorted(m for m, its in heavy.items()
                         if any("shared_world" in i.fixturenames for i in its))  # fmt: skip
    world_free = sorted(m for m in heavy if m not in needs_world)
    first = [item for name in needs_world[0::2] for item in heavy[name]]
    second = [item for name in [*world_free, *needs_world[1::2]] for item in heavy[name]]
    fill = max(0, len(items) // 2 - len(first))
    items[:] = first + rest[:fill] + second + rest[fill:]
