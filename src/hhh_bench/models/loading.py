"""Loading base models and tokenizers by hub id or path, with a dtype policy and safe defaults.

Weights are loaded from safetensors only (``use_safetensors=True``) and ``trust_remote_code`` is
off unless a config says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | None, device: str = "cpu") -> torch.dtype:
    """``auto`` → bf16 on a GPU that supports it, else float32; otherwise the named dtype."""
    if name in (None, "auto"):
        if (
            device.startswith("cuda")
            and torch.cuda.is_available()
            and torch.cuda.is_bf16_supported()
        ):
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {['auto', *DTYPES]}")
    return DTYPES[name]


def load_causal_lm(
    path_or_id: str | Path,
    *,
    dtype: str | None = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
) -> Any:
    """Load a causal LM from a local folder or a hub id (safetensors only)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(dtype, device),
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,
    }
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    folder = Path(path_or_id).expanduser()
    # a LoRA adapter folder (adapter_config.json, no config.json) is loaded by transformers'
    # peft integration: its base model, then the adapter on top
    if (
        folder.is_dir()
        and not (folder / "config.json").is_file()
        and not (folder / "adapter_config.json").is_file()
    ):
        files = sorted(p.name for p in folder.iterdir())[:6]
        raise OSError(
            f"could not load model {str(path_or_id)!r}: the folder has no config.json (it holds "
            f"{files or 'nothing'}); give the folder a model's save_pretrained wrote, or a LoRA "
            "adapter's (adapter_config.json)"
        )
    if folder.is_dir() and not (folder / "config.json").is_file():
        adapter_base(folder)  # names a broken adapter_config.json before transformers' KeyError
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path_or_id), **kwargs)
    except OSError as e:
        raise OSError(
            f"could not load model {str(path_or_id)!r}: {e}\n"
            "If this is a hub id and this machine is offline, download it first on a machine with "
            f"access (`huggingface-cli download {path_or_id}`) and point HF_HOME at that cache."
        ) from None
    return model.to(device)


def adapter_base(folder: Path) -> str:
    """The base model a LoRA adapter folder's ``adapter_config.json`` names (ValueError, naming
    the file, when it is unreadable or names none)."""
    import json

    cfg = folder / "adapter_config.json"
    try:
        base = json.loads(cfg.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{cfg}: not a readable adapter config ({e})") from None
    if not base:
        raise ValueError(
            f"{folder} is a LoRA adapter and its adapter_config.json names no "
            "base_model_name_or_path: write the base model's id or folder there"
        )
    return str(base)


def tokenizer_source(path_or_id: str | Path) -> str:
    """Where a model's tokenizer is: the folder itself, or, for a LoRA adapter folder without
    tokenizer files, the base model its ``adapter_config.json`` names."""
    p = Path(path_or_id)
    if (p / "adapter_config.json").is_file() and not any(
        (p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        return adapter_base(p)
    return str(path_or_id)


def load_tokenizer(
    path_or_id: str | Path, *, trust_remote_code: bool = False, revision: str | None = None
) -> Any:
    """Load a tokenizer (a LoRA adapter's: its base model's when it ships none); left padding,
    a pad token (eos if missing)."""
    from transformers import AutoTokenizer

    path_or_id = tokenizer_source(path_or_id)
    tok = AutoTokenizer.from_pretrained(
        str(path_or_id), trust_remote_code=trust_remote_code, revision=revision
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok
