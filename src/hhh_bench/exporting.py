"""``hhh-bench export ROOT``: every evaluated item of a results store, for sharing or judging
again, and :func:`rejudge`, which scores exported answers with other judges without
generating them again.

One concept: the per-item record of an evaluation, out of the stage cache.

For every row of ``<ROOT>/results.jsonl`` (the latest per row key), its eval output is read
(checked against its checksums first: a changed file is named, never exported) and each item
becomes one record: the row's identity (``row_key``, experiment, model name, kind, method and
knobs, seed, split, suite, ``eval_key``), the task, ``doc_id``, the per-item values the
task's metric averages, and for a generation task the prompt, the model's answer, the
document's fields, the judge that read it (role, model, revision, protocol) and its raw answer
(``judge_answer``, ``empty``, ``unparsed``). JSONL keeps nested fields as they are; Parquet
(pyarrow) stores each nested field as a JSON string. docs/reproduce.md, "Exporting items".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROW_FIELDS = ("row_key", "experiment", "name", "kind", "method", "params", "seed", "split",
              "suite", "eval_key")  # fmt: skip
"""The fields of a results row every exported item repeats."""
NESTED = ("params", "doc", "judge")
"""Fields Parquet stores as JSON strings."""
FORMATS = ("jsonl", "parquet")


def export_items(root: str | Path, *, skip_invalid: bool = False) -> Iterator[dict[str, Any]]:
    """The per-item records of every row of ``<root>/results.jsonl``, in store order, task by
    task, item by item (see the module's docstring). A row whose eval output is gone, or whose
    files differ from its checksums, raises ``ValueError`` naming the row and the folder."""
    from hhh_bench.core.content import ContentMismatch, read_checked
    from hhh_bench.core.items import GENERATIONS_FILE, ITEMS_FILE, read_jsonl
    from hhh_bench.core.stagecache import relocated
    from hhh_bench.tracking.store import read_results

    store = Path(root) / "results.jsonl"
    if not store.is_file():
        raise ValueError(f"{store}: no results store here (is {root} a run's root?)")
    for row in read_results(store, skip_invalid=skip_invalid):
        eval_dir = Path(relocated((row.get("artifacts") or {}).get("eval_dir") or "", root))
        # not resolved: an eval folder linked to another disk is still this root's
        here = Path(os.path.abspath(root))
        if eval_dir.is_dir() and here not in Path(os.path.abspath(eval_dir)).parents:
            raise ValueError(  # a copied root without its eval folders (battery 9)
                f"row {row['row_key']!r} ({row['name']}, {row['split']}): its eval output "
                f"{eval_dir} is not under {root} (this root has no {eval_dir.parent.name}/"
                f"{eval_dir.name}): the export would read another root's files; copy that "
                "folder here too, or export from the root it is in"
            )
        if not eval_dir.is_dir():  # deleted, or a root copied without it (never read there)
            raise ValueError(
                f"row {row['row_key']!r} ({row['name']}, {row['split']}): its eval output "
                f"{eval_dir} is missing from this root (deleted, or a copy made without it); copy "
                "that folder here from the root the row was written in, or rerun the evaluation "
                "(the same command recomputes it)"
            )
        try:
            items = (
                read_jsonl(read_checked(eval_dir / ITEMS_FILE))
                if (eval_dir / ITEMS_FILE).is_file()
                else {}
            )
            gens = (
                read_jsonl(read_checked(eval_dir / GENERATIONS_FILE))
                if (eval_dir / GENERATIONS_FILE).is_file()
                else {}
            )
        except ContentMismatch as e:
            raise ValueError(f"row {row['row_key']!r}: {e}") from None
        if not items and not gens:
            raise ValueError(
                f"row {row['row_key']!r} ({row['name']}, {row['split']}): {eval_dir} holds no "
                "per-item values (evaluated with eval.log_samples=false): nothing to export"
            )
        about = {k: row.get(k) for k in ROW_FIELDS}
        judges = row.get("judges") or {}
        for task in sorted(set(items) | set(gens)):
            by_doc = {g["doc_id"]: g for g in gens.get(task, [])}
            seen = set()
            for item in items.get(task) or [{"doc_id": g["doc_id"]} for g in gens.get(task, [])]:
                gen = by_doc.get(item["doc_id"], {})
                seen.add(item["doc_id"])
                yield _record(about, task, item, gen, judges.get(task))
            for doc_id, gen in by_doc.items():  # a generation without per-item values
                if doc_id not in seen:
                    yield _record(about, task, {"doc_id": doc_id}, gen, judges.get(task))


def _record(about: Mapping[str, Any], task: str, item: Mapping[str, Any],
            gen: Mapping[str, Any], judge: Any) -> dict[str, Any]:  # fmt: skip
    values = {k: v for k, v in item.items() if k != "doc_id"}
    return {**about, "task": task, "doc_id": item["doc_id"], "values": values,
            "prompt": gen.get("prompt"), "response": gen.get("response"),
            "context": gen.get("context"), "doc": gen.get("doc"),
            "judge": judge}  # fmt: skip


def write_export(records: Sequence[Mapping[str, Any]], out: str | Path, fmt: str) -> Path:
    """Write ``records`` to ``out`` as ``fmt`` (jsonl | parquet), atomically (a temporary
    file renamed into place: a crash leaves no half file)."""
    out = Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: use one of {list(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r, sort_keys=True, ensure_ascii=False, default=str) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            flat = [{k: (json.dumps(v, sort_keys=True, default=str) if k in NESTED or k == "values"
                         else v) for k, v in r.items()} for r in records]  # fmt: skip
            pq.write_table(pa.Table.from_pylist(flat), tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_export(path: str | Path) -> list[dict[str, Any]]:
    """The records of an export (either format; Parquet's JSON strings decoded)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return [{k: (json.loads(v) if (k in NESTED or k == "values") and isinstance(v, str) else v)
                 for k, v in r.items()} for r in rows]  # fmt: skip
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def rejudge(records: Sequence[Mapping[str, Any]], judges: Mapping[str, Any], *,
            refusal_rule: str = "any", cache: Any = None) -> dict[str, dict[str, dict[str, Any]]]:  # fmt: skip
    """Judge exported answers again: ``{row_key: {task: metrics}}`` for every judged task of
    the records (those whose ``judge`` names a role), with ``judges`` (``eval.judges``' form:
    ``{name: {kind, model, revision, ...}}``, e.g. another guard model) and no generation.
    ``cache``: a judge cache (None: every answer judged afresh)."""
    from hhh_bench.evaluation.judged import judge_generations
    from hhh_bench.evaluation.judges import specs_from_config

    specs = specs_from_config(judges)
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    roles: dict[str, dict[str, str]] = {}
    for r in records:
        judge = r.get("judge") or {}
        if not judge.get("role") or r.get("response") is None:
            continue
        grouped.setdefault(r["row_key"], {}).setdefault(r["task"], []).append(
            {
                "doc_id": r["doc_id"],
                "prompt": r.get("prompt"),
                "response": r["response"],
                "context": r.get("context"),
                "doc": r.get("doc") or {},
            }  # fmt: skip
        )
        roles.setdefault(r["row_key"], {})[r["task"]] = judge["role"]
    out = {}
    for row_key, gens in grouped.items():
        res = judge_generations(gens, roles[row_key], specs, cache=cache, refusal_rule=refusal_rule)
        out[row_key] = res["metrics"]
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="hhh-bench export",
        description="Write every evaluated item of a run's results store (prompts, answers, "
        "the judges' raw answers, per-item scores) to one file, for sharing or judging again "
        "(hhh_bench.exporting.rejudge). docs/reproduce.md, 'Exporting items'.",
    )
    ap.add_argument("root", help="the run's root (holding results.jsonl)")
    ap.add_argument("--format", default="jsonl", choices=FORMATS, help="jsonl (default) | parquet")
    ap.add_argument("--out", help="the file to write (default: <ROOT>/export/items.<format>); "
                    "an existing file is never replaced")  # fmt: skip
    ap.add_argument("--skip-invalid", action="store_true",
                    help="leave out invalid store lines (default: refuse, naming the line)")  # fmt: skip
    args = ap.parse_args(argv)
    root = Path(args.root)
    out = Path(args.out) if args.out else root / "export" / f"items.{args.format}"
    try:
        if not root.is_dir():
            raise ValueError(f"{root}: not a folder (give a run's root, e.g. runs/toy3h)")
        if not (root / "results.jsonl").is_file():  # a stage folder, say: named as such
            raise ValueError(
                f"{root} holds no results.jsonl: not a run's root (give the folder above the "
                "stage folders, e.g. runs/toy3h)"
            )
        if out.exists():
            raise ValueError(f"{out} exists: give another --out, or remove it first")
        other = [f for f in FORMATS if f != args.format and out.suffix == f".{f}"]
        if other:  # x.parquet holding JSON lines would mislead whoever reads it
            raise ValueError(
                f"--out {out} ends in .{other[0]} but --format is {args.format}: give "
                f"--format {other[0]}, or an --out ending in .{args.format}"
            )
        from hhh_bench.core.stagecache import held_by_a_run

        why = held_by_a_run(out)
        if why is not None:  # it would change an output its checksums vouch for
            raise ValueError(f"--out {out} {why}: give a file outside the run's stage folders")
        records = list(export_items(root, skip_invalid=args.skip_invalid))
        write_export(records, out, args.format)
    except (ValueError, OSError) as e:  # the store's advice names the report's key: ours here
        from hhh_bench.tracking.store import SKIP_SWITCH

        text = str(e).replace(SKIP_SWITCH, "--skip-invalid")  # battery 15, F12
        print(f"hhh-bench export: error: {text}", file=sys.stderr)
        return 2
    rows = len({r["row_key"] for r in records})
    print(f"hhh-bench export: {len(records)} item(s) of {rows} row(s) -> {out}")
    return 0
