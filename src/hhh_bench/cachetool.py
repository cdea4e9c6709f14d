"""``hhh-bench cache verify|gc [ROOT]``: check every cached stage output of a run's root against
its manifest, and list (``--yes``: remove) the outputs nothing refers to.

- ``verify`` re-hashes every file of every stage output (``--quick``: only the files whose size,
  mtime or inode differ from their record, what a reuse checks), checks each output is the one
  its place says (no symbolic link, its ``key.json`` naming that stage and key) and each row of
  the stores against its digest, and lists each difference; exit status 1 when one is found.
- ``gc`` lists the stage outputs that no results-store row (``results.jsonl``,
  ``diagnostics.jsonl``) and no other stage output refers to (a later stage records the folders
  it read in its ``key.json``), and the temporary folders killed runs left in the stage folders
  (``.<key>.tmp-*`` of a process that is gone); ``--yes`` removes them. An output written before manifests
  existed (no ``key.json``) is kept and counted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from hhh_bench.core.content import KEY_FILE, MANIFEST, root_hash_cache, verify
from hhh_bench.core.provenance import stale_temporaries
from hhh_bench.core.stagecache import STAGE_VERSIONS, misplaced

STORES = ("results.jsonl", "diagnostics.jsonl")


def stage_outputs(root: Path) -> Iterator[Path]:
    """Every finished stage output ``<root>/<stage>/<key>/`` (temporary folders left out)."""
    for stage in STAGE_VERSIONS:
        d = root / stage
        if d.is_dir():
            yield from sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _store_refs(root: Path) -> set[str]:
    """Stage keys the stores' rows name (eval, model, data, diagnostics keys, and the outputs
    their ``artifacts`` paths are in: a diagnostics row's ``diagnostics.json``)."""
    keys: set[str] = set()
    for name in STORES:
        store = root / name
        if not store.is_file():
            if store.exists() or store.is_symlink():  # a folder, a broken link: unreadable
                raise ValueError(
                    f"{store} exists but is not a readable file, so what its rows refer to is "
                    "unknown; gc removes nothing until it is (restore it, or remove it if the "
                    "run has no rows)"
                )
            continue
        lines = store.read_text(errors="replace").split("\n")
        for num, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                if num == len(lines):  # the last line, without its newline: a torn write
                    continue
                raise ValueError(
                    f"{store}, line {num}: not a JSON object, so what it refers to is unknown; fix "
                    "or remove the line first (gc keeps every output a store row refers to)"
                )
            if isinstance(row, dict):
                keys.update(str(row[k]) for k in ("eval_key", "model_key", "data_key", "key",
                                                  "row_key") if row.get(k))  # fmt: skip
                artifacts = row.get("artifacts")
                for path in artifacts.values() if isinstance(artifacts, dict) else ():
                    parts = Path(str(path)).parts
                    keys.update(parts[i + 1] for i, part in enumerate(parts[:-1])
                                if part in STAGE_VERSIONS)  # fmt: skip
    return keys


def unreferenced(root: Path) -> tuple[list[Path], int]:
    """The stage outputs nothing kept refers to, and the number of old outputs kept unknown:
    the whole closure at once (an output only an unreferenced one refers to is unreferenced
    too; battery 15, F3: each `gc --yes` peeled one more layer)."""
    gone: set[Path] = set()
    while True:
        loose, unknown = _unreferenced(root, gone)
        if not loose:
            return sorted(gone), unknown
        gone |= set(loose)


def _unreferenced(root: Path, gone: set[Path]) -> tuple[list[Path], int]:
    """The stage outputs that no store row and no output outside ``gone`` refers to."""
    outputs = [o for o in stage_outputs(root) if o not in gone]
    refs = _store_refs(root)
    referenced: set[str] = set()
    unknown = 0
    for out in outputs:
        try:
            record = json.loads((out / KEY_FILE).read_text())
        except (OSError, ValueError):
            record = None
        if (not isinstance(record, dict) or record.get("stage") != out.parent.name
                or record.get("key") != out.name or not (out / MANIFEST).is_file()):  # fmt: skip
            # not an output this cache wrote where it lies (an older one, or a user's folder):
            # never removed
            unknown += 1
            referenced.add(out.relative_to(root).as_posix())
            continue
        for p in record.get("inputs") or []:
            parts = Path(p).parts
            if len(parts) >= 2 and not Path(p).is_absolute():
                referenced.add("/".join(parts[:2]))
            else:
                referenced.add(str(p))
    out_list = [
        o for o in outputs
        if o.name not in refs and o.relative_to(root).as_posix() not in referenced
        and str(o) not in referenced
    ]  # fmt: skip
    return out_list, unknown


def _ends_torn(store: Path) -> bool:
    """Whether ``store``'s last line is an unfinished write (no newline, not a JSON object)."""
    try:
        data = store.read_bytes()
    except OSError:
        return False
    if not data or data.endswith(b"\n"):
        return False
    try:
        return not isinstance(json.loads(data.rsplit(b"\n", 1)[-1]), dict)
    except ValueError:
        return True


def _store_problems(root: Path) -> list[str]:
    """The lines of the run's stores whose rows fail their checks (an edited row's digest)."""
    from hhh_bench.tracking.store import StoreError, read_diagnostics, scan_results

    out = []
    results = root / "results.jsonl"
    if results.is_file():
        for skipped in scan_results(results, skip_invalid=True).skipped:
            out.append(f"{results}, line {skipped.line}: {skipped.reason}")
    try:
        read_diagnostics(root / "diagnostics.jsonl")
    except (StoreError, ValueError) as e:
        out.append(str(e))
    return out


def _is_run_root(root: Path) -> bool:
    """A run's root: it holds a results store, or a stage folder (``data/``, ``merge/``, ...)
    whose entries carry a cache key (`hhh-bench cache verify` on its parent, or on a stage
    folder, said "0 stage output(s), 0 differ" and exit 0)."""
    from hhh_bench.core.stagecache import STAGE_VERSIONS

    if (root / "results.jsonl").exists() or (root / "diagnostics.jsonl").exists():
        return True
    for stage in STAGE_VERSIONS:
        folder = root / stage
        if folder.is_dir() and any((o / KEY_FILE).is_file() for o in folder.iterdir()):
            return True
    return False


def cmd_verify(root: Path, quick: bool) -> int:
    outputs = list(stage_outputs(root))
    cache = root_hash_cache(root)
    bad = files = 0
    for out in outputs:
        where = misplaced(out, out.parent.name, out.name)  # moved, copied or linked here
        v = verify(out, full=not quick, cache=cache)
        files += len(v.manifest.files)
        for problem in ([where] if where else []) + v.problems:
            print(f"MISMATCH {out}: {problem}")
        bad += bool(v.problems or where)
    for problem in _store_problems(root):
        print(f"MISMATCH {problem}")
        bad += 1
    how = "stat records checked, changed files re-hashed" if quick else "every file re-hashed"
    print(f"cache verify {root}: {len(outputs)} stage output(s), {files} file(s) ({how}): "
          f"{bad} differ")  # fmt: skip
    return 1 if bad else 0


def cmd_gc(root: Path, yes: bool) -> int:
    from hhh_bench.core.stagecache import runs_using

    active = runs_using(root)
    if yes and active:  # its new outputs are referenced by no row yet: they would go
        raise ValueError(
            f"a run is using {root} (process {', '.join(map(str, active))}): its outputs not yet "
            "evaluated would look unreferenced; run `cache gc --yes` after it ends"
        )
    loose, unknown = unreferenced(root)
    torn = [str(root / n) for n in STORES if _ends_torn(root / n)]
    if torn and loose:  # battery 16, B4: the output its row referred to went with the others
        if yes:
            raise ValueError(
                f"{torn[0]} ends in a torn line (a write cut short by a crash), whose row may "
                "refer to one of the outputs that would go; run any stage of this root first "
                "(the next write sets the fragment aside, in <store>.torn) or repair the line, "
                "then gc"
            )
        print(f"note: {torn[0]} ends in a torn line: an output it refers to may be listed below")
    store = root / "results.jsonl"
    no_rows = not store.exists() or (store.is_file() and not store.read_bytes().strip())
    if no_rows and loose:  # missing, or empty (battery 17: every output went with an empty one)
        if yes:
            raise ValueError(  # battery 15, F3: every evaluation went, unsaid
                f"{root} has no results.jsonl rows: every evaluation, and every model only an "
                f"evaluation refers to ({len(loose)} stage output(s)), would count as "
                "unreferenced and be removed; restore the store first (or remove folders by hand)"
            )
        print(f"note: {root} has no results.jsonl rows: no evaluation is referenced by a row")
    for o in loose:
        print(("removed " if yes else "unreferenced ") + str(o))
        if yes:
            shutil.rmtree(o)
    # what a killed run left (bat17, U2): the next run sweeps only the stage folder it writes in
    stale = [t for stage in STAGE_VERSIONS for t in stale_temporaries(root / stage)]
    for t in stale:
        print(("removed " if yes else "stale temporary ") + str(t))
        if yes:
            shutil.rmtree(t, ignore_errors=True)
    if stale:
        print(f"cache gc {root}: {len(stale)} temporary folder(s) of killed runs "
              + ("removed" if yes else "(remove with --yes)"))  # fmt: skip
    note = (f"; {unknown} folder(s) kept that are not outputs this cache wrote there (no "
            f"{KEY_FILE} naming their stage and key, or no {MANIFEST}: an older hhh-bench's, or "
            "not hhh-bench's)" if unknown else "")  # fmt: skip
    verb = "removed" if yes else "nothing refers to (remove with --yes)"
    print(f"cache gc {root}: {len(loose)} stage output(s) {verb}{note}")
    return 0


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="hhh-bench cache",
        description="Check or clean a run root's stage cache (docs/caching.md).",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="re-hash every cached output and list what differs")
    v.add_argument("root", nargs="?", default="runs/default", help="the run's root")
    v.add_argument("--quick", action="store_true", help="re-hash only files whose stat changed")
    g = sub.add_parser("gc", help="list (--yes: remove) outputs nothing refers to")
    g.add_argument("root", nargs="?", default="runs/default", help="the run's root")
    g.add_argument("--yes", action="store_true", help="remove them")
    args = ap.parse_args(list(argv))
    root = Path(args.root)
    if not root.is_dir():
        print(
            f"hhh-bench cache: error: {root} is not a folder (give a run's root)", file=sys.stderr
        )
        return 2
    if not _is_run_root(root):
        below = sorted({str(p.parent) for p in root.glob("*/results.jsonl")})
        hint = f"; run roots below it: {', '.join(below[:3])}" if below else ""
        print(
            f"hhh-bench cache: error: {root} is not a run's root (no results.jsonl and no stage "
            f"folder such as data/ or merge/ holding cached outputs){hint}",
            file=sys.stderr,
        )
        return 2
    try:
        return cmd_verify(root, args.quick) if args.cmd == "verify" else cmd_gc(root, args.yes)
    except ValueError as e:
        print(f"hhh-bench cache: error: {e}", file=sys.stderr)
        return 2
