"""Where a merge's tensors come from: one :class:`TensorSource` protocol, three kinds of source.

One concept: the tensor sources of a merge (the protocol and its three kinds).

- :class:`SafetensorsModel`: a local HF folder or a hub id, read lazily tensor by tensor. The
  files read are exactly those a ``transformers`` load reads: the ``model.safetensors.index.json``
  and the shards it names when there is one, else ``model.safetensors``; anything else is an
  error that lists what the folder holds (a stray ``*.safetensors`` beside the model is never
  merged in).
- :class:`LoraAdapter`: a peft LoRA adapter folder, on top of the base. Its task vector is
  τ = s·B·A, returned as :class:`~hhh_bench.merging.taskvec.LowRank` (exact; never rounded
  through the model's dtype), with peft's per-module ``rank_pattern`` / ``alpha_pattern`` and
  rsLoRA scaling and ``lora_bias``; what cannot be read exactly (DoRA, embedding or conv LoRA,
  ``modules_to_save``, adapters on parameters) is refused, naming the adapter and the feature.
- :class:`StateDictSource`: an in-memory state dict (the in-memory API, tests, notebooks).

Every error names the model (``the base``, ``finetuned model 2``), its folder and the tensor.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from hhh_bench.core.content import file_tensor_digests, folder_identity, tensor_digest
from hhh_bench.core.hubref import split_ref
from hhh_bench.core.paths import is_adapter_folder
from hhh_bench.merging.taskvec import LowRank

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PICKLE_SWITCH = "merge_engine.allow_pickle=true"
"""How a refusal of pickles names the switch (``hhh-bench merge`` says its ``--allow-pickle``)."""
ARCH_SWITCH = "merge_engine.allow_architecture_mismatch=true"
"""How a refusal of another architecture names the switch (``hhh-bench merge`` says its
``--allow-architecture-mismatch``)."""
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
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
VOCAB_POLICIES = ("error", "base", "truncate_to_base")


@runtime_checkable
class TensorSource(Protocol):
    """Read-only, lazy access to one model's tensors."""

    label: str
    where: str

    def keys(self) -> list[str]: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def dtype(self, key: str) -> torch.dtype: ...

    def get(self, key: str) -> Tensor: ...

    def config(self) -> dict[str, Any]: ...

    def identity(self) -> str | None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Hub ids and folders


def resolve_path(path_or_id: str | Path, *, revision: str | None = None) -> Path:
    """A local folder, or a hub id resolved through the HF cache (``HF_HUB_OFFLINE`` respected).

    Only safetensors, JSON and tokenizer files are fetched; pickles never are. A hub id
    written ``<id>@<commit>`` is fetched at that commit (``revision``, when given, wins).
    """
    if not isinstance(path_or_id, (str, Path)):
        raise ValueError(
            f"a model must be a folder path or a hub id (str), got {type(path_or_id).__name__}: "
            f"{path_or_id!r}"
        )
    p = Path(path_or_id).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{p}: expected a model folder, got a file")
        return p
    if str(path_or_id).startswith((".", "/", "~")) or p.is_symlink():
        where = (
            ""
            if p.is_absolute()
            else f" (a relative path is taken from {Path.cwd()}, where hhh-bench runs)"
        )
        raise ValueError(f"model folder {str(path_or_id)!r} does not exist{where}")
    path_or_id, pinned = split_ref(str(path_or_id))
    revision = revision or pinned
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
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). On a machine "
            f"with access run `huggingface-cli download {path_or_id}` and point HF_HOME at "
            "that cache, or pass the local folder."
        ) from None


def two_checkpoints(folder: Path) -> str | None:
    """Why ``folder`` holds two checkpoints, or None: ``model.safetensors`` beside an index
    that does not name it (a model saved sharded into a folder that held a single-file one, or
    the other way). transformers then loads the single file, a reader of the index the shards:
    two models by one name (battery 13, F5: merge read the specialist, eval the stale θ0)."""
    index, single = folder / INDEX_FILE, folder / SINGLE_FILE
    if not (index.is_file() and single.is_file()):
        return None
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, OSError):
        shards = set()
    if SINGLE_FILE in shards:
        return None
    return (
        f"{folder} holds both {SINGLE_FILE} and {INDEX_FILE} (shards {sorted(shards)[:3]}): two "
        f"checkpoints, which may be two different models (a save into a folder that held "
        f"another one leaves its files); transformers would load {SINGLE_FILE}, a merge the "
        "shards: delete the one that is not this model's"
    )


def weight_files(folder: Path, label: str) -> tuple[dict[str, Path] | None, list[Path]]:
    """The weight files transformers would load from ``folder``: (weight map from the index or
    None, the files). Raises ``ValueError`` listing the folder's candidates otherwise, or when
    it holds two checkpoints (:func:`two_checkpoints`)."""
    index = folder / INDEX_FILE
    both = two_checkpoints(folder)
    if both:
        raise ValueError(f"{label}: {both}")
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{label} ({folder}): {INDEX_FILE} is not a valid index ({e})") from e
        files = {k: folder / v for k, v in weight_map.items()}
        missing = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if missing:
            raise ValueError(
                f"{label} ({folder}): {INDEX_FILE} names shard(s) that are not there: {missing}"
            )
        return files, sorted(set(files.values()))
    single = folder / SINGLE_FILE
    if single.is_file():
        return None, [single]
    candidates = sorted(p.name for p in folder.glob("*.safetensors"))
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    raise ValueError(
        f"{label} ({folder}) has neither {INDEX_FILE} nor {SINGLE_FILE}"
        + (
            f"; it holds {candidates}: rename the model's file to {SINGLE_FILE}"
            if candidates
            else ""
        )
        + (f"; pickle checkpoints {pickles} (see allow_pickle)" if pickles else "")
    )


def input_identity(folder: str | Path) -> str:
    """Content identity of a model or adapter folder: every file it holds
    (:func:`hhh_bench.core.content.folder_identity`; a stage output's from its verified manifest)."""
    return folder_identity(Path(folder))


def _read_config(folder: Path, label: str) -> dict[str, Any]:
    c = folder / "config.json"
    if not c.is_file():
        return {}
    try:
        return json.loads(c.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{label} ({folder}): config.json is not valid JSON ({e})") from e


# ---------------------------------------------------------------------------------------------
# Sources


def data_spans(path: Path) -> dict[str, tuple[int, int]]:
    """``{tensor: (file offset, bytes)}`` from a safetensors file's header (an 8-byte
    little-endian length, then that many bytes of JSON; offsets count from the header's end)."""
    with path.open("rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return {k: (8 + n + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
            for k, v in header.items()}  # fmt: skip


def read_bytes(path: Path, offset: int, nbytes: int) -> Tensor:
    """``nbytes`` bytes of ``path`` from ``offset`` as a uint8 tensor; a short file raises
    ``OSError``. Where the platform has private memory maps and the bytes start 8-aligned (as
    safetensors writes them), they are a copy-on-write map of the file (:func:`map_bytes`), else
    positioned reads into a new buffer."""
    if nbytes > 0 and offset % 8 == 0 and hasattr(mmap, "MAP_PRIVATE"):
        return map_bytes(path, offset, nbytes)  # 8-aligned: a view of any dtype is valid
    buf = torch.empty(nbytes, dtype=torch.uint8)
    view = memoryview(buf.numpy()) if nbytes else memoryview(bytearray())
    with path.open("rb", buffering=0) as fh:
        done = 0
        while done < nbytes:
            if hasattr(os, "preadv"):
                got = os.preadv(fh.fileno(), [view[done:]], offset + done)
            else:  # no positioned reads (Windows)
                fh.seek(offset + done)
                got = fh.readinto(view[done:]) or 0
            if got <= 0:
                raise OSError(f"{path.name} ends {nbytes - done} bytes early")
            done += got
    return buf


PAGE_STRIDE = 4096
"""Bytes between the touches that fault a mapped tensor's pages in (:func:`map_bytes`)."""


def map_bytes(path: Path, offset: int, nbytes: int) -> Tensor:
    """``nbytes`` bytes of ``path`` from ``offset``: a uint8 tensor over a private memory map of
    the file (``MAP_PRIVATE``: a write to the tensor copies the page, the file never changes),
    with every page faulted in by a read before it is returned, so that the caller (the
    engine's read-ahead thread) pays the faults and not the merge that uses it. No copy: the
    pages are the page cache's, 5x faster than reading them into a buffer. The map lives as
    long as the tensor (its storage holds it), so a merged tensor's inputs leave memory with it.
    A file shorter than ``offset + nbytes`` raises ``OSError`` before anything is mapped."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if offset + nbytes > size:
            raise OSError(f"{path.name} ends {offset + nbytes - size} bytes early")
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(
            fd,
            nbytes + offset - start,
            flags=mmap.MAP_PRIVATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=start,
        )
    finally:
        os.close(fd)  # the map holds its own reference to the file
    buf = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=offset - start)
    buf[::PAGE_STRIDE].sum()  # fault every page in (read faults: shared, no copy)
    return buf


class SafetensorsModel:
    """A model folder (single or sharded safetensors), read one tensor at a time.

    Every shard's header is read and checked when the model is opened (a truncated or corrupted
    file is an error naming it before any merge work); each tensor is then read on its own
    (:func:`read_bytes`): a private map of just its bytes, its pages faulted in when read, so
    the engine's read-ahead thread takes the faults (``safe_open``'s lazily mapped tensors
    would leave them to the merge's first pass), and released with the tensor (a map of the
    whole file kept open would keep every page read resident).
    """

    def __init__(self, folder: Path, label: str, allow_pickle: bool = False) -> None:
        from safetensors import safe_open

        self.folder = folder
        self.label = label
        self.where = str(folder)
        self._pickle_sd: dict[str, Tensor] | None = None
        self._files: dict[str, Path] = {}
        self._meta: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._spans: dict[str, tuple[int, int]] = {}  # key -> (file offset, bytes)
        self.read_digests: dict[str, str] | None = None
        """``{tensor: XXH3 of the bytes read}`` once :meth:`record_reads` was called."""
        if not any(
            (folder / n).is_file() for n in (INDEX_FILE, SINGLE_FILE)
        ) and self._only_pickles(folder):
            self._load_pickles(folder, allow_pickle)
            return
        weight_map, files = weight_files(folder, label)
        for f in files:
            try:
                spans = data_spans(f)
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():  # noqa: SIM118 - safe_open handles are not mappings
                        if weight_map is not None and weight_map.get(k) != f:
                            continue  # the index decides which shard holds a tensor
                        sl = h.get_slice(k)
                        self._meta[k] = (sl.get_dtype(), tuple(int(d) for d in sl.get_shape()))
                        self._files[k] = f
                        self._spans[k] = spans[k]
            except Exception as e:  # noqa: BLE001 - safetensors' errors name no file
                raise ValueError(
                    f"{label} ({folder}): {f.name} is not a readable safetensors file "
                    f"({type(e).__name__}: {e}); it may be truncated or corrupted"
                ) from None
        if weight_map is not None:
            absent = sorted(set(weight_map) - set(self._files))
            if absent:
                raise ValueError(
                    f"{label} ({folder}): {INDEX_FILE} maps {absent[0]!r} to "
                    f"{weight_map[absent[0]].name}, which does not hold it"
                )
        self._files = {k: self._files[k] for k in (weight_map or self._files)}

    @staticmethod
    def _only_pickles(folder: Path) -> bool:
        return not list(folder.glob("*.safetensors")) and any(
            f.suffix in PICKLE_SUFFIXES for f in folder.iterdir()
        )

    def _load_pickles(self, folder: Path, allow_pickle: bool) -> None:
        pickles = sorted(f for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES)
        if not allow_pickle:
            raise ValueError(
                f"{self.label} ({folder}) holds only pickle checkpoints ({pickles[0].name}); "
                "they can run arbitrary code when loaded. Convert them to safetensors, or "
                f"pass {PICKLE_SWITCH} if you trust the source."
            )
        sd: dict[str, Tensor] = {}
        for f in pickles:
            sd.update(torch.load(f, map_location="cpu", weights_only=True))
        self._pickle_sd = sd
        self._files = {k: pickles[0] for k in sd}

    def keys(self) -> list[str]:
        return list(self._files)

    def get(self, key: str) -> Tensor:
        if self._pickle_sd is not None:
            return self._pickle_sd[key]
        f = self._files[key]
        offset, nbytes = self._spans[key]
        try:
            buf = read_bytes(f, offset, nbytes)
        except OSError as e:
            raise ValueError(
                f"{self.label} ({self.folder}): reading tensor {key!r} from {f.name} failed "
                f"({e}); the file may be truncated or corrupted"
            ) from None
        if self.read_digests is not None:
            self.read_digests[key] = tensor_digest(buf.numpy()) if nbytes else tensor_digest(b"")
        return buf.view(self.dtype(key)).reshape(self.shape(key))

    def record_reads(self) -> None:
        """From now on, remember a digest of the bytes of every tensor read, to be checked by
        :func:`check_reads` against the digests recorded for the files now (before any read)."""
        if self._pickle_sd is None:
            self.expected = self.recorded()
            self.start_identity = self.identity()
            self.read_digests = {}

    def recorded(self) -> dict[str, tuple[str, str]]:
        """``{tensor: (file name, XXH3)}`` of this model's files as recorded before the merge read
        them: the manifest of the stage output holding them, or the hash cache."""
        per_file = file_tensor_digests(self.folder, sorted(set(self._files.values())))
        return {k: (f.name, per_file.get(f.name, {}).get(k, "")) for k, f in self._files.items()}

    def shape(self, key: str) -> tuple[int, ...]:
        if self._pickle_sd is not None:
            return tuple(self._pickle_sd[key].shape)
        return self._meta[key][1]

    def dtype(self, key: str) -> torch.dtype:
        if self._pickle_sd is not None:
            return self._pickle_sd[key].dtype
        name = self._meta[key][0]
        if name not in ST_DTYPES:
            raise ValueError(f"{self.label} ({self.folder}): tensor {key!r} has dtype {name}")
        return ST_DTYPES[name]

    def nbytes(self, key: str) -> int:
        n = self.dtype(key).itemsize
        for d in self.shape(key):
            n *= d
        return n

    def config(self) -> dict[str, Any]:
        return _read_config(self.folder, self.label)

    def identity(self) -> str:
        return folder_identity(self.folder)

    def close(self) -> None:
        pass


class StateDictSource:
    """An in-memory state dict behind the source protocol."""

    def __init__(self, state_dict: Mapping[str, Tensor], label: str) -> None:
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{label}: expected a state dict, got {type(state_dict).__name__}")
        self.sd = state_dict
        self.label = label
        self.where = "in-memory state dict"

    def keys(self) -> list[str]:
        return list(self.sd)

    def get(self, key: str) -> Tensor:
        t = self.sd[key]
        if not isinstance(t, Tensor):
            raise ValueError(
                f"{self.label} ({self.where}): {key!r} is a {type(t).__name__}, not a Tensor"
            )
        return t

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.get(key).shape)

    def dtype(self, key: str) -> torch.dtype:
        return self.get(key).dtype

    def config(self) -> dict[str, Any]:
        return {}

    def identity(self) -> None:
        return None

    def close(self) -> None:
        pass


def _peft_default(name: str) -> Any:
    """peft's ``LoraConfig`` default of ``name``: what peft reads an adapter_config.json that
    leaves the key out as."""
    import dataclasses

    from peft import LoraConfig

    return {f.name: f.default for f in dataclasses.fields(LoraConfig)}[name]


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """peft's ``get_pattern_key``: the first pattern p with ``(.*\\.)?(p)$`` matching the module
    name gives its value, else ``default``."""
    for pat, value in patterns.items():
        if re.match(rf"(.*\.)?({pat})$", module):
            return value
    return default


def _check_pairs(who: str, raw: Mapping[str, Tensor]) -> None:
    """Every module of an adapter holds both factors: a ``lora_A`` weight without its
    ``lora_B``, or a ``lora_B`` (weight or bias) without its ``lora_A``, is an incomplete file
    whose module's update would be dropped; raise naming the first such module and the count."""
    a_of = {k.split(".lora_A.")[0] for k in raw if ".lora_A." in k}
    b_of = {k.split(".lora_B.")[0] for k in raw if ".lora_B." in k}
    orphans = sorted(a_of ^ b_of)
    if orphans:
        first = orphans[0]
        have, lacks = ("lora_A", "lora_B") if first in a_of else ("lora_B", "lora_A")
        module = first.removeprefix("base_model.model.")
        more = f" ({len(orphans)} such modules in all)" if len(orphans) > 1 else ""
        raise ValueError(
            f"{who}: module {module!r} has a {have} but no matching {lacks}{more}: the adapter "
            "file is incomplete and that module's update would be lost; save the adapter again"
        )


class LoraAdapter:
    """A peft LoRA adapter read as task vectors on top of ``base`` (see the module docstring).

    Per adapted module m (weight W of shape out × in): τ_W = s_m·B_m·A_m with
    s_m = α_m / r_m (rsLoRA: α_m / √r_m), r_m = the rank of its ``lora_A`` (peft's
    ``rank_pattern``), α_m from ``alpha_pattern`` else ``lora_alpha``; transposed when
    ``fan_in_fan_out``; with ``lora_bias``, τ of the module's bias = s_m·b_B. Exactly what
    peft's ``merge_and_unload`` adds (up to float rounding).
    """

    UNSUPPORTED_FLAGS = {
        "use_dora": "DoRA (weight-decomposed LoRA: its update is not s·B·A)",
        "target_parameters": "LoRA on parameters (target_parameters)",
        "use_qalora": "QALoRA",
        # battery 22, B-F3: peft applies such an adapter to part of its file's modules only;
        # every module in the file was merged
        "layers_to_transform": "a layer selection (layers_to_transform: peft applies the "
        "adapter to those layers only)",
        "layers_pattern": "a layer selection (layers_pattern)",
        "exclude_modules": "a module exclusion (exclude_modules: peft skips those modules)",
    }

    def __init__(self, folder: Path, base: TensorSource, label: str) -> None:
        from safetensors.torch import load_file

        self.folder = folder
        self.label = label
        self.where = str(folder)
        self.base = base
        who = f"{label} ({folder})"
        try:
            cfg = json.loads((folder / "adapter_config.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{who}: adapter_config.json is not valid JSON ({e})") from e
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"{who}: only LoRA adapters are supported, got {cfg.get('peft_type')}")
        for flag, what in self.UNSUPPORTED_FLAGS.items():
            if cfg.get(flag):
                raise ValueError(
                    f"{who}: {what} cannot be read as an exact task vector; merge the adapter "
                    "into full weights first (train.merge_adapter=true, saved in float32)"
                )
        if cfg.get("modules_to_save"):
            raise ValueError(
                f"{who}: adapters with modules_to_save are not supported; merge the adapter "
                "into full weights first (train.merge_adapter=true, saved in float32)"
            )
        self.use_rslora = bool(cfg.get("use_rslora"))
        # a key the file leaves out means what peft reads it as: LoraConfig's default (battery
        # 20, B-F2: a missing lora_alpha was read as α = r, scale 1, where peft uses α = 8)
        self.alpha = float(
            cfg["lora_alpha"] if "lora_alpha" in cfg else _peft_default("lora_alpha")
        )
        self.alpha_pattern: dict[str, float] = dict(cfg.get("alpha_pattern") or {})
        self.rank = cfg["r"] if "r" in cfg else _peft_default("r")
        self.rank_pattern: dict[str, int] = dict(cfg.get("rank_pattern") or {})
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
        self.lora_bias = bool(cfg.get("lora_bias", False))
        files = sorted(folder.glob("adapter_model*.safetensors"))
        if not files:
            raise ValueError(f"{who} has no adapter_model.safetensors")
        raw: dict[str, Tensor] = {}
        for f in files:
            try:
                raw.update(load_file(str(f)))
            except Exception as e:  # noqa: BLE001
                raise ValueError(
                    f"{who}: {f.name} is not a readable safetensors file ({e})"
                ) from None
        embedding = [k for k in raw if ".lora_embedding_" in k]
        if embedding:
            raise ValueError(f"{who}: embedding LoRA ({embedding[0]}) is not supported")
        _check_pairs(who, raw)
        base_keys = set(base.keys())
        self.factors: dict[str, LowRank] = {}
        self.bias: dict[str, Tensor] = {}
        moves = False  # some module's update s·B·A is not 0
        for k, a in raw.items():
            if ".lora_A." not in k:
                continue
            module = k.split(".lora_A.")[0].removeprefix("base_model.model.")
            b_key = k.replace(".lora_A.", ".lora_B.")
            b = raw[b_key]
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(
                    f"{who}: {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} are not "
                    "the factors of a linear layer's update (conv LoRA is not supported)"
                )
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise ValueError(f"{who}: {module}: the LoRA factors hold NaN or Inf values")
            target = module + ".weight"
            if target not in base_keys:
                raise ValueError(f"{who}: adapted module {target!r} is not in the base")
            r = int(a.shape[0])
            said = _pattern_value(self.rank_pattern, module, self.rank)
            if isinstance(said, int) and not isinstance(said, bool) and said != r:
                raise ValueError(  # peft refuses to load it; its scale α/r would be another
                    f"{who}: {module}: adapter_config.json says r={said} but its LoRA factors "
                    f"have rank {r}: the config is not this adapter's (peft would not load it)"
                )
            alpha = float(_pattern_value(self.alpha_pattern, module, self.alpha))
            scale = alpha / (r**0.5) if self.use_rslora else alpha / r
            moves = moves or (scale != 0 and bool(b.any()) and bool(a.any()))
            lr = LowRank(b, a, scale)
            if self.fan_in_fan_out:
                lr = lr.transposed()
            if lr.shape != tuple(base.shape(target)):
                raise ValueError(
                    f"{who}: {module}: the LoRA update has shape {lr.shape} but the base's "
                    f"{target!r} has {tuple(base.shape(target))}"
                )
            self.factors[target] = lr
            bias_b = raw.get(b_key.removesuffix(".weight") + ".bias")
            if bias_b is not None:
                bias_key = module + ".bias"
                if bias_key not in base_keys:
                    raise ValueError(
                        f"{who}: {module} has a LoRA bias (lora_bias) but the base has no "
                        f"{bias_key!r} to add it to"
                    )
                self.bias[bias_key] = scale * bias_b.float()
        if not self.factors:
            raise ValueError(
                f"{who}: no lora_A/lora_B tensors found: this adapter holds no LoRA update "
                f"(tensors: {sorted(raw)[:3]}...)"
            )
        if not moves and not any(bool(v.any()) for v in self.bias.values()):
            raise ValueError(  # battery 16, B3: as a full copy of θ0 is refused
                f"{who}: its update is 0 in every module (every lora_B or lora_A is 0, or its "
                f"scale α/r is: lora_alpha={self.alpha:g}; an adapter saved before training?): "
                "its task vector is 0, so it would merge as nothing; give the trained adapter"
            )
        self._identity = folder_identity(folder)
        self._files = files
        self.read_digests: dict[str, str] | None = {
            k: tensor_digest(v.contiguous().view(torch.uint8).numpy()) if v.numel() else
            tensor_digest(b"") for k, v in raw.items()
        }  # fmt: skip
        self._raw_file = {k: f for f in files for k in _st_keys(f)}

    def record_reads(self) -> None:
        """The adapter's tensors were all read when it was opened (their digests kept then);
        what they are checked against is recorded now."""
        self.expected = self.recorded()
        self.start_identity = self.identity()

    def recorded(self) -> dict[str, tuple[str, str]]:
        """``{tensor: (file name, XXH3)}`` of the adapter's files as recorded (see
        :meth:`SafetensorsModel.recorded`)."""
        per_file = file_tensor_digests(self.folder, self._files)
        return {k: (f.name, per_file.get(f.name, {}).get(k, "")) for k, f in self._raw_file.items()}

    def keys(self) -> list[str]:
        return self.base.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self.base.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self.base.dtype(key)

    def task_vector(self, key: str) -> LowRank | Tensor | None:
        """τ of ``key``: its LoRA factors, a dense bias update, or None (τ = 0)."""
        if key in self.factors:
            return self.factors[key]
        return self.bias.get(key)

    def get(self, key: str) -> Tensor:
        """The full weight θ0 + τ (float32 arithmetic, in the base's dtype)."""
        w = self.base.get(key)
        tau = self.task_vector(key)
        if tau is None:
            return w
        delta = tau.dense(torch.float32) if isinstance(tau, LowRank) else tau
        return (w.float() + delta).to(w.dtype)

    def config(self) -> dict[str, Any]:
        return self.base.config()

    def identity(self) -> str:
        return self._identity

    def close(self) -> None:
        pass


def _st_keys(path: Path) -> list[str]:
    """The tensor names of a safetensors file's header."""
    return list(data_spans(path))


def check_reads(sources: Sequence[Any]) -> dict[str, str]:
    """After a merge: every tensor a source read had the bytes recorded for it before the merge
    (a file rewritten or replaced while the merge read it fails here, naming the model, the file
    and the tensor). Returns each file-backed source's identity by label (for the provenance)."""
    identities = {}
    for src in sources:
        got = getattr(src, "read_digests", None)
        want = getattr(src, "expected", None)
        if got is None or want is None:
            continue
        for k, digest in got.items():
            fname, expected = want.get(k, ("?", ""))
            if expected != digest:
                raise ValueError(
                    f"{src.label} ({src.where}): tensor {k!r} of {fname} is not the one recorded "
                    "before the merge read it: the file was changed or replaced during the merge "
                    "(no output written). Rerun once the inputs stay still."
                )
        identities[src.label] = src.start_identity
    return identities


def check_identities(sources: Sequence[Any]) -> None:
    """After a merge has copied its inputs' other files (config, tokenizer): every file-backed
    source's folder still has the identity recorded before the merge (a tokenizer or config
    file rewritten during the merge fails it, naming the model; no output is written)."""
    for src in sources:
        start = getattr(src, "start_identity", None)
        if start is None:
            continue
        try:
            now = src.identity()
        except ValueError as e:  # a stage output whose files no longer match its manifest
            now = f"unverifiable: {e}"
        if now != start:
            raise ValueError(
                f"{src.label} ({src.where}): its files changed during the merge (a config, "
                "tokenizer or weights file is not the one recorded before the merge read it; no "
                "output written). Rerun once the inputs stay still."
            )


ModelInput = str | Path | Mapping[str, Tensor]
"""A model folder, a hub id, a LoRA adapter folder (finetuned only) or an in-memory state dict."""


def open_source(
    x: ModelInput, label: str, base: TensorSource | None, allow_pickle: bool = False
) -> TensorSource:
    """The source of one input (``base`` is the opened base, None when opening the base)."""
    if isinstance(x, Mapping):
        return StateDictSource(x, label)
    folder = resolve_path(x)
    if is_adapter_folder(folder):
        if base is None:
            raise ValueError(f"{label} ({folder}) is a LoRA adapter; the base cannot be one")
        return LoraAdapter(folder, base, label)
    return SafetensorsModel(folder, label, allow_pickle=allow_pickle)


def open_inputs(
    base: ModelInput, finetuned: Sequence[ModelInput], allow_pickle: bool = False
) -> tuple[TensorSource, list[TensorSource]]:
    """The sources of a merge's base and finetuned models."""
    if isinstance(finetuned, (str, Path, Mapping)):
        raise ValueError(
            "finetuned must be a list of models (folders, hub ids, adapters or state dicts), got "
            f"a single {type(finetuned).__name__}: wrap it in a list"
        )
    base_src = open_source(base, "the base", None, allow_pickle)
    models = [
        open_source(f, f"finetuned model {i}", base_src, allow_pickle)
        for i, f in enumerate(finetuned)
    ]
    return base_src, models


def _weights(src: TensorSource) -> frozenset[tuple[str, str]] | None:
    """A full model's tensors by their recorded digests (manifest or hash cache: hashed once);
    None for an adapter or an in-memory state dict."""
    if not isinstance(src, SafetensorsModel) or src._pickle_sd is not None:
        return None
    return frozenset((k, d) for k, (_, d) in src.recorded().items())


def _check_distinct_weights(
    base: TensorSource, models: Sequence[TensorSource], base_as_model: bool = False
) -> None:
    """A specialist with θ0's weights (τ = 0: it would merge as nothing, or dilute the others;
    allowed with ``base_as_model``, where θ0 is one of the models a method interpolates), or two
    specialists with the same weights (one model listed twice), wherever they lie."""
    seen: dict[frozenset[tuple[str, str]], TensorSource] = {}
    ours = _weights(base)
    for m in models:
        w = _weights(m)
        if w is None:
            continue
        if w == ours and not base_as_model:
            raise ValueError(
                f"{m.label} ({m.where}) holds the same weights as the base ({base.where}): its "
                "task vector is 0, so it would merge as nothing; give the finetuned model"
            )
        if w in seen:
            raise ValueError(
                f"{m.label} ({m.where}) holds the same weights as {seen[w].label} "
                f"({seen[w].where}): one model listed twice; to weigh a model more, give "
                "merge.params.weights instead (in a mergekit YAML for hhh-bench merge: list it "
                "once, with a larger `parameters: {weight: ...}`)"
            )
        seen[w] = m


VARIANT_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "rope_theta", "rope_scaling",
    "rms_norm_eps", "layer_norm_eps", "max_position_embeddings", "sliding_window",
    "attention_bias", "mlp_bias", "tie_word_embeddings",
)  # fmt: skip
"""``config.json`` fields that make a model another variant of its architecture: the merged
model keeps the base's config, so a finetuned model that differs in one ran another network
than the one its task vector is added to."""


def _check_same_variant(bcfg: dict[str, Any], mcfg: dict[str, Any], m: TensorSource) -> None:
    """A finetuned model's ``config.json`` agrees with the base's on :data:`VARIANT_FIELDS`
    (where both have one): a long-context finetune's ``rope_theta``, a changed norm epsilon, a
    layer count edited in the file were merged without a word."""
    ours, theirs = _variant(bcfg), _variant(mcfg)
    for name in VARIANT_FIELDS:
        if name in ours and name in theirs and ours[name] != theirs[name]:
            raise ValueError(
                f"{m.label} ({m.where}) has {name}={theirs[name]!r} in its config.json but the "
                f"base has {ours[name]!r}: the merged model keeps the base's config, so this "
                "model's task vector would be added to another variant of the network (pass "
                f"{ARCH_SWITCH} if you know they correspond)"
            )


def _variant(cfg: dict[str, Any]) -> dict[str, Any]:
    """:data:`VARIANT_FIELDS` of a config.json; RoPE's θ and scaling read where either
    transformers writes them (top level, or ``rope_parameters`` since transformers 5)."""
    out = {k: cfg[k] for k in VARIANT_FIELDS if k in cfg}
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict):
        if "rope_theta" in rope:
            out.setdefault("rope_theta", rope["rope_theta"])
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        if scaling.get("rope_type") not in (None, "default") or len(scaling) > 1:
            out.setdefault("rope_scaling", scaling)
    return out


def check_inputs(
    base: TensorSource,
    models: Sequence[TensorSource],
    vocab_policy: str = "error",
    allow_architecture_mismatch: bool = False,
    base_as_model: bool = False,
) -> dict[str, str]:
    """Validate architectures, tensor sets and shapes before any work. Returns per-key policy
    decisions for vocabulary-size mismatches (``{key: "base" | "truncate"}``). ``base_as_model``:
    a finetuned model may hold θ0's weights (:func:`_check_distinct_weights`)."""
    bcfg = base.config()
    for m in models:
        mcfg = m.config()
        for field in ("architectures", "model_type"):
            ours, theirs = bcfg.get(field), mcfg.get(field)
            if ours and theirs and ours != theirs and not allow_architecture_mismatch:
                raise ValueError(
                    f"{m.label} ({m.where}) has {field} {theirs!r} but the base has {ours!r}: "
                    "only models of the same architecture can be merged (pass "
                    f"{ARCH_SWITCH} if you know their weights correspond)"
                )
        if not allow_architecture_mismatch:
            _check_same_variant(bcfg, mcfg, m)
    _check_distinct_weights(base, models, base_as_model)
    decisions: dict[str, str] = {}
    base_keys = base.keys()
    base_set = set(base_keys)
    for m in models:
        m_keys = m.keys()
        m_set = set(m_keys)
        missing = [k for k in base_keys if k not in m_set]
        if missing:
            raise ValueError(
                f"{m.label} ({m.where}) lacks tensor {missing[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        extra = [k for k in m_keys if k not in base_set]
        if extra:
            raise ValueError(f"{m.label} ({m.where}) has tensor {extra[0]!r} that the base lacks")
        for k in base_keys:
            bd, md = base.dtype(k), m.dtype(k)
            if bd != md and (bd.is_floating_point or md.is_floating_point):
                raise ValueError(
                    f"{m.label} ({m.where}): tensor {k!r} is {md} but the base's is {bd}: save "
                    "every model in one dtype (load the odd one with torch_dtype set to the "
                    "base's and save_pretrained it again)"
                )
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
                f"{m.label} ({m.where}): tensor {k!r} has shape {ms} but the base has {bs}{hint}"
            )
    warn_shared_offset(base, models)
    return decisions


SHARED_OFFSET_COSINE = 0.95
"""Task vectors whose every pair has at least this cosine (on a few matrices) point the same way,
as τ_t = θ_t − B do when the models share an offset from B, i.e. B is not their θ0."""


def shared_offset(
    base: TensorSource, models: Sequence[TensorSource], most: int = 2
) -> float | None:
    """The smallest pairwise cosine of the models' task vectors on up to ``most`` mid-sized
    matrices (read whole, once), or None with fewer than two models, no such matrix, or a zero
    task vector (θ0 itself among the models)."""
    if len(models) < 2:
        return None
    names = base.keys()  # a source's tensor names (no dict)
    mats = sorted((k for k in names if len(base.shape(k)) == 2
                   and base.dtype(k).is_floating_point), key=lambda k: math.prod(base.shape(k)))  # fmt: skip
    picked = mats[len(mats) // 2 : len(mats) // 2 + most]
    if not picked:
        return None
    taus = []
    for m in models:
        parts = [(m.get(k).float() - base.get(k).float()).flatten() for k in picked]
        tau = torch.cat(parts)
        if float(tau.norm()) == 0.0:
            return None
        taus.append(tau / tau.norm())
    stack = torch.stack(taus)
    cos = stack @ stack.T
    return float(cos[~torch.eye(len(taus), dtype=torch.bool)].min())


def _records_its_base(m: TensorSource) -> bool:
    """Whether a model is a train stage output whose ``key.json`` records the θ0 it was trained
    from (its folder's, or the one above an ``adapter/``): the merge stage matches that record
    against the base (:func:`hhh_bench.stages.merge.check_same_base`), no guess needed."""
    import json

    folder = Path(str(getattr(m, "where", "")))
    for f in (folder / "key.json", folder.parent / "key.json"):
        try:
            key = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        return key.get("stage") == "train" and bool((key.get("payload") or {}).get("base"))
    return False


def warn_shared_offset(base: TensorSource, models: Sequence[TensorSource]) -> None:
    """Say when the base may not be the models' θ0 (battery 12, F2: specialists merged onto an
    unrelated θ0 of the same architecture and tokenizer, given as plain folders, exit 0 with
    every task vector the shared offset θ0_true − B): their task vectors point the same way."""
    if all(_records_its_base(m) for m in models):  # matched by record (merge.check_same_base)
        return
    low = shared_offset(base, models)
    if low is None or low < SHARED_OFFSET_COSINE:
        return
    from hhh_bench.core import console

    console.say(
        f"warning: the base ({base.where}) may not be the θ0 these {len(models)} models were "
        f"trained from: their task vectors point the same way (cosine ≥ {low:.3f} between every "
        "pair on two of its matrices), as when the models share an offset from the base; a "
        "task vector against another θ0 is the difference of unrelated models (give the base "
        "they were trained from)",
        level=console.QUIET,
    )


def name_folders(error: BaseException, finetuned: Sequence[Any]) -> ValueError | None:
    """A kernel's ValueError naming ``finetuned model <i>`` (its index among the tensors) with
    that model's folder added (battery 11, m16: a NaN specialist was named by index only); None
    when there is nothing to add."""
    if type(error) is not ValueError:
        return None
    text = str(error)

    def folder(m: re.Match[str]) -> str:
        i = int(m.group(1))
        f = finetuned[i] if i < len(finetuned) else None
        return m.group(0) if f is None or isinstance(f, Mapping) else f"{m.group(0)} ({f})"

    named = re.sub(r"finetuned model (\d+)\b(?! \()", folder, text)
    return None if named == text else ValueError(named)
