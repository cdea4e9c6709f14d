"""The streaming merge engine: merge whole models tensor by tensor from safetensors.

``merge_models(method, base, finetuned, out_dir, **params)`` reads one tensor of each model at a
time (``safe_open``), so peak memory stays near (T + 2) × the largest tensor, not T × the model.
Methods that need statistics over all layers (RESM's rank budget, TIES ``scope=global``) get a
first streaming pass. The expensive, knob-independent part of each tensor's merge (``precompute``:
SVD factors, trim masks) is cached on disk keyed by the inputs' content and the knobs it depends
on, so a sweep over ``scaling`` recomposes from the cache. Output: sharded safetensors, the base's
config / tokenizer / generation config, and a model card, written into a temporary folder that is
renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hhh_bench.merging.base import get_method, validate_tensors
from hhh_bench.provenance import atomic_dir, config_hash, package_versions

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
COPY_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)
VOCAB_POLICIES = ("error", "base", "truncate_to_base")
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    **{
        name: getattr(torch, attr)
        for name, attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"))
        if hasattr(torch, attr)
    },
}
"""safetensors dtype names → torch dtypes (the ones a merge reads or writes)."""


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


def resolve_path(path_or_id: str | Path, *, revision: str | None = None) -> Path:
    """A local folder, or a hub id resolved through the HF cache (``HF_HUB_OFFLINE`` respected).

    Only safetensors, JSON and tokenizer files are fetched; pickles never are.
    """
    p = Path(path_or_id).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{p}: expected a model folder, got a file")
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                str(path_or_id),
                revision=revision,
                allow_patterns=["*.safetensors", "*.json", "tokenizer*", "*.jinja", "*.model"],
            )
        )
    except Exception as e:  # noqa: BLE001 - turned into an actionable message
        raise ValueError(
            f"model {str(path_or_id)!r} is neither a local folder nor reachable on the hub "
            f"({type(e).__name__}: {e}). On a machine with access run "
            f"`huggingface-cli download {path_or_id}` and point HF_HOME at that cache."
        ) from None


class ModelReader:
    """Lazy, read-only access to one model's tensors (single or sharded safetensors)."""

    def __init__(self, folder: Path, label: str, allow_pickle: bool = False) -> None:
        self.folder = folder
        self.label = label
        self._files: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self._pickle_sd: dict[str, torch.Tensor] | None = None
        st = sorted(folder.glob("*.safetensors"))
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._files = {k: folder / v for k, v in weight_map.items()}
        elif st:
            from safetensors import safe_open

            for f in st:
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():  # noqa: SIM118 - safe_open handles are not mappings
                        self._files[k] = f
        else:
            pickles = [f for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES]
            if pickles and not allow_pickle:
                raise ValueError(
                    f"{label} ({folder}) holds only pickle checkpoints ({pickles[0].name}); "
                    "they can run arbitrary code when loaded. Convert them to safetensors, or "
                    "pass allow_pickle=true if you trust the source."
                )
            if not pickles:
                raise ValueError(f"{label} ({folder}) has no *.safetensors weights")
            sd: dict[str, torch.Tensor] = {}
            for f in pickles:
                sd.update(torch.load(f, map_location="cpu", weights_only=True))
            self._pickle_sd = sd
            self._files = {k: f for k in sd for f in pickles[:1]}

    def keys(self) -> list[str]:
        return list(self._files)

    def get(self, key: str) -> torch.Tensor:
        """One tensor. The file is opened for this read only: a ``safe_open`` handle kept open
        keeps every page read through it resident (and counted in RSS) until it is closed, which
        over a whole merge is the size of every input model."""
        if self._pickle_sd is not None:
            return self._pickle_sd[key]
        from safetensors import safe_open

        with safe_open(str(self._files[key]), framework="pt") as h:
            return h.get_tensor(key)

    def _header(self, key: str) -> Any:
        from safetensors import safe_open

        f = self._files[key]
        if f not in self._handles:  # header reads only: no data page is touched
            self._handles[f] = safe_open(str(f), framework="pt")
        return self._handles[f].get_slice(key)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._pickle_sd is not None:
            return tuple(self._pickle_sd[key].shape)
        return tuple(self._header(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        if self._pickle_sd is not None:
            return self._pickle_sd[key].dtype
        name = self._header(key).get_dtype()
        if name not in ST_DTYPES:
            raise ValueError(f"{self.label} ({self.folder}): tensor {key!r} has dtype {name}")
        return ST_DTYPES[name]

    def config(self) -> dict[str, Any]:
        c = self.folder / "config.json"
        return json.loads(c.read_text()) if c.is_file() else {}

    def close(self) -> None:
        self._handles.clear()


class LoraReader:
    """A peft LoRA adapter seen as full weights: θ = θ0 + s·B·A on every adapted module
    (exact; s = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA)."""

    def __init__(self, folder: Path, base: ModelReader, label: str) -> None:
        self.folder = folder
        self.label = label
        self.base = base
        cfg = json.loads((folder / "adapter_config.json").read_text())
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ValueError(
                f"{label} ({folder}): only LoRA adapters are supported, got {cfg.get('peft_type')}"
            )
        if cfg.get("modules_to_save"):
            raise ValueError(
                f"{label} ({folder}): adapters with modules_to_save are not supported; merge the "
                "adapter into full weights first (train.merge_adapter=true)"
            )
        r = int(cfg["r"])
        alpha = float(cfg.get("lora_alpha", r))
        self.scale = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
        files = sorted(folder.glob("adapter_model*.safetensors"))
        if not files:
            raise ValueError(f"{label} ({folder}) has no adapter_model.safetensors")
        from safetensors.torch import load_file

        raw: dict[str, torch.Tensor] = {}
        for f in files:
            raw.update(load_file(str(f)))
        self.pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for k, a in raw.items():
            if ".lora_A." not in k:
                continue
            module = k.split(".lora_A.")[0]
            b = raw.get(k.replace(".lora_A.", ".lora_B."))
            if b is None:
                raise ValueError(f"{label} ({folder}): {k} has no matching lora_B")
            target = module.removeprefix("base_model.model.") + ".weight"
            if target not in set(base.keys()):
                raise ValueError(
                    f"{label} ({folder}): adapted module {target!r} is not in the base"
                )
            self.pairs[target] = (a, b)

    def keys(self) -> list[str]:
        return self.base.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self.base.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self.base.dtype(key)

    def get(self, key: str) -> torch.Tensor:
        w = self.base.get(key)
        if key not in self.pairs:
            return w
        a, b = self.pairs[key]
        delta = self.scale * (b.float() @ a.float())
        if self.fan_in_fan_out:
            delta = delta.T
        return (w.float() + delta).to(w.dtype)

    def config(self) -> dict[str, Any]:
        return self.base.config()

    def close(self) -> None:
        pass


def open_model(
    path_or_id: str | Path, label: str, base: ModelReader | None, allow_pickle: bool
) -> ModelReader | LoraReader:
    folder = resolve_path(path_or_id)
    if (folder / "adapter_config.json").is_file():
        if base is None:
            raise ValueError(f"{label} ({folder}) is a LoRA adapter; the base cannot be one")
        return LoraReader(folder, base, label)
    return ModelReader(folder, label, allow_pickle=allow_pickle)


# ---------------------------------------------------------------------------------------------
# Sweep cache
# ---------------------------------------------------------------------------------------------


def input_identity(folder: Path) -> str:
    """Content identity of a model folder: sha256 of its weight files, memoised by
    (path, size, mtime_ns) in ``<folder>/.hhh_bench_hash.json``-free in-process memo plus the
    cache index, so a 7B model is hashed once per file change."""
    parts = []
    for f in sorted(list(folder.glob("*.safetensors")) + list(folder.glob("*.json"))):
        st = f.stat()
        memo_key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        h = _HASH_MEMO.get(memo_key)
        if h is None:
            d = hashlib.sha256()
            with f.open("rb") as fh:
                while block := fh.read(1 << 22):
                    d.update(block)
            h = d.hexdigest()
            _HASH_MEMO[memo_key] = h
        parts.append(f"{f.name}:{h}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


class SweepCache:
    """precompute() results on disk, one safetensors file per (inputs, method, knobs, tensor).

    Keys hash the inputs' content identities, the method name, the params named in the method's
    ``precompute_keys`` and the tensor's plan entry, so a changed input file or knob can never
    return a stale entry. Least-recently-used entries are evicted beyond ``max_bytes``.
    """

    def __init__(self, folder: str | Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        p = self.path(key)
        if not p.is_file():
            self.misses += 1
            return None
        from safetensors.torch import load_file

        os.utime(p)  # LRU: touch on use
        self.hits += 1
        return load_file(str(p))

    def put(self, key: str, tensors: Mapping[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        tmp.replace(p)

    def evict(self) -> None:
        files = sorted(self.folder.glob("*/*.safetensors"), key=lambda f: f.stat().st_mtime)
        total = sum(f.stat().st_size for f in files)
        while files and total > self.max_bytes:
            f = files.pop(0)
            total -= f.stat().st_size
            f.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# merge_models
# ---------------------------------------------------------------------------------------------


@dataclass
class MergeResult:
    """What :func:`merge_models` did."""

    out_dir: str
    method: str
    params: dict[str, Any]
    n_tensors: int
    seconds: float
    cache_hits: int = 0
    cache_misses: int = 0
    shards: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_size(size: str | int) -> int:
    """``"2GB"`` / ``"500MB"`` / an int of bytes → bytes."""
    if isinstance(size, int):
        return size
    s = str(size).strip().upper()
    for unit, mult in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def _validate(name: str, base: torch.Tensor, fts: Sequence[torch.Tensor]) -> None:
    """``validate_tensors`` with a fast path: when every tensor is floating with the base's dtype
    and shape and its sum is finite (a NaN or Inf anywhere makes the sum NaN or Inf), nothing can
    fail. A non-finite sum (a bad value, or a float16 sum that overflowed) runs the full check,
    which names the model and counts the bad values. The full check's ``isfinite(t).sum()`` costs
    ~35x a sum on bf16 weights: half of a task-arithmetic merge."""
    if (
        fts
        and base.is_floating_point()
        and all(
            isinstance(t, torch.Tensor) and t.dtype == base.dtype and t.shape == base.shape
            for t in fts
        )
    ):
        acc = torch.float32 if base.dtype == torch.float16 else None
        if all(bool(torch.isfinite(t.sum(dtype=acc))) for t in (base, *fts)):
            return
    validate_tensors(name, base, fts)


class ShardWriter:
    """Writes safetensors shards tensor by tensor, in any order of arrival, without holding them.

    The layout (name, dtype, shape of every tensor, in merge order) is known before the merge, so
    each shard's header is written first and every tensor is written at its offset as soon as it
    is made. Shards are cut in merge order when the next tensor would pass ``max_bytes``; inside
    a shard the data is ordered by item size, then name, as ``safetensors`` does, so every tensor
    starts at an offset aligned to its item size.
    """

    def __init__(
        self,
        folder: Path,
        layout: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
        max_bytes: int,
    ) -> None:
        groups: list[list[tuple[str, torch.dtype, tuple[int, ...], int]]] = [[]]
        size = 0
        for name, dtype, shape in layout:
            nbytes = _numel(shape) * _itemsize(dtype)
            if groups[-1] and size + nbytes > max_bytes:
                groups.append([])
                size = 0
            groups[-1].append((name, dtype, tuple(shape), nbytes))
            size += nbytes
        groups = [g for g in groups if g]
        n = len(groups)
        self.folder = folder
        self.total_bytes = sum(e[3] for g in groups for e in g)
        self.shards: list[tuple[str, list[str]]] = []
        # name -> (file, absolute data offset, dtype, shape, nbytes)
        self._where: dict[str, tuple[str, int, torch.dtype, tuple[int, ...], int]] = {}
        self._pending: set[str] = set()
        self._handles: dict[str, Any] = {}
        for i, group in enumerate(groups):
            fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
            offset = 0
            for name, dtype, shape, nbytes in sorted(group, key=lambda e: (-_itemsize(e[1]), e[0])):
                header[name] = {
                    "dtype": _ST_NAMES[dtype],
                    "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes],
                }
                offset += nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
            start = 8 + len(raw)
            for name, dtype, shape, nbytes in group:
                begin = header[name]["data_offsets"][0]
                self._where[name] = (fname, start + begin, dtype, shape, nbytes)
            with (folder / fname).open("wb") as fh:
                fh.write(len(raw).to_bytes(8, "little"))
                fh.write(raw)
                fh.truncate(start + offset)
            self.shards.append((fname, [e[0] for e in group]))
            self._pending.update(e[0] for e in group)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``name`` (cast to its planned dtype; its shape must be the planned one)."""
        fname, pos, dtype, shape, nbytes = self._where[name]
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"parameter {name!r}: the merge produced shape {tuple(tensor.shape)}, "
                f"expected the base's {shape}"
            )
        t = tensor.detach().to(device="cpu", dtype=dtype).contiguous().reshape(-1)
        if fname not in self._handles:
            self._handles[fname] = (self.folder / fname).open("r+b")
        fh = self._handles[fname]
        if nbytes:
            fh.seek(pos)
            fh.write(memoryview(t.view(torch.uint8).numpy()))
        self._pending.discard(name)

    def close(self) -> None:
        """Close the files; raise if a tensor of the layout was never written."""
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()
        if self._pending:
            missing = sorted(self._pending)
            raise RuntimeError(f"{len(missing)} tensor(s) never written, e.g. {missing[0]!r}")


_ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _check_inputs(
    base: ModelReader, models: Sequence[ModelReader | LoraReader], vocab_policy: str
) -> dict[str, str]:
    """Validate architectures, tensor sets and shapes before any work. Returns per-key policy
    decisions for vocabulary-size mismatches (``{key: "base" | "truncate"}``)."""
    arch = base.config().get("architectures")
    for m in models:
        other = m.config().get("architectures")
        if arch and other and other != arch:
            raise ValueError(
                f"{m.label} ({m.folder}) is a {other} but the base is a {arch}: "
                "only models of the same architecture can be merged"
            )
    decisions: dict[str, str] = {}
    base_keys = base.keys()
    base_set = set(base_keys)
    for m in models:
        missing = [k for k in base_keys if k not in set(m.keys())]
        if missing:
            raise ValueError(
                f"{m.label} ({m.folder}) lacks tensor {missing[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        extra = [k for k in m.keys() if k not in base_set]  # noqa: SIM118
        if extra:
            raise ValueError(f"{m.label} ({m.folder}) has tensor {extra[0]!r} that the base lacks")
        for k in base_keys:
            bs, ms = base.shape(k), m.shape(k)
            if bs == ms:
                continue
            vocab_like = len(bs) == 2 and bs[1:] == ms[1:] and bs[0] != ms[0]
            if vocab_like and vocab_policy != "error":
                if vocab_policy == "truncate_to_base" and ms[0] < bs[0]:
                    raise ValueError(
                        f"{m.label}: {k!r} has {ms[0]} rows, fewer than the base's {bs[0]}; "
                        "truncate_to_base cannot pad. Use vocab_policy=base."
                    )
                decisions[k] = "base" if vocab_policy == "base" else "truncate"
                continue
            hint = (
                " (vocabulary sizes differ: align the tokenizers, or set vocab_policy=base to "
                "keep the base's embeddings or truncate_to_base to merge the shared rows)"
                if vocab_like
                else ""
            )
            raise ValueError(
                f"{m.label} ({m.folder}): tensor {k!r} has shape {ms} but the base has {bs}{hint}"
            )
    return decisions


def _model_card(method: str, params: Mapping[str, Any], base: str, models: Sequence[str]) -> str:
    lines = [
        "---",
        "tags: [hhh-bench, merge]",
        "---",
        f"# Merged with hhh-bench: `{method}`",
        "",
        "θ = θ0 + λ·merge(τ_1..τ_T), τ_t = θ_t − θ0 (see docs/merging.md).",
        "",
        f"- base (θ0): `{base}`",
        *[f"- finetuned {i}: `{m}`" for i, m in enumerate(models)],
        "",
        "## Parameters",
        "",
        "```json",
        json.dumps(params, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Versions",
        "",
        "```json",
        json.dumps(package_versions(), indent=2, sort_keys=True),
        "```",
    ]
    return "\n".join(lines) + "\n"


def merge_models(
    method: str,
    base: str | Path,
    finetuned: Sequence[str | Path],
    out_dir: str | Path,
    *,
    max_shard_size: str | int = "2GB",
    out_dtype: str | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    vocab_policy: str = "error",
    cache_dir: str | Path | None = None,
    cache_max_gb: float = 20.0,
    progress: bool = True,
    **params: Any,
) -> MergeResult:
    """Merge ``finetuned`` models (folders, hub ids or LoRA adapter folders) into ``base`` with a
    registered method, streaming tensor by tensor; write a complete HF model folder to ``out_dir``.

    Args:
        method: a registered merge method (``hhh_bench.merging.list_methods()``).
        base: θ0, a folder or hub id (safetensors).
        finetuned: the T specialists; LoRA adapters are read as θ0 + s·B·A exactly.
        out_dir: the output folder (must not exist unless ``overwrite``).
        max_shard_size: largest output shard (``"2GB"``, ``"500MB"`` or bytes).
        out_dtype: dtype of the written weights (``float32``/``bfloat16``/``float16``); default
            the base's.
        overwrite: replace an existing ``out_dir``.
        allow_pickle: accept ``.bin``/``.pt`` checkpoints (they can run code when loaded).
        vocab_policy: ``error`` | ``base`` (keep the base's rows of vocabulary-sized tensors
            whose row count differs) | ``truncate_to_base`` (merge the first rows).
        cache_dir: folder of the sweep cache (None: no cache).
        cache_max_gb: size cap of the sweep cache.
        progress: show a progress bar (tensors done / total, bytes).
        **params: the method's hyperparameters (``describe_method(method)``).

    Returns:
        A :class:`MergeResult` (out_dir, cache hits and misses, seconds, shards).

    Raises:
        ValueError: bad inputs, named before any work (architecture, missing tensor, shape,
            vocabulary size, NaN/Inf, pickle files, unknown method or parameter).
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
    """
    t0 = time.time()
    if vocab_policy not in VOCAB_POLICIES:
        raise ValueError(f"vocab_policy must be one of {VOCAB_POLICIES}, got {vocab_policy!r}")
    m = get_method(method)
    p = m.make_params(**params)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=true to replace it)")
    if not finetuned:
        raise ValueError("no finetuned models: pass at least one")
    p.resolve_weights(len(finetuned))
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if out_dtype is not None and out_dtype not in dtypes:
        raise ValueError(f"out_dtype must be one of {list(dtypes)} or null, got {out_dtype!r}")

    base_r = ModelReader(resolve_path(base), "the base", allow_pickle=allow_pickle)
    models = [
        open_model(f, f"finetuned model {i}", base_r, allow_pickle) for i, f in enumerate(finetuned)
    ]
    decisions = _check_inputs(base_r, models, vocab_policy)
    keys = base_r.keys()

    def tensors(k: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b = base_r.get(k)
        fts = [mm.get(k) for mm in models]
        if decisions.get(k) == "truncate":
            fts = [t[: b.shape[0]] for t in fts]
        return b, fts

    cache = None
    id_prefix = ""
    if cache_dir is not None:
        cache = SweepCache(cache_dir, int(cache_max_gb * (1 << 30)))
        ids = [input_identity(base_r.folder)] + [input_identity(mm.folder) for mm in models]
        id_prefix = config_hash(
            {
                "inputs": ids,
                "method": method,
                "knobs": {k: getattr(p, k) for k in m.precompute_keys},
                "vocab": vocab_policy,
            },
            length=32,
        )

    plan: dict[str, dict[str, Any]] = {}
    if m.needs_global_pass(p):
        stats = {}
        for k in _progress(keys, "statistics pass", progress):
            if decisions.get(k) == "base":
                continue
            b, fts = tensors(k)
            if not b.is_floating_point():
                continue
            s = m.tensor_stats(k, b, fts, p)
            if s is not None:
                stats[k] = s
        plan = m.plan(stats, p)

    shard_limit = parse_size(max_shard_size)
    result = MergeResult(
        str(out),
        method,
        asdict(p) if hasattr(p, "__dataclass_fields__") else dict(params),
        len(keys),
        0.0,
    )

    def finetuned_tensors(k: str, b: torch.Tensor) -> list[torch.Tensor]:
        fts = [mm.get(k) for mm in models]
        if decisions.get(k) == "truncate":
            fts = [t[: b.shape[0]] for t in fts]
        return fts

    def out_dtype_of(k: str) -> torch.dtype:
        d = base_r.dtype(k)
        return dtypes[out_dtype] if out_dtype is not None and d.is_floating_point else d

    layout = [(k, out_dtype_of(k), base_r.shape(k)) for k in keys]

    with atomic_dir(out, overwrite=overwrite) as tmp:
        # Each merged tensor goes to disk as soon as it is made (the shards' headers are known
        # in advance from the base's shapes), so no shard is ever held in memory.
        writer = ShardWriter(tmp, layout, shard_limit)
        try:
            for k in _progress(keys, f"merging ({method})", progress):
                b = base_r.get(k)
                if decisions.get(k) == "base":
                    merged = b
                elif not b.is_floating_point():
                    validate_tensors(k, b, finetuned_tensors(k, b))
                    merged = b
                else:
                    entry = plan.get(k, {})
                    pre = None
                    ckey = None
                    if cache is not None:
                        ckey = config_hash(
                            {"prefix": id_prefix, "tensor": k, "plan": entry}, length=40
                        )
                        pre = cache.get(ckey)
                    if pre is None:
                        fts = finetuned_tensors(k, b)
                        _validate(k, b, fts)
                        pre = m.precompute(k, b, fts, p, entry)
                        del fts  # compose needs only θ0 and pre
                        if cache is not None and ckey is not None:
                            cache.put(ckey, pre)
                    # A cache hit reads no finetuned tensor: the key holds the inputs' content
                    # hashes, and they were validated when the entry was made.
                    merged = m.compose(k, b, pre, p, entry)
                    del pre
                writer.write(k, merged)
                del merged, b
        except BaseException:
            writer._pending.clear()  # the folder is discarded; report the original error
            writer.close()
            raise
        writer.close()
        shard_files = writer.shards
        if len(shard_files) > 1:
            weight_map = {k: name for name, ks in shard_files for k in ks}
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps(
                    {"metadata": {"total_size": writer.total_bytes}, "weight_map": weight_map},
                    indent=2,
                )
                + "\n"
            )
        for fname in COPY_FILES:
            src = base_r.folder / fname
            if src.is_file():
                shutil.copy2(src, tmp / fname)
        if out_dtype is not None and (tmp / "config.json").is_file():
            c = json.loads((tmp / "config.json").read_text())
            c["torch_dtype"] = c["dtype"] = out_dtype
            (tmp / "config.json").write_text(json.dumps(c, indent=2) + "\n")
        card_params = {**result.params, "vocab_policy": vocab_policy}
        (tmp / "README.md").write_text(
            _model_card(method, card_params, str(base), [str(f) for f in finetuned])
        )
        (tmp / "merge_info.json").write_text(
            json.dumps(
                {
                    "method": method,
                    "params": card_params,
                    "base": str(base),
                    "finetuned": [str(f) for f in finetuned],
                    "plan": plan,
                    "versions": package_versions(),
                },
                indent=2,
                sort_keys=True,
                default=str,
            )
            + "\n"
        )
        result.shards = [name for name, _ in shard_files]
    if cache is not None:
        cache.evict()
        result.cache_hits, result.cache_misses = cache.hits, cache.misses
    result.seconds = round(time.time() - t0, 3)
    return result


def _progress(keys: Sequence[str], desc: str, enabled: bool) -> Iterator[str]:
    from tqdm.auto import tqdm

    yield from tqdm(keys, desc=desc, disable=not enabled, unit="tensor", mininterval=1.0)
