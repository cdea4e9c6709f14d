"""Where the project's configuration lives: the top-level ``conf/`` of a checkout (an editable
install reads it there), shipped inside the wheel as ``hhh_bench/conf/`` (setup.py's build hook),
so an installed hhh-bench has its configs wherever it runs; and what a model folder holds (a full
model or a LoRA adapter, :func:`is_adapter_folder`)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/hhh_bench (this file is in core/)
WHEEL_CONF_DIR = PACKAGE_DIR / "conf"  # an installed wheel
CHECKOUT_CONF_DIR = PACKAGE_DIR.parents[1] / "conf"  # a checkout: <repo>/conf


NOT_CHOICES = frozenset({"source"})
"""Folders of ``conf/`` that are no config group a run chooses from: ``source/`` holds the
public datasets a data option lists (``data.sources``). Left out of ``--help`` and
``hhh-bench list groups``; ``source=...`` on the command line is refused (:mod:`hhh_bench.cli`)."""


def conf_dir() -> Path:
    """The Hydra config folder: ``$HHH_BENCH_CONF`` if set, else the installed package's
    ``conf/``, else the checkout's top-level ``conf/``."""
    env = os.environ.get("HHH_BENCH_CONF")
    installed = WHEEL_CONF_DIR if WHEEL_CONF_DIR.is_dir() else CHECKOUT_CONF_DIR
    path = Path(env) if env else installed
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no config.yaml in {path}; an installed hhh-bench ships its configs in "
            f"{WHEEL_CONF_DIR}, a checkout keeps them in {CHECKOUT_CONF_DIR} "
            "(reinstall hhh-bench, or point HHH_BENCH_CONF at a conf/ folder)"
        )
    return path


def is_adapter_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a LoRA adapter (``adapter_config.json``) rather than a full model
    (``config.json`` + ``model*.safetensors`` / ``pytorch_model*.bin``). A full model beside a
    stray ``adapter_config.json`` with no adapter weights is a full model; a folder holding both
    a full model's weights and an adapter's (``adapter_model.*``) is refused, naming it: which of
    the two a merge or an evaluation reads would change every number."""
    p = Path(folder)
    if not (p / "adapter_config.json").is_file():
        return False
    adapter_weights = [
        n for n in ("adapter_model.safetensors", "adapter_model.bin") if (p / n).is_file()
    ]
    full_weights = (p / "config.json").is_file() and (
        any(p.glob("model*.safetensors")) or any(p.glob("pytorch_model*.bin"))
    )
    if full_weights and adapter_weights:
        raise ValueError(
            f"{str(p)!r} holds both a full model (config.json and its weights) and a LoRA "
            f"adapter (adapter_config.json, {adapter_weights[0]}): keep only the one you mean "
            "(move the other to a folder of its own)"
        )
    return not full_weights


PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""Weight files in Python's pickle format (loading one can run code)."""


def pickle_only_weights(folder: str | os.PathLike[str]) -> list[str]:
    """The pickle weight files of a model folder that holds no ``.safetensors`` file (what a
    safetensors-only loader would not find); empty when it has safetensors weights or none."""
    p = Path(folder)
    if not p.is_dir() or any(p.glob("*.safetensors")):
        return []
    return sorted(f.name for f in p.iterdir() if f.is_file() and f.suffix in PICKLE_WEIGHTS)


def check_safetensors_weights(folder: str | os.PathLike[str], where: str) -> None:
    """Refuse a model folder whose weights are pickle files only, naming them."""
    found = pickle_only_weights(folder)
    if found:
        raise ValueError(
            f"{where}={str(folder)!r} holds its weights as pickle ({', '.join(found[:3])}"
            f"{' ...' if len(found) > 3 else ''}) and no .safetensors file: hhh-bench loads "
            "weights as safetensors only (loading a pickle can run code); convert it where you "
            "trust the file: AutoModelForCausalLM.from_pretrained(folder).save_pretrained(out, "
            "safe_serialization=True)"
        )


def accelerate_config_file(value: str) -> Path:
    """The accelerate config file ``train.accelerate_config`` names: a path as given (relative
    to the current folder), else relative to the checkout that holds ``accelerate/`` beside
    ``conf/`` (so ``accelerate/fsdp.yaml`` works from any folder); ``ValueError`` otherwise."""
    p = Path(value).expanduser()
    if p.is_file():
        return p.resolve()
    if not p.is_absolute() and (CHECKOUT_CONF_DIR.parent / p).is_file():
        return CHECKOUT_CONF_DIR.parent / p
    raise ValueError(
        f"train.accelerate_config={value!r} is not a file (looked in the current folder and in "
        f"{CHECKOUT_CONF_DIR.parent}): give an accelerate config (accelerate/ddp.yaml, "
        "fsdp.yaml, deepspeed_zero3.yaml)"
    )
