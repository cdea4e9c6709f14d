"""Loading base models and tokenizers by hub id or path, with a dtype policy and safe defaults.

Weights are loaded from safetensors only (``use_safetensors=True``) and ``trust_remote_code`` is
off unless a config says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hhh_bench.core.hubref import split_ref
from hhh_bench.core.paths import check_safetensors_weights, is_adapter_folder

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


def _ref(path_or_id: str | Path, revision: str | None) -> tuple[str | Path, str | None]:
    """A hub id written ``<id>@<commit>`` as ``(id, commit)`` (``revision``, when given, wins)."""
    if isinstance(path_or_id, Path):
        return path_or_id, revision
    ident, pinned = split_ref(str(path_or_id))
    return ident, revision or pinned


def load_causal_lm(
    path_or_id: str | Path,
    *,
    dtype: str | None = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
) -> Any:
    """Load a causal LM from a local folder or a hub id (safetensors only; ``<id>@<commit>``:
    that commit)."""
    from transformers import AutoModelForCausalLM

    path_or_id, revision = _ref(path_or_id, revision)
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
    adapter = folder.is_dir() and is_adapter_folder(folder)
    if not adapter:
        try:
            check_safetensors_weights(folder, "model")
        except ValueError as e:
            raise OSError(str(e)) from None
    if adapter:
        adapter_base(folder)  # names a broken adapter_config.json before transformers' KeyError
    try:
        if not adapter:  # what transformers would only log: weights missing, left over, misshapen
            model, info = AutoModelForCausalLM.from_pretrained(
                str(path_or_id), output_loading_info=True, **kwargs
            )
            check_loading_info(path_or_id, info)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path_or_id), **kwargs)
    except OSError as e:
        raise OSError(
            f"could not load model {str(path_or_id)!r}: {e}\n"
            "If this is a hub id and this machine is offline, download it first on a machine with "
            f"access (`huggingface-cli download {path_or_id}`) and point HF_HOME at that cache."
        ) from None
    except Exception as e:  # noqa: BLE001 - safetensors' own error type, named here
        if type(e).__name__ != "SafetensorError":
            raise
        raise OSError(
            f"could not load model {str(path_or_id)!r}: a weights file is not a readable "
            f"safetensors file ({e}): truncated or damaged; copy or save it again"
        ) from None
    check_finite_weights(path_or_id, model)
    return model.to(device)


def check_loading_info(path_or_id: str | Path, info: dict[str, Any]) -> None:
    """Refuse a model whose weights file does not fill its config's architecture: tensors the
    config expects but the file lacks (transformers would initialise them at random and only log
    it), tensors the config has no place for (a config of fewer layers than the weights), or
    tensors of another shape. Each is named."""
    for what, key, hint in (
        ("lacks", "missing_keys", "they would be initialised at random"),
        ("holds tensors its config has no place for", "unexpected_keys", "the config and the "
         "weights are of different models (layers, vocabulary)"),
        ("holds tensors of another shape than its config's", "mismatched_keys", ""),
    ):  # fmt: skip
        found = sorted(str(k if isinstance(k, str) else k[0]) for k in info.get(key) or ())
        if found:
            more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
            raise ValueError(
                f"model {str(path_or_id)!r} {what}: {found[:3]}{more}"
                + (f": {hint}" if hint else "")
            )


def check_finite_weights(path_or_id: str | Path, model: Any) -> None:
    """Refuse a model with a NaN or Inf weight (it would score whatever its NaN logits make of
    the answers), naming the tensor; one sum per tensor."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point() or bool(torch.isfinite(t.detach().sum())):
            continue  # (a float16 sum can overflow where no value is Inf: then counted)
        bad = t.numel() - int(torch.isfinite(t.detach()).sum())
        if bad:
            raise ValueError(
                f"model {str(path_or_id)!r}: tensor {name!r} holds {bad} NaN/Inf value(s)"
            )


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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""Files one of which a folder's tokenizer needs (fast, its config, SentencePiece, BPE)."""


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

    path_or_id, revision = _ref(path_or_id, revision)
    path_or_id = tokenizer_source(path_or_id)
    folder = Path(path_or_id).expanduser()
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        held = sorted(p.name for p in folder.iterdir())[:8]
        raise ValueError(
            f"model {str(path_or_id)!r} has no tokenizer (none of {list(TOKENIZER_FILES)}; it "
            f"holds {held}): save the tokenizer beside the weights (tokenizer.save_pretrained)"
        )
    tok = AutoTokenizer.from_pretrained(
        str(path_or_id), trust_remote_code=trust_remote_code, revision=revision
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok
