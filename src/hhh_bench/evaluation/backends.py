"""The lm-eval model backend of an evaluation: Hugging Face (default), vLLM, or a server.

``hf``
    ``lm_eval.models.huggingface.HFLM`` around a model object (or a folder loaded with
    :func:`hhh_bench.models.load_causal_lm`): exact, works on CPU, the reference implementation
    lm-eval compares other backends against.
``vllm``
    ``lm_eval.models.vllm_causallms.VLLM`` (``lm_eval.api.registry.get_model("vllm")``), built
    from the model's folder or hub id: paged attention and continuous batching make the judged
    tasks' generations many times faster on GPUs. Its options (``eval.backend_args``) go to
    lm-eval's constructor as they are, e.g. ``tensor_parallel_size`` (shard one model over GPUs),
    ``data_parallel_size`` (replicas over GPUs, lm-eval splits the requests among them),
    ``gpu_memory_utilization``, ``max_model_len``. Install with the ``vllm`` extra
    (``pip install 'hhh-bench[vllm]'``, a CUDA machine); lm-eval's README notes that vLLM's
    numbers can differ slightly from HF's, so compare rows of one backend.
``server``
    lm-eval's ``local-completions`` against an OpenAI-compatible server, given by URL or started
    per model (``eval.server``): :mod:`hhh_bench.evaluation.serving`.

:func:`make_lm` is the one place a backend is chosen; :func:`check_backend` validates the choice
before any model is loaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BACKENDS = ("hf", "vllm", "server")
# Options of our own that must not be given through backend_args (they have their own knobs).
_RESERVED = ("pretrained", "tokenizer", "batch_size", "dtype", "device")


def vllm_installed() -> bool:
    """Whether the ``vllm`` package can be imported here."""
    return importlib.util.find_spec("vllm") is not None


def check_backend(backend: str, backend_args: Mapping[str, Any] | None = None) -> None:
    """Validate ``eval.backend`` / ``eval.backend_args``.

    Raises:
        ValueError: an unknown backend, backend_args given to ``hf``, or an option that has its
            own knob.
        ImportError: ``vllm`` chosen but the ``vllm`` package is not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"eval.backend must be one of {BACKENDS}, got {backend!r}")
    args = dict(backend_args or {})
    if backend == "hf" and args:
        raise ValueError(
            f"eval.backend_args {sorted(args)} apply to eval.backend=vllm only; the hf backend "
            "takes batch_size and the model's dtype/device from their own settings"
        )
    if backend == "server" and args:
        raise ValueError(
            f"eval.backend_args {sorted(args)} apply to eval.backend=vllm only; a server's "
            "settings are eval.server (url or launch, args, max_concurrency, ...)"
        )
    reserved = sorted(set(args) & set(_RESERVED))
    if reserved:
        raise ValueError(
            f"eval.backend_args must not set {reserved}: use eval.batch_size, model.dtype and "
            "the model path instead"
        )
    if backend == "vllm" and not vllm_installed():
        raise ImportError(
            "eval.backend=vllm needs the vllm package, which is not installed in this "
            "environment: on a CUDA machine run `pip install 'hhh-bench[vllm]'` (lm-eval's vllm "
            "extra), or use eval.backend=hf"
        )


def make_lm(
    backend: str,
    model: Any,
    tokenizer: Any = None,
    *,
    batch_size: int | str = 32,
    device: str = "cpu",
    dtype: str | None = "auto",
    backend_args: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Construct lm-eval's model wrapper for one evaluated model.

    Args:
        backend: ``hf`` or ``vllm``.
        model: ``hf``: a loaded causal LM; ``vllm``: its folder or hub id.
        tokenizer: ``hf``: the model's tokenizer object; ``vllm``: ignored (read from the
            folder).
        batch_size: lm-eval batch size (``auto`` lets either backend choose).
        device: ``hf`` only: the model's torch device.
        dtype: ``vllm`` only: ``auto`` | ``bfloat16`` | ``float16`` | ``float32``.
        backend_args: ``vllm`` only: passed to lm-eval's ``VLLM`` as they are.
        trust_remote_code: ``vllm`` only.

    Returns:
        An ``lm_eval.api.model.LM``.
    """
    check_backend(backend, backend_args)
    if backend == "server":
        raise ValueError("eval.backend=server: the model is built by evaluation.serving")
    if backend == "hf":
        from lm_eval.models.utils import resolve_max_length

        cls = _hf_lm_class()
        # lm-eval's HFLM.max_length resolves this from the config on every request: once here
        max_length = resolve_max_length(model.config, tokenizer, default=cls._DEFAULT_MAX_LENGTH)
        return cls(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            device=device,
            max_length=max_length,
        )
    if not isinstance(model, (str, Path)):
        raise TypeError(
            "eval.backend=vllm loads the model itself: pass its folder or hub id, not a loaded "
            f"{type(model).__name__}"
        )
    from lm_eval.api.registry import get_model

    cls = get_model("vllm")
    return cls(
        pretrained=str(model),
        dtype=dtype or "auto",
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
        **dict(backend_args or {}),
    )


# (tokenizer fingerprint, tokenizer settings, context, continuation) -> (context ids, continuation
# ids): the toy world evaluates ~60 models per seed on the same requests, and tokenizing them was a
# third of each evaluation's time.
_ENCODED: OrderedDict[tuple[Any, ...], tuple[tuple[int, ...], tuple[int, ...]]] = OrderedDict()
_ENCODED_MAX = 500_000
_FINGERPRINTS: dict[int, tuple[Any, str]] = {}


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """A hash of everything that decides how ``tokenizer`` encodes: its fast tokenizer's full
    serialisation (vocabulary, merges, normaliser, pre-tokeniser, post-processor) and its
    special tokens. Two loads of the same tokenizer folder share it; computed once per object.
    None for a tokenizer without a fast backend (its encodings are not remembered)."""
    held = _FINGERPRINTS.get(id(tokenizer))
    if held is not None and held[0] is tokenizer:
        return held[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    h = hashlib.sha256(type(tokenizer).__qualname__.encode())
    h.update(backend.to_str().encode())
    h.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    h.update(repr((tokenizer.bos_token_id, tokenizer.eos_token_id)).encode())
    if len(_FINGERPRINTS) >= 8:
        _FINGERPRINTS.clear()
    _FINGERPRINTS[id(tokenizer)] = (tokenizer, h.hexdigest())  # held: its id stays its own
    return h.hexdigest()


# (tokenizer fingerprint, chat template and its arguments, chat, add_generation_prompt) -> the
# prompt HFLM.apply_chat_template renders: lm-eval renders every item's prompt again for each
# evaluated model (~20k renders per toy seed)
_RENDERED: OrderedDict[tuple[Any, ...], str] = OrderedDict()


def _template_key(lm: Any, chat: Any, add_generation_prompt: bool) -> tuple[Any, ...] | None:
    """The memo key of one chat-template rendering of ``lm``'s tokenizer; None (not remembered)
    for a tokenizer without a fast backend, a template that reads the clock (``strftime``) or a
    chat that is not plain JSON."""
    fingerprint = tokenizer_fingerprint(lm.tokenizer)
    template = getattr(lm.tokenizer, "chat_template", None)
    if fingerprint is None or "strftime" in repr(template):
        return None
    try:
        return (
            fingerprint,
            repr(template),
            json.dumps(getattr(lm, "chat_template_args", None) or {}, sort_keys=True),
            json.dumps(chat, sort_keys=True),
            bool(add_generation_prompt),
        )
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def _hf_lm_class() -> type:
    """lm-eval's ``HFLM`` whose context/continuation encodings are remembered across instances
    (within the process) for tokenizers with the same :func:`tokenizer_fingerprint`: the token ids
    are those ``HFLM._encode_pair`` computes, computed once per distinct request."""
    from lm_eval.models.huggingface import HFLM

    class CachedEncodingHFLM(HFLM):
        def apply_chat_template(
            self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
        ) -> str:
            key = _template_key(self, chat_history, add_generation_prompt)
            if key is None:
                return super().apply_chat_template(chat_history, add_generation_prompt)
            hit = _RENDERED.get(key)
            if hit is None:
                hit = super().apply_chat_template(chat_history, add_generation_prompt)
                _RENDERED[key] = hit
                if len(_RENDERED) > _ENCODED_MAX:
                    _RENDERED.popitem(last=False)
            return hit

        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            fingerprint = tokenizer_fingerprint(self.tokenizer)
            if fingerprint is None:
                return super()._encode_pair(context, continuation)
            key = (
                fingerprint,
                self.backend,
                self.add_bos_token,
                self.custom_prefix_token_id,
                context,
                continuation,
            )
            hit = _ENCODED.get(key)
            if hit is None:
                ctx, cont = super()._encode_pair(context, continuation)
                hit = (tuple(ctx), tuple(cont))
                _ENCODED[key] = hit
                if len(_ENCODED) > _ENCODED_MAX:
                    _ENCODED.popitem(last=False)
            return list(hit[0]), list(hit[1])

    return CachedEncodingHFLM
