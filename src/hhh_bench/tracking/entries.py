"""The report's statistics: result rows -> entries, the numbers every other part of the report
draws from.

An :class:`Entry` is one configuration (:func:`configuration`: everything that says what the
model is, except the seed) aggregated over its seeds: mean and std per score, the standard error
over items when there is one seed, the change from the base. :func:`table_entries` picks the
main table's entries (the configuration the pipeline chose on the selection split, per family),
:func:`paired_marks` runs the paired tests over items behind the table's marks
(:mod:`hhh_bench.tracking.paired`), :func:`conflict_matrix` and :func:`pareto_front` give the
figures' numbers, :func:`by_setup` keeps rows of different evaluation setups apart, and
:func:`summary_metrics` the scalars the W&B run's summary holds.

Nothing here renders or writes: the tables (:mod:`hhh_bench.tracking.tables`), the figures
(:mod:`hhh_bench.tracking.plots`) and the Markdown sections (:mod:`hhh_bench.tracking.sections`)
read these entries; :mod:`hhh_bench.tracking.answer` compares two of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hhh_bench.core.scoring import DIMENSIONS
from hhh_bench.tracking.paired import eval_dir_missing, paired_test_groups
from hhh_bench.tracking.store import setup_key

GROUPS: tuple[tuple[str, str], ...] = (
    ("base", "Base"),
    ("oracle", "Oracle"),
    ("specialist", "Specialists"),
    ("mixture", "Data mixture"),
    ("merge", "Model merging"),
    ("external", "Given models (+eval.model)"),
)

COLUMNS: tuple[tuple[str, str], ...] = (
    ("helpful", "Helpful"),
    ("honest", "Honest"),
    ("harmless", "Harmless"),
    ("average", "Avg"),
    ("min", "Min"),
)


def family_of(row: Mapping[str, Any]) -> str:
    """The family a row belongs to: its ``family`` field, else one derived from its kind."""
    if row.get("family"):
        return str(row["family"])
    kind = row.get("kind")
    if kind == "base":
        return "Base"
    if kind == "oracle":
        return "Oracle"
    if kind == "specialist":
        dims = trained_dimensions(row)
        return f"Specialist: {'+'.join(dims)}" if dims else str(row["name"])
    if kind == "mixture":
        return f"Mixture: {row.get('mix_strategy') or row.get('method') or row['name']}"
    if kind == "merge":
        return f"Merge: {row.get('method') or row['name']}"
    if kind == "external":  # a model given by its folder or hub id: no method known
        return f"Given: {row['name']}"
    return str(row.get("name"))


def trained_dimensions(row: Mapping[str, Any]) -> list[str]:
    """The dimensions a model was trained on: ``train_dimensions``, else the one dimension word
    its name contains (``dpo_helpful``), else none."""
    dims = row.get("train_dimensions")
    if dims:
        return [d for d in DIMENSIONS if d in dims]
    found = [d for d in DIMENSIONS if d in str(row.get("name", "")).lower()]
    return found if len(found) == 1 else []


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    mu = sum(values) / len(values)
    if len(values) < 2:
        return mu, None
    return mu, math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Entry:
    """One configuration (rows of one :func:`configuration` key) aggregated over its seeds."""

    kind: str
    family: str
    name: str
    rows: list[dict[str, Any]]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)
    delta: dict[str, float | None] = field(default_factory=dict)
    n_configs: int = 1
    selected_on: str | None = None
    se: dict[str, float | None] = field(default_factory=dict)  # one seed: the row's item stderr
    base_seeds: tuple[str, ...] | None = None  # the seeds its delta's base mean is over
    numbered: str | None = None  # a ``name [2]``: what tells it from the first of its name

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def seeds(self) -> tuple[str, ...]:
        """The seeds its rows are of (as text, sorted)."""
        return tuple(sorted({str(r.get("seed")) for r in self.rows}))

    @property
    def other_seeds(self) -> bool:
        """Whether its change from the base compares its mean with a base mean over another
        set of seeds (a base row missing on a seed of it, or a base of more seeds)."""
        return self.base_seeds is not None and self.kind != "base" and self.seeds != self.base_seeds

    @property
    def label(self) -> str:
        if self.n_configs > 1:
            return f"{self.name} (best of {self.n_configs} on {self.selected_on})"
        return self.name


CONFIG_FIELDS = ("kind", "name", "family", "method", "mix_strategy", "noise_rate")
"""Fields two rows must share to be seeds of one configuration (with ``train_dimensions`` and,
unless the rows carry the pipeline's choice, ``params``: :func:`configuration`)."""


def configuration(row: Mapping[str, Any]) -> str:
    """The key of a row's configuration: everything that says what the model is, except the
    seed. Rows that differ in it are never pooled as seeds (a sweep's ``scaling=0.5`` and
    ``scaling=1.0`` are two rows of the table, not one with a ± between them). A row that
    carries the pipeline's choice on the selection split (``extra.selected_on``) is its family's
    chosen configuration of that seed: such rows pool over seeds whatever knobs each seed chose
    (the all-models table says "varies by seed")."""
    key: dict[str, Any] = {k: row.get(k) for k in CONFIG_FIELDS}
    # no noise recorded (a stage=eval row) is no noise: not a difference to blame (battery 14, F8)
    key["noise_rate"] = row.get("noise_rate") or 0.0
    key["train_dimensions"] = sorted(str(d) for d in row.get("train_dimensions") or [])
    if row.get("world_key"):  # another world, another selection split: never pooled as seeds
        key["world"] = row["world_key"]
    if (row.get("extra") or {}).get("selected_on"):
        key["selected"] = True
        # chosen among another candidate set (a run with another grid into the same root) is
        # another configuration (battery 14, F5: "best of 6" pooled with a run's "best of 3")
        key["n_configs"] = (row.get("extra") or {}).get("n_configs")
    else:
        key["params"] = row.get("params") or {}
    return json.dumps(key, sort_keys=True, default=str)


def superseded(
    rows: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(kept, dropped)``: a row is dropped when a later row (by ``created_at``, then store
    order) has the same configuration (:func:`configuration`), seed, split, data, evaluation
    setup and run-config hash: the same run evaluated again, its model now another (a code edit
    recomputed it). Rows without a config hash are all kept. The report says how many it
    dropped; rows that differ in anything else stay rows of their own (``ties [2]``)."""

    def ident(r: Mapping[str, Any]) -> str | None:
        if not r.get("config_hash"):
            return None
        return json.dumps([configuration(r), r.get("seed"), r.get("split"), r.get("data_key"),
                           setup_key(r), r.get("config_hash")], sort_keys=True, default=str)  # fmt: skip

    order = sorted(range(len(rows)), key=lambda i: (str(rows[i].get("created_at") or ""), i))
    last: dict[str, int] = {}
    for i in order:
        key = ident(rows[i])
        if key is not None:
            last[key] = i
    kept, dropped = [], []
    for i, r in enumerate(rows):
        key = ident(r)
        (kept if key is None or last[key] == i else dropped).append(dict(r))
    return kept, dropped


def _split_repeated_seeds(rs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows of one configuration, split where a seed repeats (rows of the same seed that differ
    in something else, say the data): each row joins the first part without its seed, in file
    order, so that each part holds a seed once."""
    parts: list[list[dict[str, Any]]] = []
    for r in rs:
        part = next((p for p in parts if all(x.get("seed") != r.get("seed") for x in p)), None)
        if part is None:
            parts.append([r])
        else:
            part.append(r)
    return parts


def _distinct_names(groups: list[tuple[str, str, list[dict[str, Any]]]]) -> list[str]:
    """Each group's name, made distinct where one kind and name holds several configurations:
    the name plus the knobs that tell them apart (``ties [scaling=0.5]``), else the first one
    plain and the others numbered (``ties [2]``: the same knobs, another data or model)."""
    labels: dict[tuple[str, str], list[str]] = {}
    for kind, name, rs in groups:
        params = {params_text(r) for r in rs}
        chosen = bool((rs[0].get("extra") or {}).get("selected_on"))
        labels.setdefault((kind, name), []).append(
            params.pop() if len(params) == 1 and not chosen else ""
        )
    names, seen, used = [], set(), dict.fromkeys(labels, 0)
    for kind, name, _ in groups:
        mine = labels[(kind, name)]
        i = used[(kind, name)]
        used[(kind, name)] += 1
        label = name
        if len(mine) > 1 and mine[i] and mine.count(mine[i]) == 1:
            label = f"{name} [{mine[i]}]"
        n = 2
        while (kind, label) in seen:
            label, n = f"{name} [{n}]", n + 1
        seen.add((kind, label))
        names.append(label)
    return names


def _what_differs(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    """What tells two configurations of one name and knobs apart (for a ``name [2]``): the
    fields of :func:`configuration` they differ in, else (a seed evaluated twice) the rows'
    data, model or run config."""
    ka, kb = json.loads(configuration(a[0])), json.loads(configuration(b[0]))
    fields = sorted(k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k))
    if not fields:
        fields = [f for f in ("data_key", "model_key", "config_hash", "world_key")
                  if {str(r.get(f)) for r in a} != {str(r.get(f)) for r in b}]  # fmt: skip
    dims_a, dims_b = (sorted({str(d) for r in x for d in r.get("train_dimensions") or []})
                      for x in (a, b))  # fmt: skip
    if "train_dimensions" in fields:  # what was merged or trained (battery 12, F3)
        fields[fields.index("train_dimensions")] = (
            f"its models' dimensions ({', '.join(dims_b) or 'none recorded'} vs "
            f"{', '.join(dims_a) or 'none recorded'})"
        )
    names = {"world": "world (world_key)", "selected": "a recorded choice (extra.selected_on)",
             "n_configs": "the candidates it was chosen from (extra.n_configs: another grid)",
             "data_key": "data (data_key: another data stage, another world or item set)"}  # fmt: skip
    what = ", ".join(names.get(f, f) for f in fields) or "rows of the same seed"
    if fields == ["config_hash"]:  # name the settings (battery 12, F3), where the rows say them
        settings = _config_difference(a[0], b[0])
        what = f"the evaluation's settings: {settings}" if settings else what
    return f"differs from the first {b[0].get('name')!s} in {what}"


def _config_difference(a: Mapping[str, Any], b: Mapping[str, Any], most: int = 3) -> str:
    """The ``eval.*`` settings two rows' evaluations were run with that differ (``eval.batch_size
    64 vs auto``), from each eval folder's ``provenance.json``; empty when either is unreadable."""

    def flat(obj: Any, prefix: str) -> dict[str, Any]:
        if isinstance(obj, Mapping):
            return {
                k: v for key, val in obj.items() for k, v in flat(val, f"{prefix}.{key}").items()
            }
        return {prefix: obj}

    configs = []
    for row in (a, b):
        eval_dir = (row.get("artifacts") or {}).get("eval_dir")
        try:
            configs.append(
                json.loads((Path(str(eval_dir)) / "provenance.json").read_text())["config"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            return ""
    fa, fb = flat(configs[0], "eval"), flat(configs[1], "eval")
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
    shown = [f"{k} {fa.get(k)!r} vs {fb.get(k)!r}" for k in keys[:most]]
    return "; ".join(shown) + (f" (and {len(keys) - most} more)" if len(keys) > most else "")


def params_text(row: Mapping[str, Any]) -> str:
    p = row.get("params") or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(p.items())) or "-"


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """Group rows into configurations (:func:`configuration`; a seed never twice in one) with
    mean and std per score. An entry's name is the rows' name, with the knobs that tell it
    apart when one name holds several configurations (``ties [scaling=0.5]``)."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_config.setdefault(configuration(r), []).append(dict(r))
    groups = [
        (part[0]["kind"], str(part[0]["name"]), part)
        for rs in by_config.values()
        for part in _split_repeated_seeds(rs)
    ]
    extra = list(extra_columns(rows))
    entries = []
    first: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (kind, plain, rs), name in zip(groups, _distinct_names(groups), strict=True):
        e = Entry(kind=kind, family=family_of(rs[0]), name=name, rows=rs)
        first.setdefault((kind, plain), rs)
        if name != plain and name.removeprefix(plain + " [").removesuffix("]").isdigit():
            e.numbered = _what_differs(first[(kind, plain)], rs)
        for col, _ in COLUMNS:
            e.mean[col], e.std[col] = _mean_std([float(r[col]) for r in rs])
        for col in extra:  # extra columns (over-refusal, capability) where every seed has one
            if all(r.get(col) is not None for r in rs):
                e.mean[col], e.std[col] = _mean_std([float(r[col]) for r in rs])
        if len(rs) == 1:
            e.se = {c: rs[0].get(f"{c}_stderr") for c in e.mean}
        entries.append(e)
    return entries


def base_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """Mean scores of the base rows (over seeds), or None when the store has no base row."""
    base = [r for r in rows if r["kind"] == "base"]
    if not base:
        return None
    return {col: _mean_std([float(r[col]) for r in base])[0] for col, _ in COLUMNS}


def base_seeds(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...] | None:
    """The seeds of the base rows (as text, sorted), None without a base row."""
    seeds = {str(r.get("seed")) for r in rows if r["kind"] == "base"}
    return tuple(sorted(seeds)) if seeds else None


def own_base_rows(
    rows: Sequence[Mapping[str, Any]], base_rows: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The base rows of the same data as ``rows`` (their ``data_key``: the same world and item
    sets), when the store holds base rows of other data too; else every base row (battery 12,
    F14: a second world's base in the store moved every change from the base to the mean of
    both worlds' bases)."""
    keys = data_keys(rows)
    own = [b for b in base_rows if b.get("data_key") in keys]
    return own or list(base_rows)


def data_keys(rows: Sequence[Mapping[str, Any]]) -> set[Any]:
    """The data stages (``data_key``) ``rows`` were evaluated on: what a row and its base must
    share (:func:`own_base_rows`, :func:`_base_of`)."""
    return {r.get("data_key") for r in rows} - {None}


def with_deltas(
    entries: list[Entry],
    base: Mapping[str, float] | None,
    seeds: tuple[str, ...] | None = None,
    base_rows: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Deltas of the means from the base's means, and the largest drop of a dimension's mean
    below the base's (None without a base); ``seeds``: the base mean's seeds, kept on each
    entry (:attr:`Entry.other_seeds`: a delta over different seed sets, marked in the tables).
    ``base_rows``: each entry's base is the mean of the base rows of its own data
    (:func:`own_base_rows`) instead of ``base``."""
    for e in entries:
        b, s = base, seeds
        if base_rows and base is not None:
            own = own_base_rows(e.rows, base_rows)
            b = {col: _mean_std([float(r[col]) for r in own])[0] for col, _ in COLUMNS}
            s = tuple(sorted({str(r.get("seed")) for r in own}))
        e.base_seeds = s if b is not None else None
        for col, _ in COLUMNS:
            e.delta[col] = None if b is None or e.kind == "base" else e.mean[col] - b[col]
        e.delta["max_drop"] = (
            None if b is None else max(0.0, *(b[d] - e.mean[d] for d in DIMENSIONS))
        )


def table_entries(report_rows: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """The main table's entries, in table order. The report chooses nothing: a family shows the
    configuration the pipeline chose on the selection split (rows whose ``extra.selected_on``
    is set, with ``n_configs`` and the split), or, when no row of it carries a choice, every
    configuration it holds, each as its own row. Deltas against the base of ``report_rows``."""
    entries = aggregate(report_rows)
    by_family: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        by_family.setdefault((e.kind, e.family), []).append(e)
    shown: list[Entry] = []
    for kind, _ in GROUPS:
        for (k, _fam), members in by_family.items():
            if k != kind:
                continue
            chosen = [m for m in members if _choice(m)]
            for e in chosen or members:
                choice = _choice(e)
                if choice:
                    e.selected_on = str(choice["selected_on"])
                    e.n_configs = int(choice.get("n_configs") or 1)
                shown.append(e)
    with_deltas(shown, base_means(report_rows), base_seeds(report_rows),
                [r for r in report_rows if r["kind"] == "base"])  # fmt: skip
    return shown


def _choice(e: Entry) -> dict[str, Any] | None:
    """The pipeline's selection record of an entry's rows (``extra.selected_on``...), if any."""
    for r in e.rows:
        extra = r.get("extra") or {}
        if extra.get("selected_on"):
            return extra
    return None


def extra_columns(
    rows: Sequence[Mapping[str, Any]], table: str | None = None
) -> dict[str, dict[str, Any]]:
    """The extra report columns the rows carry (``extra_columns``: over-refusal, capability),
    in first-seen order: ``{name: {"task", "metric", "higher_is_better", "table"}}``; with
    ``table`` (``main`` | ``diagnostics``), those of that report table only (a column without
    ``table``, from a row written before it existed, is a main-table column)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        for name, spec in (r.get("extra_columns") or {}).items():
            out.setdefault(name, dict(spec))
    if table is None:
        return out
    return {k: v for k, v in out.items() if v.get("table", "main") == table}


SETUP_SETTINGS = ("limit", "num_fewshot", "apply_chat_template")
"""The harness settings of a row's evaluation setup (``row["setup"]``) a config says."""


def config_setup(ecfg: Mapping[str, Any], specs: Sequence[Any]) -> dict[str, Any]:
    """The evaluation setup a config scores with, as far as a config says it (the task
    versions are the harness's): its harness settings, backend and scored tasks (``specs``:
    :class:`~hhh_bench.core.scoring.TaskSpec`)."""
    return {
        **{k: ecfg.get(k) for k in SETUP_SETTINGS},
        "backend": ecfg.get("backend") or "hf",
        "tasks": sorted((s.name, s.dimension, float(s.weight), s.metric) for s in specs),
    }


def setup_matches(row: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    """Whether ``row`` was evaluated with the setup ``want`` (:func:`config_setup`); a row
    without a recorded setup (an old store) matches on its tasks alone."""
    setup = row.get("setup") if isinstance(row.get("setup"), Mapping) else None
    specs = row.get("task_specs") or []
    tasks = sorted((str(s.get("name")), str(s.get("dimension")), float(s.get("weight", 0)),
                    str(s.get("metric"))) for s in specs if isinstance(s, Mapping))  # fmt: skip
    if tasks != [tuple(t) for t in want.get("tasks") or []]:
        return False
    if setup is None:
        return True
    if any(setup.get(k) != want.get(k) for k in SETUP_SETTINGS):
        return False
    return str(setup.get("backend") or "hf") == str(want.get("backend") or "hf")


def by_setup(rows: Sequence[Mapping[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows partitioned by evaluation setup (:func:`hhh_bench.tracking.store.setup_key`), the
    setup of the most recently written row first, then the others from newest to oldest."""
    groups: dict[str, list[dict[str, Any]]] = {}
    last: dict[str, int] = {}
    for i, r in enumerate(rows):
        k = setup_key(r)
        groups.setdefault(k, []).append(dict(r))
        last[k] = i
    return [groups[k] for k in sorted(groups, key=lambda k: -last[k])]


def conflict_matrix(rows: Sequence[Mapping[str, Any]]) -> list[list[float | None]]:
    """``M[i][j]`` = mean over specialists trained on dimension i alone of (their score on
    dimension j − the base's mean score on j); None where there is no such specialist or no base."""
    base = base_means(rows)
    out: list[list[float | None]] = []
    for di in DIMENSIONS:
        spec = [r for r in rows if r["kind"] == "specialist" and trained_dimensions(r) == [di]]
        row: list[float | None] = []
        for dj in DIMENSIONS:
            if base is None or not spec:
                row.append(None)
            else:
                row.append(sum(float(r[dj]) - base[dj] for r in spec) / len(spec))
        out.append(row)
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points (maximize both coordinates), sorted by the first."""
    front = [
        p
        for p in points
        if not any(q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1]) for q in points)
    ]
    return sorted(set(front))


def paired_marks(
    entries: Sequence[Entry],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    alpha: float = 0.05,
) -> tuple[dict[tuple[str, str], dict[str, str]], dict[str, dict[tuple[str, str], Any]]]:
    """Paired tests over items behind the main table's marks.

    For every column (the dimensions, the average and the extra columns) and every compared
    entry (all but the oracle): the test against the base (``†`` on the delta when p ≥ alpha)
    and against the column's best entry (``≈`` when p ≥ alpha: the data cannot tell it from the
    best). Entries over several seeds are paired by seed
    (:func:`hhh_bench.tracking.paired.paired_test_groups`). Entries without per-item values get
    no test; where a row of the pair names an eval folder that is missing from the root, the
    cell is marked ``?`` (:data:`NO_TEST`): an unmarked delta reads as resolved, which a test
    that could not run does not say (battery 12, F11).

    Returns:
        ``(marks, tests)``: marks per ``(kind, name)`` and column (``delta_<col>`` for the
        delta), and ``{"base": {(name, col): PairedTest}, "best": {...}}``.
    """
    extra = dict(extra or {})
    cols = [*(c for c, _ in COLUMNS if c != "min"), *extra]
    bases = [e for e in entries if e.kind == "base"]
    compared = [e for e in entries if e.kind != "oracle"]
    marks: dict[tuple[str, str], dict[str, str]] = {}
    tests: dict[str, dict[tuple[str, str], Any]] = {"base": {}, "best": {}}
    for col in cols:
        have = [e for e in compared if col in e.mean]
        if not have:
            continue
        higher = extra.get(col, {}).get("higher_is_better", True)
        best = (max if higher is not False else min)(have, key=lambda e: e.mean[col])
        for e in have:
            mk = marks.setdefault((e.kind, e.name), {})
            base = _base_of(e, bases)
            if base is not None and e is not base and col in base.mean:
                t = paired_test_groups(e.rows, base.rows, col, alpha=alpha)
                if t is not None:
                    tests["base"][(e.name, col)] = t
                    if not t.resolved:
                        mk[f"delta_{col}"] = "†"
                elif _items_missing(e, base):
                    mk[f"delta_{col}"] = NO_TEST
            if e is not best and higher is not None:
                t = paired_test_groups(e.rows, best.rows, col, alpha=alpha)
                if t is not None:
                    tests["best"][(e.name, col)] = t
                    if not t.resolved:
                        mk[col] = " ≈"
                elif _items_missing(e, best):
                    mk[col] = f" {NO_TEST}"
    return marks, tests


def _base_of(e: Entry, bases: Sequence[Entry]) -> Entry | None:
    """The base entry ``e`` is tested against: the one of its own data (``data_key``) where
    the store holds several (battery 12, F14), else the first."""
    keys = data_keys(e.rows)
    return next((b for b in bases if keys & data_keys(b.rows)), bases[0] if bases else None)


NO_TEST = "?"
"""The mark of a cell whose paired test could not run: a row's eval folder is missing."""


def untested(marks: Mapping[str, Mapping[str, str]]) -> bool:
    """Whether a cell of ``marks`` (:func:`paired_marks`) is marked :data:`NO_TEST`: the table's
    legend and the console say why."""
    return any(NO_TEST in m for mk in marks.values() for m in mk.values())


def _items_missing(*entries: Entry) -> bool:
    """Whether a row of ``entries`` names an eval folder that is not there (deleted, or a root
    copied without it): its per-item values, and so its paired tests, are gone."""
    return any(eval_dir_missing(r) for e in entries for r in e.rows)


def summary_metrics(
    entries: Sequence[Entry], select_by: str, answer: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The scalars of a report's W&B summary: every main-table family's scores
    (``"<family>/<column>"``), the best compared family by ``select_by`` (``best/family``,
    ``best/name``, ``best/<select_by>``; the base and the oracle are not compared), and the
    mix-or-merge answer's difference, interval and verdict (``mix_or_merge/...``) when there is
    one (:func:`hhh_bench.tracking.answer.compare`)."""
    summary: dict[str, Any] = {}
    for e in entries:
        for col, _ in COLUMNS:
            summary[f"{e.family}/{col}"] = e.mean[col]
    compared = [e for e in entries if e.kind not in ("oracle", "base")]
    if compared:
        best = max(compared, key=lambda e: e.mean[select_by])
        summary["best/family"] = best.family
        summary["best/name"] = best.name
        summary[f"best/{select_by}"] = best.mean[select_by]
    if answer:
        for k in ("diff", "ci_low", "ci_high", "verdict"):
            summary[f"mix_or_merge/{k}"] = answer[k]
    return summary
