"""What every source adapter shares: the registry, the drop statistics and row builders.

An *adapter* maps the raw rows of one public dataset family to canonical preference rows
(:mod:`hhh_bench.core.schema`). It is a pure generator function::

    adapt(raw_rows, run, **opts) -> Iterator[row]

registered by name with :func:`register_source`; its own options are keyword-only (what
:func:`adapter_options` lists). ``run`` (a :class:`SourceRun`, made by :func:`run_adapter`)
carries the source name, dimension and split and the :class:`AdapterStats`, and builds the rows:
it reads nothing but ``raw_rows`` and writes nothing but the rows it yields and the counts of
``run``, so it is tested on a handful of hand-written raw rows (``tests/assets/sources/``).

Counting convention (the same for every adapter, so manifests compare across sources):

* ``rows_in``: raw rows read;
* ``rows_out``: preference pairs emitted;
* ``rows_used``: raw rows that appear in at least one emitted pair;
* ``dropped[reason]``: raw rows that appear in no emitted pair, by the reason that stopped them,
  so ``rows_in == rows_used + sum(dropped.values())`` always holds;
* ``skipped[reason]``: finer events inside rows (a completion without a rating, a candidate
  pair that ties, a pair cut by a cap), informative only.

Reasons every adapter may use: ``tie``, ``missing_rating``, ``identical``, ``malformed``; some
add their own (``unpaired``, ``no_contrast``, ``inconsistent``, ``conflict``, ``unsafe_chosen``,
``capped``), each documented on the adapter.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hhh_bench.core.registry import Registry
from hhh_bench.core.schema import Message, PreferenceRow, make_row
from hhh_bench.core.text import normalize_text

TIE = "tie"
MISSING_RATING = "missing_rating"
IDENTICAL = "identical"
MALFORMED = "malformed"
STANDARD_REASONS: tuple[str, ...] = (TIE, MISSING_RATING, IDENTICAL, MALFORMED)


@dataclass
class AdapterStats:
    """Counts of one adapter run; see the module docstring for the exact meaning of each."""

    rows_in: int = 0
    rows_out: int = 0
    rows_used: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str, n: int = 1) -> None:
        """Record ``n`` raw rows that will appear in no pair because of ``reason``."""
        if n:
            self.dropped[reason] += n

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form; the standard reasons are always present (0 when unused)."""
        dropped = {r: 0 for r in STANDARD_REASONS}
        dropped.update(self.dropped)
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_used": self.rows_used,
            "dropped": dict(sorted(dropped.items())),
            "skipped": dict(sorted(self.skipped.items())),
        }


RawRows = Iterable[Mapping[str, Any]]


@dataclass(frozen=True)
class SourceRun:
    """One adapter run: the identity of the rows it makes and the counts it keeps.

    The helpers keep the counting convention of the module docstring: :meth:`rows` counts
    ``rows_in``, :meth:`emit` ``rows_out`` (and ``rows_used`` for a raw row's one pair),
    :meth:`drop` and :meth:`settle` the raw rows that give no pair, :meth:`skip` the finer
    events.
    """

    source: str
    dimension: str
    split: str = "train"
    stats: AdapterStats = field(default_factory=AdapterStats)

    def rows(self, raw_rows: RawRows) -> Iterator[tuple[int, Mapping[str, Any]]]:
        """``enumerate(raw_rows)``, each raw row counted in ``rows_in`` as it is read."""
        for i, raw in enumerate(raw_rows):
            self.stats.rows_in += 1
            yield i, raw

    def group_by_prompt(self, raw_rows: RawRows) -> dict[str, list[tuple[int, Mapping[str, Any]]]]:
        """The raw rows (counted by :meth:`rows`) grouped by their exact ``prompt`` text, in
        order of first appearance, as ``(row index, raw row)``; a row with an empty ``prompt``
        or ``response`` is dropped as ``malformed``."""
        groups: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
        for i, raw in self.rows(raw_rows):
            prompt, response = clean_text(raw.get("prompt")), clean_text(raw.get("response"))
            if prompt is None or response is None:
                self.drop(MALFORMED)
                continue
            groups.setdefault(prompt, []).append((i, raw))
        return groups

    def drop(self, reason: str, n: int = 1) -> None:
        """Record ``n`` raw rows that will appear in no pair because of ``reason``."""
        self.stats.drop(reason, n)

    def skip(self, reason: str) -> None:
        """Record one finer event inside a raw row (``skipped[reason]``; informative only)."""
        self.stats.skipped[reason] += 1

    def settle(
        self,
        indices: Iterable[int],
        used: Collection[int],
        reason: str,
        *,
        got_past: Collection[int] = (),
        then: str = "",
    ) -> None:
        """Close a group of raw rows: those in ``used`` count as used; every other one of
        ``indices`` is dropped for ``reason``, or for ``then`` if it is in ``got_past`` (it
        passed the check ``reason`` stands for and failed a later one)."""
        self.stats.rows_used += len(used)
        for i in indices:
            if i not in used:
                self.drop(then if i in got_past else reason)

    def id(self, index: int, pair: int | None = None) -> str:
        """``<source>/<split>/<row index>[/<pair index>]``."""
        return f"{self.source}/{self.split}/{index}" + (f"/{pair}" if pair is not None else "")

    def emit(
        self,
        prompt: str | Sequence[Message],
        chosen: str,
        rejected: str,
        index: int,
        meta: dict[str, Any] | None = None,
        *,
        pair: int | None = None,
    ) -> PreferenceRow:
        """Count and build one canonical row, with the id :meth:`id` gives.

        ``prompt`` is a user turn's text or messages (copied); ``chosen`` and ``rejected`` become
        single assistant turns. The pair counts in ``rows_out``. Without ``pair`` it is the one
        pair of raw row ``index``, which counts as used too; with ``pair`` it is pair number
        ``pair`` of raw row (or group) ``index``, and the adapter counts the rows it used
        (:meth:`settle`).
        """
        if pair is None:
            self.stats.rows_used += 1
        self.stats.rows_out += 1
        copied = prompt if isinstance(prompt, str) else [dict(m) for m in prompt]
        return make_row(
            copied,  # type: ignore[arg-type]
            chosen,
            rejected,
            self.dimension,
            self.source,
            self.id(index, pair),
            meta,
        )


class Adapter(Protocol):
    """The signature every registered adapter has (its own options are keyword-only)."""

    def __call__(
        self, raw_rows: RawRows, run: SourceRun, **opts: Any
    ) -> Iterator[PreferenceRow]: ...


ADAPTERS: Registry[Callable[..., Iterator[PreferenceRow]]] = Registry("source adapter")


def register_source(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an adapter (the raw-to-canonical mapping of a dataset family) under ``name``.

    The name is what ``adapter:`` in ``conf/source/<source>.yaml`` refers to.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in ADAPTERS and ADAPTERS.get(name) is fn:
            return fn  # the same module imported twice
        return ADAPTERS.add(name, fn)

    return deco


def get_adapter(name: str) -> Callable[..., Iterator[PreferenceRow]]:
    """The adapter registered under ``name``; the error lists the known names."""
    return ADAPTERS.get(name)


def list_adapters() -> list[str]:
    """Names of all registered adapters, sorted."""
    return ADAPTERS.names()


def adapter_options(name: str) -> dict[str, Any]:
    """The adapter's own keyword options and their defaults (what ``adapter_opts`` may set)."""
    sig = inspect.signature(get_adapter(name))
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def run_adapter(
    name: str,
    raw_rows: Iterable[Mapping[str, Any]],
    *,
    source: str,
    dimension: str,
    split: str = "train",
    limit: int | None = None,
    **opts: Any,
) -> tuple[list[PreferenceRow], AdapterStats]:
    """Run adapter ``name`` to completion (or until ``limit`` pairs); return rows and stats.

    Unknown ``opts`` raise a ``TypeError`` naming the adapter and its accepted options.
    """
    fn = get_adapter(name)
    accepted = adapter_options(name)
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise TypeError(
            f"adapter {name!r} (source {source!r}) got unknown option(s) {unknown}; "
            f"accepted adapter_opts: {sorted(accepted)}"
        )
    run = SourceRun(source, dimension, split)
    rows: list[PreferenceRow] = []
    for row in fn(raw_rows, run, **opts):
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows, run.stats


# ----------------------------------------------------------------------------- text helpers


def clean_text(value: Any) -> str | None:
    """``value`` stripped if it is a non-empty string, else ``None``."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def as_rating(value: Any) -> float | None:
    """A numeric rating from an int/float/numeric string; ``None`` for ``"N/A"``, empty, bools."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def speaker_turns(marker: re.Pattern[str], text: str) -> list[tuple[str, str]] | None:
    """The ``(role, text)`` turns of a transcript in which each turn starts with ``marker``, a
    pattern whose one group captures ``Human`` (role ``user``) or ``Assistant``; texts are
    stripped, consecutive turns of one speaker are not joined yet (:func:`merge_turns`).

    ``[]`` when there is no marker at all, ``None`` when text comes before the first one.
    """
    parts = marker.split(text)
    if len(parts) == 1:
        return []
    if parts[0].strip():
        return None
    return [
        ("user" if parts[k] == "Human" else "assistant", parts[k + 1].strip())
        for k in range(1, len(parts) - 1, 2)
    ]


def merge_turns(turns: Sequence[tuple[str, str]]) -> list[Message]:
    """Messages from ``(role, text)`` turns, with consecutive same-role turns joined by a blank
    line (the schema needs alternating roles; raw transcripts sometimes repeat a speaker)."""
    out: list[Message] = []
    for role, text in turns:
        if out and out[-1]["role"] == role:
            out[-1] = {"role": role, "content": out[-1]["content"] + "\n\n" + text}
        else:
            out.append({"role": role, "content": text})
    return out


def same_text(a: str, b: str) -> bool:
    """Whether two responses read the same (:func:`hhh_bench.core.text.normalize_text`: what
    :func:`hhh_bench.core.schema.validate_row` rejects as chosen == rejected), so that an adapter
    drops such a pair as ``identical`` instead of the schema failing the source."""
    return normalize_text(a) == normalize_text(b)
