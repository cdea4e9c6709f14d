"""The streaming merge engine: merge whole models tensor by tensor from safetensors.

``merge_models(method, base, finetuned, out_dir, **params)`` reads one tensor of each model at a
time (the next one read ahead by a reader thread), so peak memory stays near (T + 1) × the
largest tensor plus the method's working set, not T × the model. LoRA adapters are read as their
exact factors (:class:`~hhh_bench.merging.sources.LoraAdapter`). Methods that need statistics
over all layers (RESM's rank budget, TIES ``scope=global``) get a first streaming pass. The
expensive, knob-independent part of each tensor's merge (``precompute``: SVD factors, trim
masks) is cached on disk (:class:`~hhh_bench.merging.cache.SweepCache`), so a sweep over
``scaling`` recomposes from the cache.

One concept: a whole-model merge, from input folders to one finished output folder.

What it guarantees:

- **validation before work**: arguments (types, method and knobs, shard size, dtypes, paths)
  are checked before any input is read; inputs (architecture and ``model_type``, tensor sets,
  shapes, every shard's header) before any tensor is merged; every error names the model, its
  folder and the tensor;
- **nothing lost**: ``out_dir`` may never be, contain or lie inside an input or the cache; it is
  claimed with an exclusive lock file (a second merge into it fails at once; a lock left by a
  killed merge is detected and cleaned); ``overwrite=True`` replaces only the output of an earlier
  merge (a folder with ``merge_info.json``), never another folder;
- **named faults**: a failed write (a full disk) names the shard or sweep-cache entry;
- **nothing wrong**: the files read are those ``transformers`` would load; a merged tensor with
  NaN/Inf (e.g. float16 overflow) is an error naming it, and the output folder is renamed into
  place only when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import hhh_bench.merging.methods  # noqa: F401  (registers the methods)
from hhh_bench.core.codeid import code_identity
from hhh_bench.core.content import keyable
from hhh_bench.core.provenance import _host, _pid_alive, atomic_dir, config_hash, package_versions
from hhh_bench.core.sizes import parse_size
from hhh_bench.merging.base import get_method
from hhh_bench.merging.cache import SweepCache
from hhh_bench.merging.driver import Inputs, check_finite, per_tensor_params, run_merge
from hhh_bench.merging.sources import (
    ST_DTYPES,
    VOCAB_POLICIES,
    ModelInput,
    check_identities,
    check_inputs,
    check_reads,
    name_folders,
    open_inputs,
    resolve_path,
)

PRECOMPUTE_CODE = ("hhh_bench.merging.linalg", "hhh_bench.merging.taskvec",
                   "hhh_bench.merging.cache", "hhh_bench.merging.driver",
                   "hhh_bench.merging.statsfile", "hhh_bench.merging.methods")  # fmt: skip
"""What computes a sweep cache's precomputes besides the method's own classes: their key holds
these files (a precompute from before an edit is computed again). The whole methods package:
a method's prepare step calls helpers of other method modules (Breadcrumbs and DELLA: gta's L1
rescale; DELLA: dare's mask seeds), which its classes' files alone would miss."""

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
OUT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
MERGE_MARKER = "merge_info.json"
"""Written last into every merged folder: what ``overwrite=True`` is allowed to replace."""


class ShardWriter:
    """Writes safetensors shards tensor by tensor, in any order of arrival, without holding them.

    The layout (name, dtype, shape of every tensor, in merge order) is known before the merge, so
    each shard's header is written first and every tensor is written at its offset as soon as it
    is made. Shards are cut in merge order when the next tensor would pass ``max_bytes``; inside
    a shard the data is ordered by item size, then name, as ``safetensors`` does, so every tensor
    starts at an offset aligned to its item size.

    Writing is off the merge's critical path: :meth:`write` checks and casts the tensor, then
    hands it to one background thread, with at most one tensor in flight (so at most one extra
    output tensor is held); an error of that write surfaces at the next :meth:`write` or at
    :meth:`close`.
    """

    def __init__(
        self,
        folder: Path,
        layout: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
        max_bytes: int,
        *,
        file_name: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """``file_name``: write one file of that name whatever its size (``max_bytes`` unused);
        ``metadata``: the safetensors ``__metadata__`` strings (default ``{"format": "pt"}``)."""
        groups: list[list[tuple[str, torch.dtype, tuple[int, ...], int]]] = [[]]
        size = 0
        for name, dtype, shape in layout:
            nbytes = _numel(shape) * _itemsize(dtype)
            if groups[-1] and size + nbytes > max_bytes and file_name is None:
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
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: Future[None] | None = None
        for i, group in enumerate(groups):
            fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            fname = file_name or fname
            header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
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

    def dtype_of(self, name: str) -> torch.dtype:
        """The planned dtype of ``name``."""
        return self._where[name][2]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``name`` (cast to its planned dtype; its shape must be the planned one)."""
        fname, pos, dtype, shape, nbytes = self._where[name]
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"parameter {name!r}: the merge produced shape {tuple(tensor.shape)}, "
                f"expected the base's {shape}"
            )
        t = tensor.detach().to(device="cpu", dtype=dtype).contiguous().reshape(-1)
        self.flush()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hhh-write")
        self._inflight = self._pool.submit(self._put, name, fname, pos, t, nbytes)

    def _put(self, name: str, fname: str, pos: int, t: torch.Tensor, nbytes: int) -> None:
        if fname not in self._handles:
            self._handles[fname] = (self.folder / fname).open("r+b", buffering=0)
        fd = self._handles[fname].fileno()
        data = memoryview(t.view(torch.uint8).numpy()) if nbytes else memoryview(b"")
        done = 0
        try:
            while done < nbytes:
                done += os.pwrite(fd, data[done:], pos + done)
        except OSError as e:  # a full disk: name the shard (os.pwrite names no file)
            raise OSError(
                e.errno, f"{e.strerror} (writing {name!r})", str(self.folder / fname)
            ) from e
        self._pending.discard(name)

    def flush(self) -> None:
        """Wait for the write in flight (raising its error, if any)."""
        fut, self._inflight = self._inflight, None
        if fut is not None:
            fut.result()

    def abort(self) -> None:
        """Close the files without the completeness check (the folder is being discarded)."""
        with contextlib.suppress(Exception):
            self.flush()
        self._pending.clear()
        self.close()

    def close(self) -> None:
        """Finish the write in flight, close the files; raise if a tensor of the layout was
        never written."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
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


def _model_card(
    method: str,
    params: Mapping[str, Any],
    base: str,
    models: Sequence[str],
    names: Sequence[str] | None,
) -> str:
    def who(i: int, m: str) -> str:
        what = f" ({names[i]} specialist)" if names else ""
        return f"- finetuned {i}{what}: `{m}`"

    lines = [
        "---",
        "tags: [hhh-bench, merge]",
        "---",
        f"# Merged with hhh-bench: `{method}`",
        "",
        "θ = θ0 + λ·merge(τ_1..τ_T), τ_t = θ_t − θ0 (see docs/merging.md).",
        "",
        f"- base (θ0): `{base}`",
        *[who(i, m) for i, m in enumerate(models)],
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


# ---------------------------------------------------------------------------------------------
# The output folder: never an input, claimed exclusively


def _real(p: str | Path) -> Path:
    return Path(os.path.realpath(Path(p).expanduser()))


def check_cache_dir(cache_dir: Path, input_folders: Sequence[Path]) -> None:
    """Refuse a sweep cache folder that is, or lies inside, an input model's folder: its entries
    would change the input's content (battery 20, F4). A folder that holds the inputs is
    allowed: the cache writes and evicts only its own entries (:meth:`SweepCache.entries`)."""
    real = _real(cache_dir)
    for p in input_folders:
        rp = _real(p)
        if real == rp or rp in real.parents:
            raise ValueError(
                f"merge_engine.cache_dir={str(cache_dir)!r} is inside the input model {p}: the "
                "sweep cache would write its entries into a model's folder; give a folder "
                "outside every input (or merge_engine.cache_dir=null turns the cache off)"
            )


def check_out_dir(
    out: Path, input_folders: Sequence[Path], cache_dir: Path | None, overwrite: bool
) -> None:
    """Refuse an ``out_dir`` that is, contains or lies inside an input or the cache, a symlink,
    or an existing folder that ``overwrite`` may not replace."""
    if out.is_symlink():
        raise ValueError(
            f"out_dir {out} is a symlink (to {os.readlink(out)}); give the real folder"
        )
    real_out = _real(out)
    guarded = [(p, "an input model") for p in input_folders]
    if cache_dir is not None:
        guarded.append((Path(cache_dir), "the sweep cache"))
    for p, what in guarded:
        rp = _real(p)
        if real_out == rp or rp in real_out.parents or real_out in rp.parents:
            raise ValueError(
                f"out_dir {out} would overwrite {what} ({p}): write the merge to a folder "
                "outside every input"
            )
    if out.exists():
        if not out.is_dir() or not (out / MERGE_MARKER).is_file():
            raise FileExistsError(
                f"{out} exists and is not the output of an hhh-bench merge (no {MERGE_MARKER}); "
                "overwrite replaces only earlier merges: choose another out_dir"
            )
        if not overwrite:
            raise FileExistsError(
                f"{out} already exists (an earlier merge's output: overwrite=true, or "
                "--overwrite for hhh-bench merge, replaces it)"
            )
        foreign, changed = foreign_files(out)
        for what, files in (("did not write", foreign), ("wrote, changed since", changed)):
            if files:  # battery 17, U5 / 18, F4: a user's notes or weights went unnamed
                more = f" and {len(files) - 5} more" if len(files) > 5 else ""
                raise FileExistsError(
                    f"{out} holds file(s) the earlier merge {what}: {', '.join(files[:5])}{more}; "
                    "overwrite replaces the whole folder: move them out first, or choose "
                    "another out_dir"
                )


def _files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _stat_of(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def foreign_files(out: Path) -> tuple[list[str], list[str]]:
    """The files of an earlier merge's folder that merge did not write, and those it wrote
    that changed since (``merge_info.json`` records each file's size and mtime; a merge from
    before that record: the names a merge writes, none known changed)."""
    try:
        written = json.loads((out / MERGE_MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        written = None
    if isinstance(written, dict):
        present = _files_in(out)
        foreign = [f for f in present if f not in written and f != MERGE_MARKER]
        changed = [f for f in present if f in written and _stat_of(out / f) != written[f]]
        return foreign, changed
    known = {*COPY_FILES, MERGE_MARKER, "README.md", "model.safetensors.index.json",
             "mergekit_config.yml", "diagnostics.json"}  # fmt: skip
    return [f for f in _files_in(out)
            if f not in known and not re.fullmatch(r"model[-0-9of]*\.safetensors", f)], []  # fmt: skip


def _why_not(folder: Path, e: OSError) -> str:
    """Why ``folder`` (an output's parent) cannot hold the output, in the user's terms."""
    first = folder
    while not first.exists() and first != first.parent:
        first = first.parent
    if first.exists() and not first.is_dir():
        return f"{first} is a file, not a folder"
    return f"{e.strerror or e} in {folder} (a folder this user may not write in)"


@contextlib.contextmanager
def claim(out: Path) -> Iterator[Path]:
    """Hold ``.<name>.lock`` beside ``out`` (exclusive create) for the duration of a merge.

    A second merge into the same folder fails at once; a lock whose process is gone (a killed
    merge, same host) is removed and taken over.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # battery 20, B-F11: "[Errno 17] File exists: 'afile'", unnamed
        raise OSError(
            e.errno, f"out_dir {out} cannot be created: {_why_not(out.parent, e)}"
        ) from None
    lock = out.with_name(f".{out.name}.lock")
    me = f"{os.getpid()}@{_host()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = lock.read_text().strip() if lock.is_file() else ""
            pid, _, host = owner.partition("@")
            if host == _host() and pid.isdigit() and not _pid_alive(int(pid)):
                lock.unlink(missing_ok=True)  # left by a killed merge
                continue
            raise FileExistsError(
                f"another merge ({owner or 'unknown process'}) is writing {out}; wait for it or "
                f"choose another out_dir (remove {lock} only if no merge is running)"
            ) from None
        except OSError as e:  # /proc, /sys, a read-only folder: the user's out_dir named
            raise OSError(
                e.errno, f"out_dir {out} cannot be written: {_why_not(out.parent, e)}"
            ) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        break
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def _progress(it: Iterator[Any], desc: str, total: int, enabled: bool = True) -> Iterator[Any]:
    from tqdm.auto import tqdm

    yield from tqdm(it, desc=desc, total=total, disable=not enabled, unit="tensor", mininterval=1.0)


def _check_args(
    finetuned: Any,
    out_dir: Any,
    max_shard_size: Any,
    out_dtype: Any,
    vocab_policy: Any,
    finetuned_names: Any,
) -> int:
    if isinstance(finetuned, (str, Path, Mapping)) or not isinstance(finetuned, Sequence):
        raise ValueError(
            "finetuned must be a list of models (folders, hub ids or LoRA adapters), got "
            f"{type(finetuned).__name__} {finetuned!r}: wrap a single model in a list"
        )
    if not finetuned:
        raise ValueError("no finetuned models: pass at least one")
    if not isinstance(out_dir, (str, Path)) or not str(out_dir):
        raise ValueError(f"out_dir must be a folder path, got {out_dir!r}")
    if vocab_policy not in VOCAB_POLICIES:
        raise ValueError(f"vocab_policy must be one of {VOCAB_POLICIES}, got {vocab_policy!r}")
    if out_dtype is not None and out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {list(OUT_DTYPES)} or null, got {out_dtype!r}")
    if finetuned_names is not None and len(finetuned_names) != len(finetuned):
        raise ValueError(
            f"finetuned_names has {len(finetuned_names)} entries for {len(finetuned)} models"
        )
    return parse_size(max_shard_size)


def merge_models(
    method: str,
    base: str | Path,
    finetuned: Sequence[ModelInput],
    out_dir: str | Path,
    *,
    max_shard_size: str | int = "2GB",
    out_dtype: str | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    allow_architecture_mismatch: bool = False,
    vocab_policy: str = "error",
    cache_dir: str | Path | None = None,
    cache_max_gb: float = 20.0,
    finetuned_names: Sequence[str] | None = None,
    progress: bool = True,
    verify_reads: bool = True,
    base_as_model: bool = False,
    tensor_params: Callable[[str], Mapping[str, Any]] | None = None,
    extra_files: Mapping[str, str] | None = None,
    **params: Any,
) -> MergeResult:
    """Merge ``finetuned`` models (folders, hub ids or LoRA adapter folders) into ``base`` with a
    registered method, streaming tensor by tensor; write a complete HF model folder to ``out_dir``.

    Args:
        method: a registered merge method (``hhh_bench.merging.list_methods()``).
        base: θ0, a folder or hub id (safetensors).
        finetuned: the T specialists; LoRA adapters are read as their exact factors s·B·A.
        out_dir: the output folder (must not exist unless ``overwrite``; never an input).
        max_shard_size: largest output shard (``"2GB"``, ``"2 GiB"``, ``"500MB"`` or bytes).
        out_dtype: dtype of the written weights (``float32``/``bfloat16``/``float16``); default
            the base's.
        overwrite: replace an earlier merge's output at ``out_dir`` (never another folder).
        allow_pickle: accept ``.bin``/``.pt`` checkpoints (they can run code when loaded).
        allow_architecture_mismatch: merge models whose ``architectures``/``model_type`` differ.
        vocab_policy: ``error`` | ``base`` (keep the base's rows of vocabulary-sized tensors
            whose row count differs) | ``truncate_to_base`` (merge the first rows).
        cache_dir: folder of the sweep cache (None: no cache).
        cache_max_gb: size cap of the sweep cache.
        finetuned_names: what each finetuned model is (e.g. its 3H dimension), for the model card.
        progress: show progress bars (tensors done / total).
        verify_reads: check every tensor read against the digests recorded for its file before
            the merge (a stage output's manifest, else the hash cache): an input changed or
            replaced while the merge reads it fails the merge and leaves no output.
            ``merge_info.json``'s ``inputs_read`` records the inputs' content identities.
        base_as_model: accept a finetuned model that holds the base's weights (refused by
            default: its τ = 0); for methods whose points are the models themselves, the base
            among them (mergekit's linear, karcher, multislerp without a base_model).
        tensor_params: optional ``key -> {param: value}``, the params of one floating tensor
            that differ from ``**params`` (per-layer gradients, name filters: what
            ``hhh-bench merge`` reads from a mergekit YAML). Every tensor's params are built
            and validated before any tensor is read; ``merge_info.json`` records them
            (``tensor_params``: the keys whose params differ). Not with a method that plans over
            all tensors (RESM, TIES ``scope: global``).
        extra_files: ``{file name: text}`` written into the output folder (e.g. the merge's
            YAML config, as mergekit writes ``mergekit_config.yml``).
        **params: the method's hyperparameters (``describe_method(method)``).

    Returns:
        A :class:`MergeResult` (out_dir, cache hits and misses, seconds, shards).

    Raises:
        ValueError: bad arguments or inputs, named before any work (architecture, missing
            tensor, shape, vocabulary size, NaN/Inf, unreadable shard, pickle files, unknown
            method or parameter, an out_dir inside an input), or a non-finite merged tensor.
        FileExistsError: ``out_dir`` exists (and ``overwrite`` is false or it is not a merge
            output), or another merge holds it.
    """
    t0 = time.time()
    shard_limit = _check_args(
        finetuned, out_dir, max_shard_size, out_dtype, vocab_policy, finetuned_names
    )
    m = get_method(method)
    p = m.make_params(**params)
    p.resolve_weights(len(finetuned))
    m.check_models(len(finetuned), p)
    out = Path(out_dir).expanduser()
    base_folder = resolve_path(base)
    folders = [base_folder] + [resolve_path(f) for f in finetuned if not isinstance(f, Mapping)]
    check_out_dir(out, folders, Path(cache_dir) if cache_dir is not None else None, overwrite)
    if cache_dir is not None:
        check_cache_dir(Path(cache_dir), folders)

    base_src, models = open_inputs(base_folder, finetuned, allow_pickle)
    decisions = check_inputs(
        base_src, models, vocab_policy, allow_architecture_mismatch, base_as_model
    )
    if verify_reads:  # what each tensor read must be: the digests recorded before any read
        for src in (base_src, *models):
            getattr(src, "record_reads", lambda: None)()
    keys = base_src.keys()
    inputs = Inputs(base_src, models, keys, decisions)
    params_for, overrides = per_tensor_params(m, params, tensor_params, keys, base_src.dtype)

    cache, prefix = None, ""
    if cache_dir is not None:
        cache = SweepCache(cache_dir, int(cache_max_gb * (1 << 30)))
        ids = [base_src.identity()] + [mm.identity() for mm in models]
        # a knob that names files (Fisher's and RegMean's statistics) keyed by their content
        knobs = keyable({k: getattr(p, k) for k in m.precompute_keys})
        # the code that computes what is cached: a precompute from before an edit is not served
        code = code_identity(type(m), *PRECOMPUTE_CODE)
        prefix = config_hash(
            {"inputs": ids, "method": method, "knobs": knobs, "vocab": vocab_policy,
             "device": str(getattr(p, "device", "cpu")),  # a GPU's SVD is not the CPU's bits
             "compute_dtype": str(getattr(p, "compute_dtype", "")),
             "code": code},
            length=32,
        )  # fmt: skip

    def out_dtype_of(k: str) -> torch.dtype:
        d = base_src.dtype(k)
        return OUT_DTYPES[out_dtype] if out_dtype is not None and d.is_floating_point else d

    layout = [(k, out_dtype_of(k), base_src.shape(k)) for k in keys]
    params_record = {**p.to_dict(), "vocab_policy": vocab_policy}
    result = MergeResult(str(out), method, params_record, len(keys), 0.0)

    bars: list[Any] = []

    def bar(it: Iterator[Any], desc: str, total: int) -> Iterator[Any]:
        bars.append(_progress(it, desc, total, progress))
        return bars[-1]

    with claim(out), atomic_dir(out, overwrite=overwrite) as tmp:
        writer = ShardWriter(tmp, layout, shard_limit)

        def sink(k: str, merged: torch.Tensor) -> None:
            dt = writer.dtype_of(k)
            if merged.dtype != dt:  # merged tensors arrive cast and checked; θ0's kept ones not
                merged = merged.to(dtype=dt)
                check_finite(k, merged, f"the merged tensor in {dt}")
            writer.write(k, merged)

        try:
            stats = run_merge(
                m,
                p,
                inputs,
                sink,
                cache=cache,
                cache_prefix=prefix,
                progress=bar,
                desc=f"merging ({method})",
                out_dtype=writer.dtype_of,
                params_for=params_for,
            )
            read_from = check_reads([base_src, *models]) if verify_reads else {}
        except BaseException as e:
            for b in bars:  # closed now, inside the run's console session: a bar closed when
                b.close()  # collected drew its last line on the console after the error (m16)
            writer.abort()  # the folder is discarded; report the original error
            if cache is not None:
                cache.discard_written()
            named = name_folders(e, finetuned)
            if named is not None:
                raise named from None
            raise
        writer.close()
        _finish_folder(tmp, writer, base_src_folder=base_folder, out_dtype=out_dtype)
        if verify_reads:  # the files copied from the base (tokenizer, config) are the read ones
            check_identities([base_src, *models])
        names = list(finetuned_names) if finetuned_names is not None else None
        labels = [str(f) if not isinstance(f, Mapping) else "<state dict>" for f in finetuned]
        (tmp / "README.md").write_text(_model_card(method, params_record, str(base), labels, names))
        info = {
            "method": method,
            "params": params_record,
            "base": str(base),
            "finetuned": labels,
            "finetuned_names": names,
            "plan": stats.plan,
            "tensor_params": overrides,
            "versions": package_versions(),
            "inputs_read": read_from,
        }
        for fname, text in (extra_files or {}).items():
            if Path(fname).name != fname or fname in (MERGE_MARKER, "README.md"):
                raise ValueError(f"extra_files: {fname!r} is not a plain file name of its own")
            (tmp / fname).write_text(text)
        # what a later overwrite may replace: each file as written (size, mtime)
        info["files"] = {f: _stat_of(tmp / f) for f in _files_in(tmp)}
        (tmp / MERGE_MARKER).write_text(
            json.dumps(info, indent=2, sort_keys=True, default=str) + "\n"
        )
        result.shards = [name for name, _ in writer.shards]
    inputs.close()
    if cache is not None:
        cache.evict()
        result.cache_hits, result.cache_misses = cache.hits, cache.misses
    result.seconds = round(time.time() - t0, 3)
    return result


def _finish_folder(
    tmp: Path, writer: ShardWriter, *, base_src_folder: Path, out_dtype: str | None
) -> None:
    """The index (sharded output), the base's config / tokenizer files, the dtype in config."""
    if len(writer.shards) > 1:
        weight_map = {k: name for name, ks in writer.shards for k in ks}
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps(
                {"metadata": {"total_size": writer.total_bytes}, "weight_map": weight_map},
                indent=2,
            )
            + "\n"
        )
    for fname in COPY_FILES:
        src = base_src_folder / fname
        if src.is_file():
            shutil.copy2(src, tmp / fname)
    if out_dtype is not None and (tmp / "config.json").is_file():
        c = json.loads((tmp / "config.json").read_text())
        c["torch_dtype"] = c["dtype"] = out_dtype
        (tmp / "config.json").write_text(json.dumps(c, indent=2) + "\n")
