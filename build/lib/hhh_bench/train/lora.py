"""LoRA with peft: the adapter config from ``train.lora``, saving, loading and merging adapters.

A LoRA specialist is saved as its adapter (``adapter/adapter_model.safetensors`` +
``adapter_config.json``, a few MB for a 7–8B model); :func:`merge_adapter_into` turns base +
adapter into full weights when asked (``train.merge_adapter: true``), e.g. for tools that only take
full checkpoints. The merge stage can also take the adapter itself (τ = scale · B · A).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Every linear layer of a Llama/Mistral block; never lm_head (TRL computes log-probs from
# lm_head.weight directly, so an adapter there would never train).
DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)  # fmt: skip
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
)


def lora_config(
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: Sequence[str] | str = DEFAULT_TARGET_MODULES,
    bias: str = "none",
) -> Any:
    """A peft ``LoraConfig`` for a causal LM (``lora_alpha / r`` scales the update B·A).

    Args:
        r: rank of the update.
        alpha: ``lora_alpha``; the update is scaled by ``alpha / r``.
        dropout: dropout on the adapter's input.
        target_modules: module names to adapt (or ``"all-linear"``); ``lm_head`` is refused.
        bias: ``none`` | ``all`` | ``lora_only``.
    """
    from peft import LoraConfig, TaskType

    if r < 1:
        raise ValueError(f"train.lora.r must be >= 1, got {r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"train.lora.dropout must be in [0, 1), got {dropout}")
    targets: list[str] | str = (
        target_modules if isinstance(target_modules, str) else list(target_modules)
    )
    if not isinstance(targets, str) and "lm_head" in targets:
        raise ValueError(
            "train.lora.target_modules must not contain lm_head: TRL's DPO reads lm_head.weight "
            "directly, so an adapter there would never be trained"
        )
    return LoraConfig(
        r=int(r),
        lora_alpha=int(alpha),
        lora_dropout=float(dropout),
        target_modules=targets,
        bias=bias,
        task_type=TaskType.CAUSAL_LM,
    )


def lora_config_from(cfg: Mapping[str, Any]) -> Any:
    """``lora_config`` from a ``train.lora`` mapping (r, alpha, dropout, target_modules, bias)."""
    known = {"r", "alpha", "dropout", "target_modules", "bias"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown train.lora option(s) {unknown}; valid: {sorted(known)}")
    return lora_config(**dict(cfg))


def is_lora_parameter(name: str) -> bool:
    """True for the parameters peft adds (``lora_A`` / ``lora_B`` / magnitude vectors)."""
    return "lora_" in name


def save_adapter(model: Any, out_dir: str | Path) -> Path:
    """Save a peft model's adapter (safetensors) to ``out_dir``; return the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    if not (out / "adapter_config.json").is_file():
        raise RuntimeError(f"{out}: peft wrote no adapter_config.json; is this a peft model?")
    return out


def load_adapter_model(
    base_path: str | Path,
    adapter_path: str | Path,
    *,
    dtype: str | None = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> Any:
    """Base model with the adapter attached (not merged), in eval mode."""
    from peft import PeftModel

    from hhh_bench.models.loading import load_causal_lm

    base = load_causal_lm(
        base_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code
    )
    return PeftModel.from_pretrained(base, str(adapter_path)).eval()


def merge_adapter_into(
    base_path: str | Path,
    adapter_path: str | Path,
    out_dir: str | Path,
    *,
    dtype: str | None = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> Path:
    """Merge a LoRA adapter into its base and save full weights (safetensors) + tokenizer.

    Args:
        base_path: folder or hub id of the base model the adapter was trained on.
        adapter_path: folder holding ``adapter_config.json`` + ``adapter_model.safetensors``.
        out_dir: where the merged model goes (created; existing files are overwritten).
        dtype: dtype to load and save in (``auto`` for bf16 on a capable GPU).
        device: where the merge runs.
        trust_remote_code: passed to the base model's loader.

    Returns:
        ``out_dir``, loadable with ``AutoModelForCausalLM.from_pretrained``.
    """
    adapter_path = Path(adapter_path)
    if not (adapter_path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{adapter_path}: no adapter_config.json (not a LoRA adapter folder)"
        )
    model = load_adapter_model(
        base_path, adapter_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code
    )
    merged = model.merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    base_dir = Path(str(base_path))
    if base_dir.is_dir():
        for name in TOKENIZER_FILES:
            if (base_dir / name).is_file() and not (out / name).exists():
                shutil.copy2(base_dir / name, out / name)
    return out
