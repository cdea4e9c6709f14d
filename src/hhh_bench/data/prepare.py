"""The training set of one train-stage run: read the data stage's preference files, inject the
configured noise, mix several dimensions with a strategy.

* one dimension → a specialist's set: its pairs as they are (after noise);
* several → a mixture: :func:`hhh_bench.data.mixing.mix` under a budget.

Noise comes first (it models mislabelled source data), so a mixture and the specialists see the
same flipped pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hhh_bench.core.schema import PreferenceRow, SchemaError, load_preferences


def read_pref_sets(
    data_dir: str | Path, dimensions: list[str], split: str, required: bool = True
) -> dict[str, list[PreferenceRow]]:
    """Read and validate ``<data_dir>/prefs/<dim>_<split>.jsonl`` for each dimension.

    Raises:
        SchemaError: a malformed row (the message names file, row and id) or a row whose
            ``dimension`` is not the file's.
        FileNotFoundError: a missing file when ``required``.
    """
    out: dict[str, list[PreferenceRow]] = {}
    for dim in dimensions:
        path = Path(data_dir) / "prefs" / f"{dim}_{split}.jsonl"
        if not path.is_file():
            if required:
                raise FileNotFoundError(
                    f"no preference file {path}; the data stage writes prefs/<dimension>_<split>.jsonl "
                    f"for each dimension (is {dim!r} in the data config?)"
                )
            continue
        rows = load_preferences(path)
        for i, r in enumerate(rows):
            if r["dimension"] != dim:
                raise SchemaError(
                    f"{path}: row {i} (id={r['id']!r}) has dimension {r['dimension']!r} in a "
                    f"file of dimension {dim!r}"
                )
        out[dim] = rows
    return out


def noise_for(noise: Mapping[str, Any] | None, dims: list[str]) -> dict[str, Any] | None:
    """The noise that applies to a run on ``dims`` (None: no flips, so the clean run's key)."""
    if not noise or not float(noise.get("flip_rate") or 0.0):
        return None
    out = {
        "flip_rate": float(noise["flip_rate"]),
        "dimension": noise.get("dimension"),
        "seed": int(noise["seed"]),
    }
    if out["dimension"] not in (None, *dims):
        return None  # noise on a dimension this run does not train on: the clean run, reused
    if list(dims) == [out["dimension"]]:  # the same pairs flipped as with null: one key for
        out["dimension"] = None  # the same work (battery 18, U4)
    return out


@dataclass
class TrainingSet:
    """The rows to train on and what to log about them."""

    rows: list[PreferenceRow]
    counts: dict[str, int]
    mix_info: dict[str, Any] | None
    phases: list[str] | None
    noise: dict[str, Any] | None  # with ``flipped_ids``; None without noise


def training_set(
    sets: dict[str, list[PreferenceRow]],
    noise: dict[str, Any] | None,
    mix_cfg: Mapping[str, Any] | None,
    seed: int,
) -> TrainingSet:
    """Noise, then mixing (``mix_cfg`` None: the one dimension's rows as they are)."""
    from hhh_bench.data.mixing import mix as mix_sets
    from hhh_bench.data.noise import flip_preferences

    noise_info = None
    if noise:
        # each dimension's set flipped on its own, with the same draw as its specialist's: a
        # mixture is the union of the very noisy sets the merged specialists were trained on
        # (battery 20, A-F8: one draw over the union flipped other pairs, at other rates per
        # dimension, than the specialists compared with it)
        flipped, noisy, per_dim = [], {}, {}
        for d in sets:
            noisy[d], ids = flip_preferences(
                sets[d], noise["flip_rate"], noise["seed"], dimension=noise.get("dimension")
            )
            flipped += ids
            per_dim[d] = sum(1 for r in sets[d] if noise.get("dimension") in (None, r["dimension"]))
        sets = {d: [r for r in noisy[d] if r["dimension"] == d] for d in sets}
        eligible = sum(per_dim.values())
        if noise["flip_rate"] > 0 and eligible and not flipped:  # battery 15, F11
            raise ValueError(
                f"data.noise.flip_rate={noise['flip_rate']} flips no pair of the {eligible} it "
                "applies to (the rate times each dimension's pairs rounds to 0): the run would "
                "be the clean one, reported as a noisy condition; give a rate of at least "
                f"{0.5 / max(per_dim.values()):.2g}, or 0"
            )
        noise_info = {
            **noise,
            "eligible": eligible,
            "flipped": len(flipped),
            "flipped_ids": flipped,
        }
    if mix_cfg is None:
        (dim,) = sets
        out = TrainingSet(list(sets[dim]), {dim: len(sets[dim])}, None, None, noise_info)
    else:
        params = {k: v for k, v in mix_cfg.items() if k not in ("name", "budget")}
        res = mix_sets(
            mix_cfg["name"],
            sets,
            budget=mix_cfg.get("budget", "all_specialists"),
            seed=seed,
            **params,
        )
        out = TrainingSet(res.rows, res.counts, res.info, res.phases, noise_info)
        empty = [d for d in sets if sets[d] and not res.counts.get(d)]
        if empty:  # battery 20, A-F2: a "3H mixture" with a dimension absent, reported as mixing
            raise ValueError(
                f"mixture {mix_cfg['name']!r} (mix.budget={mix_cfg.get('budget', 'all_specialists')}) "
                f"holds no pair of {', '.join(empty)} (pairs per dimension: "
                f"{dict(res.counts)}): its scores there would be θ0's, reported as mixing; give "
                "a budget of at least one pair per dimension, or train on fewer dimensions "
                "(data.dimensions)"
            )
    if noise_info is not None:
        noise_info["flipped_in_training_set"] = sum(
            1 for r in out.rows if r.get("meta", {}).get("noise_flipped")
        )
    return out
