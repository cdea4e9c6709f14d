"""Content identity: what a file, a folder or a stage's output *is*, by its bytes, never its path.

One hash system for the whole project (core floor; imports nothing else of hhh_bench):

- **Files** are hashed with BLAKE3 (``blake3`` package, pinned in pyproject), streamed through a
  read-only memory map. A ``.safetensors`` file also gets one XXH3-128 digest per tensor over
  the tensor's byte span (its header's offsets), in the same pass: what the merge engine checks
  the bytes it read against (:class:`ReadCheck`).
- **A hash cache** remembers a file's digests by ``(real path, size, mtime_ns, ctime_ns, inode)``, one small
  file per entry (safe for concurrent writers, also on a shared filesystem), so an unchanged file
  is never re-read. It lives in ``<root>/.cache/hashes`` for the files of a run's root and in
  ``$HHH_BENCH_HASH_CACHE`` (default ``$XDG_CACHE_HOME/hhh-bench/hashes``) for files outside it.
- **A folder's identity** is the BLAKE3 of its files' relative paths and digests (every regular
  file: weights, config, tokenizer files of every kind; dot-files and the annotations of
  :data:`ANNOTATIONS` left out; a stage output's records of :data:`RECORDS` are verified but
  left out too).
- **A stage output's manifest** (:data:`MANIFEST`, ``checksums.json``) lists every file of the
  output with its size, mtime_ns, ctime_ns, inode and digests; it is written last, inside the temporary
  folder that is renamed into place. :func:`verify` checks it on every reuse: cheaply when each
  file's (size, mtime_ns, ctime_ns, inode) matches the record, by re-hashing the file otherwise; a file
  that is missing, changed or added is a :class:`ContentMismatch` naming the folder and the file.
  The output's identity is the digest over its *artifacts* (the files a later stage reads), read
  from the manifest: the stage's own metadata (``provenance.json``, the key, the result file with
  its timings) is verified but not part of it.
"""

from __future__ import annotations

import json
import mmap
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import xxhash

MANIFEST = "checksums.json"
"""A stage output's manifest: its files, their stat records and digests (written last)."""
KEY_FILE = "key.json"
"""What a stage output's key was computed from (the payload; docs/caching.md)."""
METADATA = frozenset({MANIFEST, KEY_FILE, "provenance.json"})
"""A stage output's own records: verified (but the manifest itself), never part of its identity."""
ANNOTATIONS = frozenset({"model/README.md", "model/scores.json", "model/diagnostics.json"})
"""Files of a stage output that hhh-bench itself rewrites after the fact (a merge output's model
card, its scores and diagnostics, by path inside the output): neither verified nor part of an
identity. They never change what a later stage computes (no loader reads them)."""
RECORDS = frozenset({"model/merge_info.json"})
"""Files of a stage output that record how it was made (a merge's inputs by path, its plan):
verified like any file, but not part of the output's identity, so that the same weights made
from the same inputs in a moved root (other paths in the record) are the same model."""
FORMAT = 1
"""Version of the manifest's format and of the identity's definition."""
_BLOCK = 1 << 20  # a piece hashed by BLAKE3 then XXH3 while in the CPU's cache


class ContentMismatch(ValueError):
    """A stage output (or an input) whose bytes are not those recorded for it."""


# ---------------------------------------------------------------------------------------------
# Files


def _safetensors_spans(mm: Any, size: int) -> dict[str, tuple[int, int]] | None:
    """``{tensor: (start, end)}`` file offsets from a safetensors header, None if unreadable."""
    if size < 8:
        return None
    n = int.from_bytes(mm[:8], "little")
    if n <= 0 or 8 + n > size:
        return None
    try:
        header = json.loads(bytes(mm[8 : 8 + n]))
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    header.pop("__metadata__", None)
    out = {}
    for k, v in header.items():
        try:
            a, b = (int(x) for x in v["data_offsets"])
        except (TypeError, KeyError, ValueError):
            return None
        out[k] = (8 + n + a, 8 + n + b)
    return out


def tensor_digest(data: Any) -> str:
    """XXH3-128 of a tensor's bytes (a buffer): the per-tensor read check's digest."""
    return xxhash.xxh3_128_hexdigest(data)


def hash_file(path: str | Path, tensors: bool = True) -> dict[str, Any]:
    """``{"blake3": hex, "tensors": {name: xxh3} | None}`` of one file, in one pass over a
    read-only map, piece by piece (each piece hashed by both while it is in the CPU's cache);
    per-tensor digests for ``.safetensors`` files only, and only with ``tensors``."""
    path = Path(path)
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return {"blake3": blake3.blake3(b"").hexdigest(), "tensors": None}
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                spans = None
                if tensors and path.suffix == ".safetensors":
                    spans = _safetensors_spans(view, size)
                todo = sorted(((a, b, k) for k, (a, b) in (spans or {}).items()), reverse=True)
                digests: dict[str, str] = {}
                open_: list[tuple[int, int, str, Any]] = []
                h = blake3.blake3()
                for i in range(0, size, _BLOCK):
                    j = min(i + _BLOCK, size)
                    h.update(view[i:j])
                    while todo and todo[-1][0] < j:  # tensors starting in this piece
                        a, b, k = todo.pop()
                        open_.append((a, b, k, xxhash.xxh3_128()))
                    still = []
                    for a, b, k, x in open_:
                        x.update(view[max(a, i) : min(b, j)])
                        if b <= j:
                            digests[k] = x.hexdigest()
                        else:
                            still.append((a, b, k, x))
                    open_ = still
                for a, b, k in todo:  # empty tensors at the end, or spans beyond the file
                    digests[k] = tensor_digest(b"") if a == b == size else "<beyond the file>"
                for _, _, k, _ in open_:
                    digests[k] = "<beyond the file>"
                return {"blake3": h.hexdigest(), "tensors": digests if spans is not None else None}
            finally:
                view.release()


STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino")
"""What a cheap check compares: a file rewritten in place changes its ctime even when its mtime
is set back (``touch -r``), and a file put in its place has another inode."""


def stat_record(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino}  # fmt: skip


def _stat_matches(st: os.stat_result, rec: Mapping[str, Any]) -> bool:
    return stat_record(st) == {k: rec.get(k) for k in STAT_FIELDS}


class HashCache:
    """Digests of files by ``(real path, size, mtime_ns, ctime_ns, inode)``: one small JSON file per entry
    under ``folder`` (written atomically; concurrent runs may share it)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def _entry(self, path: Path, st: os.stat_result) -> Path:
        ident = "\0".join(map(str, (os.path.realpath(path), *stat_record(st).values())))
        k = blake3.blake3(ident.encode()).hexdigest()[:40]
        return self.folder / k[:2] / k

    def get(self, path: Path, st: os.stat_result) -> dict[str, Any] | None:
        try:
            got = json.loads(self._entry(path, st).read_text())
        except (OSError, ValueError):
            return None
        return got if isinstance(got, dict) and "blake3" in got else None

    def put(self, path: Path, st: os.stat_result, digests: Mapping[str, Any]) -> None:
        entry = self._entry(path, st)
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
            tmp.write_text(json.dumps(dict(digests), sort_keys=True))
            os.replace(tmp, entry)
        except OSError:  # a read-only cache only costs a re-hash next time
            pass

    def digests(self, path: str | Path) -> dict[str, Any]:
        """The file's digests, from the cache when its stat record is unchanged."""
        path = Path(path)
        st = path.stat()
        got = self.get(path, st)
        if got is not None:
            self.hits += 1
            return got
        self.misses += 1
        got = hash_file(path)
        # kept when unchanged while hashed and not "racy" (git's term): a file written within
        # RACY_NS of now could be rewritten, same size, within the same timestamp tick
        if path.stat().st_mtime_ns == st.st_mtime_ns and time.time_ns() - st.st_mtime_ns > RACY_NS:
            self.put(path, st, got)
        return got


RACY_NS = 2_000_000_000
"""A file modified less than this long (2 s) before it is hashed is not remembered by the hash
cache: a same-size rewrite within the filesystem's timestamp tick would keep its stat record."""


def user_hash_cache() -> HashCache:
    """The hash cache for files outside any run's root (``$HHH_BENCH_HASH_CACHE``, else
    ``$XDG_CACHE_HOME/hhh-bench/hashes``, else ``~/.cache/hhh-bench/hashes``)."""
    env = os.environ.get("HHH_BENCH_HASH_CACHE")
    if env:
        return HashCache(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return HashCache(Path(base) / "hhh-bench" / "hashes")


def root_hash_cache(root: str | Path) -> HashCache:
    """The hash cache of a run's root (``<root>/.cache/hashes``)."""
    return HashCache(Path(root) / ".cache" / "hashes")


_ROOTS: list[Path] = []


def register_root(root: str | Path) -> None:
    """Files under ``root`` are cached in its own hash cache (the pipeline registers its root)."""
    r = Path(root).resolve()
    if r not in _ROOTS:
        _ROOTS.append(r)


def cache_for(path: str | Path) -> HashCache:
    """The hash cache that holds ``path``: its run root's, else the user's."""
    p = Path(path).resolve()
    for r in _ROOTS:
        if p == r or r in p.parents:
            return root_hash_cache(r)
    return user_hash_cache()


# ---------------------------------------------------------------------------------------------
# Folders and manifests


def _walk(folder: Path) -> Iterable[Path]:
    """Regular files under ``folder``, recursively, dot-files and dot-folders left out."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _digest_lines(entries: Mapping[str, str]) -> str:
    h = blake3.blake3(f"hhh-bench-content-{FORMAT}\n".encode())
    for rel in sorted(entries):
        h.update(f"{rel}\0{entries[rel]}\n".encode())
    return h.hexdigest()


def _counted(rel: str) -> bool:
    return rel not in ANNOTATIONS


def left_out_of_identity(result_file: str | None) -> frozenset[str]:
    """The files of a stage output its identity leaves out (relative paths): its metadata, its
    records, its annotations and its result file."""
    return METADATA | RECORDS | ANNOTATIONS | ({result_file} if result_file else frozenset())


@dataclass
class Manifest:
    """A folder's files: ``{relative path: {size, mtime_ns, ctime_ns, ino, blake3, tensors}}``."""

    files: dict[str, dict[str, Any]]
    result_file: str | None = None

    def identity(self, under: str = "") -> str:
        """The digest over the artifacts (metadata, the result file and annotations left out);
        ``under``: only the files below that sub-folder (``model``), paths relative to it."""
        skip = left_out_of_identity(self.result_file)
        prefix = f"{under.strip('/')}/" if under else ""
        entries = {
            rel[len(prefix) :]: rec["blake3"]
            for rel, rec in self.files.items()
            if rel.startswith(prefix) and rel not in skip
        }
        return _digest_lines(entries)

    def to_json(self) -> str:
        return json.dumps(
            {"format": FORMAT, "hash": "blake3", "tensor_hash": "xxh3_128",
             "result_file": self.result_file, "files": self.files},
            indent=1, sort_keys=True,
        ) + "\n"  # fmt: skip


def build_manifest(folder: str | Path, result_file: str | None = None) -> Manifest:
    """Hash every file of a finished output folder (before it is renamed into place: a rename
    keeps inodes and mtimes)."""
    folder = Path(folder)
    files = {}
    for f in _walk(folder):
        rel = f.relative_to(folder).as_posix()
        if rel == MANIFEST:
            continue
        st = f.stat()
        files[rel] = {**stat_record(st), **hash_file(f)}
    return Manifest(files, result_file)


def write_manifest(folder: str | Path, result_file: str | None = None) -> Manifest:
    """Build and write ``checksums.json`` into ``folder`` (the last file written)."""
    m = build_manifest(folder, result_file)
    tmp = Path(folder) / f".{MANIFEST}.tmp"
    tmp.write_text(m.to_json())
    os.replace(tmp, Path(folder) / MANIFEST)
    return m


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of a stage output; a missing or unreadable one is a :class:`ContentMismatch`."""
    path = Path(folder) / MANIFEST
    try:
        raw = json.loads(path.read_text())
        files = raw["files"]
        if not isinstance(files, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT}")
    except FileNotFoundError:
        raise ContentMismatch(
            f"{folder}: has no {MANIFEST} (written by an older hhh-bench, or not a finished "
            "stage output): its files cannot be verified"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ContentMismatch(f"{path}: unreadable or truncated manifest ({e})") from None
    return Manifest(files, raw.get("result_file"))


@dataclass
class Verified:
    """The outcome of :func:`verify`: the manifest and how many files needed re-hashing."""

    manifest: Manifest
    rehashed: int = 0
    problems: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)  # files no manifest lists (a user's, say)


def verify(folder: str | Path, *, full: bool = False, cache: HashCache | None = None) -> Verified:
    """Check a stage output against its manifest: every recorded file present with the same
    bytes, no file added. A file whose (size, mtime_ns, ctime_ns, inode) matches its record is taken as
    unchanged unless ``full``; any other is re-hashed (through ``cache``, so a copied root is
    re-hashed once). Problems are collected in ``Verified.problems`` (empty: verified)."""
    folder = Path(folder)
    try:
        m = read_manifest(folder)
    except ContentMismatch as e:
        return Verified(Manifest({}), 0, [str(e)])
    cache = cache or cache_for(folder)
    out = Verified(m)
    seen = set()
    for f in _walk(folder):
        rel = f.relative_to(folder).as_posix()
        seen.add(rel)
        if rel == MANIFEST or not _counted(rel):
            continue
        rec = m.files.get(rel)
        if rec is None:
            out.problems.append(f"file {rel} is not in its {MANIFEST} (added later)")
            out.added.append(rel)
            continue
        try:
            st = f.stat()
        except OSError as e:
            out.problems.append(f"{rel} cannot be read ({e})")
            continue
        if st.st_size != rec["size"]:
            out.problems.append(
                f"{rel} has {st.st_size} bytes, {rec['size']} recorded (truncated or rewritten)"
            )
            continue
        if not full and _stat_matches(st, rec):
            continue
        out.rehashed += 1
        got = hash_file(f, tensors=False) if full else cache.digests(f)
        if got["blake3"] != rec["blake3"]:
            out.problems.append(f"{rel} differs from the bytes recorded when it was written")
    for rel in sorted(set(m.files) - seen):
        if _counted(rel):
            out.problems.append(f"{rel} is missing")
    return out


def mismatch_error(folder: str | Path, problems: list[str], hint: str = "") -> ContentMismatch:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ContentMismatch(
        f"cached output {folder} does not match its {MANIFEST}: {problems[0]}{more}. "
        + (hint or "Delete the folder to recompute it, or set cache.on_mismatch=recompute.")
    )


def output_above(path: str | Path) -> Path | None:
    """The folder holding ``key.json`` or ``checksums.json`` (a finished stage output, in place
    or copied) that ``path`` is or lies inside, at any depth, else None: a folder a run or a
    merge must not write into (writing there would change an output its checksums vouch for)."""
    p = Path(path).resolve()
    for folder in (p, *p.parents):
        if (folder / KEY_FILE).is_file() or (folder / MANIFEST).is_file():
            return folder
    return None


def enclosing_output(path: str | Path, depth: int = 3) -> tuple[Path, str] | None:
    """The finished stage output holding ``path`` (``path`` itself or one of its ``depth``
    parents has a manifest and lies where the cache wrote it) and ``path``'s place inside it,
    else None."""
    p = Path(path).resolve()
    for i, cand in enumerate([p, *list(p.parents)[:depth]]):
        if (cand / MANIFEST).is_file():
            if not _in_place(cand):
                return None  # a copy of an output elsewhere (a user's folder): hashed as such
            return cand, p.relative_to(cand).as_posix() if i else ""
    return None


def _in_place(folder: Path) -> bool:
    """Whether a folder with a manifest is a stage output where the cache wrote it,
    ``<root>/<stage>/<key>``: its ``key.json`` names that stage and key."""
    try:
        record = json.loads((folder / KEY_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("key") == folder.name
        and record.get("stage") == folder.parent.name
    )


def checked_output(out: Path, read: str | Path) -> Verified:
    """The stage output ``out`` verified before a file of it (``read``) is read as an input;
    a mismatch raises, saying which stage to rerun."""
    v = verify(out)
    if v.problems:  # read as an input here: its own stage recomputes it, not this one
        raise mismatch_error(out, v.problems, hint=(
            f"It is read as an input ({read}): rerun the stage that wrote it "
            f"(stage={out.parent.name}) with cache.on_mismatch=recompute, or delete the "
            "folder, or copy the files you mean to use to a folder of your own."
        ))  # fmt: skip
    return v


def read_checked(path: str | Path) -> Path:
    """``path``, after checking the stage output holding it (if any) against its manifest: what
    a reader of another stage's artifact (an eval's items, its results) calls first."""
    held = enclosing_output(path)
    if held is not None:
        checked_output(held[0], path)
    return Path(path)


def folder_identity(folder: str | Path, cache: HashCache | None = None) -> str:
    """Content identity of a model, adapter or data folder (or a single file): from the manifest
    of the stage output that holds it (verified; a mismatch raises), else by hashing every file
    through the hash cache."""
    folder = Path(folder)
    held = enclosing_output(folder) if folder.is_dir() else None
    if held is not None:
        out, under = held
        return checked_output(out, folder).manifest.identity(under)
    cache = cache or cache_for(folder)
    if folder.is_file():
        return _digest_lines({folder.name: cache.digests(folder)["blake3"]})
    records = _copied_records(folder)
    entries = {
        rel: cache.digests(f)["blake3"]
        for f in _walk(folder)
        if (rel := f.relative_to(folder).as_posix()) not in records
    }
    return _digest_lines(entries)


def _copied_records(folder: Path) -> frozenset[str]:
    """The files a copy of a whole stage output (a folder with its manifest, away from where
    the cache wrote it) holds besides its artifacts, as :meth:`Manifest.identity` leaves them
    out: so that a byte-identical copy of an output has the output's identity (battery 11, m19:
    a copy of θ0 given as a merge's base was refused), its content hashed here, never read from
    the copied manifest. Empty for any other folder."""
    try:
        result = json.loads((folder / MANIFEST).read_text()).get("result_file")
    except (OSError, ValueError, AttributeError):
        return frozenset()
    return left_out_of_identity(result if isinstance(result, str) else None)


def file_tensor_digests(folder: str | Path, files: Iterable[Path]) -> dict[str, dict[str, str]]:
    """``{file name: {tensor: xxh3}}`` of a model's safetensors files, as recorded (the manifest
    of the stage output holding them, or the hash cache): what a merge's reads are checked
    against."""
    folder = Path(folder)
    held = enclosing_output(folder)
    recorded: dict[str, Any] = {}
    if held is not None:
        out, under = held
        m = read_manifest(out)
        prefix = f"{under}/" if under else ""
        recorded = {
            rel[len(prefix) :]: rec for rel, rec in m.files.items() if rel.startswith(prefix)
        }
    out_map = {}
    for f in files:
        rel = Path(f).relative_to(folder).as_posix()
        rec = recorded.get(rel)
        if rec is None or not _stat_matches(Path(f).stat(), rec):
            rec = cache_for(f).digests(f)
        out_map[Path(f).name] = dict(rec.get("tensors") or {})
    return out_map


def is_path_like(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~"))


def _names_a_path(key: Any) -> bool:
    """A config key whose value is a path however it is written (``path``, ``model_path``,
    ``source_paths``: a relative ``data/x.jsonl`` too)."""
    return isinstance(key, str) and (key.endswith(("path", "paths")) or key == "model")


def keyable(obj: Any, drop: frozenset[str] = frozenset(), key: Any = None) -> Any:
    """A stage payload made location-free: keys named in ``drop`` (cache folders, the root)
    removed at any depth, and every string that names an existing file or folder by an absolute
    or explicitly relative path (``/…``, ``./…``, ``~/…``), or by any path under a key that
    names one (``path``, ``*_path``, ``*_paths``), replaced by ``{"content": identity}``; a glob
    pattern there by the content of the files it matches (their names and identities)."""
    if isinstance(obj, Mapping):  # the entries of a ``*_paths`` mapping are paths
        many = isinstance(key, str) and key.endswith("paths")
        return {k: keyable(v, drop, key if many else k) for k, v in obj.items() if k not in drop}
    if isinstance(obj, (list, tuple)):
        return [keyable(v, drop, key) for v in obj]
    if isinstance(obj, str) and obj and (is_path_like(obj) or _names_a_path(key)):
        p = Path(obj).expanduser()
        if p.exists():
            return {"content": folder_identity(p)}
        if any(c in obj for c in "*?["):
            import glob

            matches = sorted(glob.glob(str(p)))
            if matches:
                return {"glob": p.name, "content": _digest_lines(
                    {Path(m).name: folder_identity(m) for m in matches})}  # fmt: skip
    return obj
