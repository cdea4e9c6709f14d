"""What every source adapter shares: the registry, the drop statistics and row builders.

An *adapter* maps the raw rows of one public dataset family to canonical preference rows
(:mod:`hhh_bench.data.schema`). It is a pure generator function::

    adapt(raw_rows, *, source, dimension, split="train", stats=None, **opts) -> Iterator[row]

registered by name with :func:`register_source`. It reads nothing but ``raw_rows`` and writes
nothing but the rows it yields and the :class:`AdapterStats` it is given, so it is tested on a
handful of hand-written raw rows (``tests/assets/sources/``).

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
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hhh_bench.data.schema import Message, PreferenceRow
from hhh_bench.registry import Registry

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


class Adapter(Protocol):
    """The signature every registered adapter has."""

    def __call__(
        self,
        raw_rows: Iterable[Mapping[str, Any]],
        *,
        source: str,
        dimension: str,
        split: str = "train",
        stats: AdapterStats | None = None,
        **opts: Any,
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
    common = {"raw_rows", "source", "dimension", "split", "stats"}
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in common
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
    stats = AdapterStats()
    rows: list[PreferenceRow] = []
    for row in fn(raw_rows, source=source, dimension=dimension, split=split, stats=stats, **opts):
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows, stats


# ----------------------------------------------------------------------------- row builders


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


def pair_row(
    prompt: list[Message],
    chosen: str,
    rejected: str,
    *,
    dimension: str,
    source: str,
    id: str,
    meta: dict[str, Any] | None = None,
) -> PreferenceRow:
    """One canonical row (chosen/rejected are single assistant turns)."""
    row: PreferenceRow = {
        "prompt": [dict(m) for m in prompt],  # type: ignore[misc]
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "dimension": dimension,
        "source": source,
        "id": id,
    }
    if meta:
        row["meta"] = meta
    return row


def same_text(a: str, b: str) -> bool:
    """Whether two responses are the same text once surrounding whitespace is ignored (what
    :func:`hhh_bench.data.schema.validate_row` rejects)."""
    return a.strip() == b.strip()


def row_id(source: str, split: str, index: int, pair: int | None = None) -> str:
    """``<source>/<split>/<row index>[/<pair index>]``."""
    return f"{source}/{split}/{index}" + (f"/{pair}" if pair is not None else "")
