"""Uncertainty of evaluation scores: standard errors, bootstraps and paired tests over items.

An evaluation score is a mean over items (questions, prompts), so its sampling error is that of a
mean. Following Miller, "Adding Error Bars to Evals: A Statistical Approach to Language Model
Evaluations" (arXiv:2411.00640):

* the standard error of a mean of ``n`` item scores ``x_i`` is ``SE = s / sqrt(n)`` with ``s``
  the sample standard deviation (``ddof=1``), exactly lm-eval's ``mean_stderr``
  (:func:`mean_stderr`);
* a score made of several independent item sets (a weighted mean of task means) has
  ``SE = sqrt(Σ_t c_t² SE_t²)`` for coefficients ``c_t`` (:func:`combine_stderr`);
* a statistic that is not linear in the task means (the smallest of three dimension scores) gets
  a *stratified* bootstrap: items are redrawn with replacement within each task and the
  statistic recomputed (:func:`stratified_bootstrap_stderr`);
* a difference of two configurations over several seeds (each seed a paired difference over
  items) gets a percentile interval from a two-level bootstrap, seeds then items within each
  task (:func:`hierarchical_bootstrap_ci`);
* two models evaluated on the *same* items are compared by the **paired** difference
  ``d_i = a_i − b_i``: ``mean(d) ± s_d / sqrt(n)``, which removes the item-difficulty variance
  both share (Miller §4; the paired z-test). :func:`paired_test` does it for one task,
  :func:`paired_combination` for a weighted combination of tasks (a dimension score).

The tests are two-sided z-tests (normal approximation of the mean, fine for the suites' hundreds
of items; for a handful of items it is optimistic). A difference is *resolved* when its p-value
is below ``alpha`` (default 0.05); an unresolved difference is one the data cannot tell from 0.

Everything here is pure Python on sequences of floats, so it is checked by hand in tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

ALPHA = 0.05
"""Default significance level of the paired tests (two-sided)."""

Z_95 = 1.959963984540054
"""The 97.5% quantile of the standard normal: a 95% interval is ``mean ± Z_95 · SE``."""


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean of item scores.

    ``SE = sqrt(Σ (x_i − x̄)² / (n − 1)) / sqrt(n)`` (lm-eval's ``mean_stderr``: sample standard
    deviation over ``sqrt(n)``).

    Returns:
        ``(mean, stderr)``; the stderr is None for fewer than two items.

    Raises:
        ValueError: no values, or a value that is not a finite number.
    """
    xs = _finite(values, "mean_stderr")
    n = len(xs)
    mu = math.fsum(xs) / n
    if n < 2:
        return mu, None
    var = math.fsum((x - mu) ** 2 for x in xs) / (n - 1)
    return mu, math.sqrt(var / n)


def combine_stderr(coefs: Sequence[float], stderrs: Sequence[float | None]) -> float | None:
    """Standard error of ``Σ c_t m_t`` for independent estimates ``m_t`` with errors ``SE_t``:
    ``sqrt(Σ c_t² SE_t²)``; None when any part has no stderr."""
    if len(coefs) != len(stderrs):
        raise ValueError(f"combine_stderr: {len(coefs)} coefficients for {len(stderrs)} stderrs")
    if any(se is None for se in stderrs):
        return None
    return math.sqrt(math.fsum(c * c * se * se for c, se in zip(coefs, stderrs, strict=True)))  # type: ignore[operator]


def bootstrap_stderr(
    values: Sequence[float],
    statistic: Callable[[Sequence[float]], float] | None = None,
    *,
    iters: int = 1000,
    seed: int = 0,
) -> float | None:
    """Bootstrap standard error of ``statistic`` (default: the mean) over items.

    Draws ``iters`` resamples of the items with replacement (seeded), computes the statistic on
    each, and returns the sample standard deviation (``ddof=1``) of those values (Efron &
    Tibshirani, *An Introduction to the Bootstrap*, 1993, §6.2). None for fewer than two items.
    """
    xs = _finite(values, "bootstrap_stderr")
    if len(xs) < 2:
        return None
    if iters < 2:
        raise ValueError(f"bootstrap_stderr: iters must be >= 2, got {iters}")
    stat = statistic or (lambda v: math.fsum(v) / len(v))
    rng = random.Random(seed)
    n = len(xs)
    draws = [stat([xs[rng.randrange(n)] for _ in range(n)]) for _ in range(iters)]
    return _sd(draws)


def stratified_bootstrap_stderr(
    groups: Mapping[str, Sequence[float]],
    statistic: Callable[[Mapping[str, float]], float],
    *,
    iters: int = 1000,
    seed: int = 0,
    vectorized: bool = False,
) -> float | None:
    """Bootstrap standard error of a statistic of several groups' means (e.g. the minimum of
    three dimension scores, each a weighted mean of task means).

    Each resample redraws every group's items with replacement within that group (a stratified
    bootstrap: the groups are independent item sets of fixed size), computes the groups' means
    and applies ``statistic`` to ``{group: mean}``. Returns the sample standard deviation of the
    ``iters`` values; None when a group has fewer than two items. Seeded (numpy's PCG64).
    ``vectorized``: ``statistic`` takes ``{group: array of the iters resample means}`` and
    returns the iters values at once (elementwise arithmetic: the same numbers, faster).
    """
    import numpy as np

    data = {g: _finite(v, f"stratified_bootstrap_stderr[{g}]") for g, v in groups.items()}
    if not data or any(len(v) < 2 for v in data.values()):
        return None
    if iters < 2:
        raise ValueError(f"stratified_bootstrap_stderr: iters must be >= 2, got {iters}")
    rng = np.random.default_rng(seed)
    means = {}
    for g, xs in data.items():  # one (iters x n) draw per group: the means of every resample
        arr = np.asarray(xs, dtype=np.float64)
        means[g] = arr[rng.integers(0, len(arr), size=(iters, len(arr)))].mean(axis=1)
    if vectorized:
        draws = [float(v) for v in np.asarray(statistic(means), dtype=np.float64)]
        if len(draws) != iters:
            raise ValueError(
                f"stratified_bootstrap_stderr: a vectorized statistic returned {len(draws)} "
                f"values for {iters} resamples"
            )
    else:
        draws = [float(statistic({g: float(m[i]) for g, m in means.items()})) for i in range(iters)]
    return _sd(draws)


SeedParts = Sequence[tuple[float, Sequence[float]]]
"""One seed's paired differences: ``[(c_t, [a_i − b_i for the items of task t])]``."""


def hierarchical_bootstrap_ci(
    seeds: Sequence[SeedParts],
    *,
    level: float = 0.95,
    iters: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile interval of a mean over seeds of a weighted sum of task means of paired
    differences, by a bootstrap over seeds and, within each seed, over each task's items.

    ``seeds[k]`` is seed k's ``[(c_t, d_kt)]``: a coefficient and the per-item paired differences
    ``a_i − b_i`` of task ``t`` (for the ``average`` column, the parts of
    :func:`hhh_bench.core.uncertainty.column_parts`). The statistic is

        D = (1/K) Σ_k Σ_t c_t · mean_i(d_kti)

    Each of ``iters`` resamples draws K seeds with replacement, then redraws every drawn seed's
    items with replacement within each task (stratified by task; a seed drawn twice gets two
    independent redraws), and recomputes D: the two-stage resampling of nested data (Davison &
    Hinkley, *Bootstrap Methods and their Application*, 1997, §3.8). The interval is the
    ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of the ``iters`` values (the percentile
    interval, Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13; numpy's
    default linear interpolation between order statistics). With one seed it is the stratified
    bootstrap over items alone; with K seeds the seed level has only K^K orderings, so a
    handful of seeds gives a coarse, and between very different seeds a wide, interval.

    Args:
        seeds: per seed, per task ``(coefficient, paired differences)``.
        level: the interval's coverage (0.95: a 95% interval).
        iters: number of resamples.
        seed: seed of numpy's PCG64 generator: same inputs and seed, same interval.

    Returns:
        ``(D, low, high)``: the statistic on the data and the interval's ends.

    Raises:
        ValueError: no seed, a seed without tasks, a task without items, a coefficient or
            difference that is not a finite number, ``level`` outside (0, 1) or ``iters < 2``.
    """
    import numpy as np

    if not 0 < level < 1:
        raise ValueError(f"hierarchical_bootstrap_ci: level must be in (0, 1), got {level}")
    if iters < 2:
        raise ValueError(f"hierarchical_bootstrap_ci: iters must be >= 2, got {iters}")
    if not seeds:
        raise ValueError("hierarchical_bootstrap_ci: no seeds (nothing was paired)")
    data: list[list[tuple[float, Any]]] = []
    for k, parts in enumerate(seeds):
        if not parts:
            raise ValueError(f"hierarchical_bootstrap_ci: seed {k} has no tasks")
        tasks = []
        for t, (c, d) in enumerate(parts):
            where = f"hierarchical_bootstrap_ci[seed {k}, task {t}]"
            coef = _finite([c], f"{where} coefficient")[0]
            tasks.append((coef, np.asarray(_finite(d, where), dtype=np.float64)))
        data.append(tasks)
    point = math.fsum(
        math.fsum(c * math.fsum(d.tolist()) / len(d) for c, d in tasks) for tasks in data
    ) / len(data)
    rng = np.random.default_rng(seed)
    k_seeds = len(data)
    picks = rng.integers(0, k_seeds, size=(iters, k_seeds))  # the seed in slot j of resample b
    slots = np.empty((iters, k_seeds))  # slot value: Σ_t c_t · mean of its redrawn items
    for k, tasks in enumerate(data):
        mask = picks == k
        m = int(mask.sum())
        if m:
            slots[mask] = sum(c * _resampled_means(rng, d, m) for c, d in tasks)
    draws = slots.mean(axis=1)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return point, float(low), float(high)


def _resampled_means(rng: Any, values: Any, m: int, cells: int = 1 << 22) -> Any:
    """Means of ``m`` redraws with replacement of ``values`` (numpy), drawn in blocks of at
    most ``cells`` indices (32 MiB) so that thousands of redraws of thousands of items fit."""
    import numpy as np

    n = len(values)
    out = np.empty(m)
    step = max(1, cells // n)
    for start in range(0, m, step):
        stop = min(m, start + step)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


@dataclass(frozen=True)
class PairedTest:
    """The outcome of a paired comparison of two models on the same items (``a − b``).

    Attributes:
        diff: mean paired difference (for a combination: ``Σ c_t mean_t(a − b)``).
        stderr: its standard error.
        z: ``diff / stderr`` (``±inf`` when the stderr is 0 and the difference is not).
        p_value: two-sided p-value of the z-test, ``erfc(|z| / sqrt 2)``.
        ci_low, ci_high: the 95% interval ``diff ± 1.96 · stderr``.
        n: number of paired items (summed over tasks for a combination).
        alpha: the significance level ``resolved`` is judged at.
        resolved: ``p_value < alpha``: the data tell the two apart.
    """

    diff: float
    stderr: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    n: int
    alpha: float
    resolved: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``inf`` z as None)."""
        d = asdict(self)
        if not math.isfinite(d["z"]):
            d["z"] = None
        return d


def z_test(diff: float, se: float, n: int, alpha: float) -> PairedTest:
    if se > 0:
        z = diff / se
        p = math.erfc(abs(z) / math.sqrt(2))
    elif diff == 0:  # every item identical in both: nothing to resolve
        z, p = 0.0, 1.0
    else:  # every paired difference equal and non-zero: no sampling doubt at all
        z, p = math.copysign(math.inf, diff), 0.0
    return PairedTest(
        diff=diff,
        stderr=se,
        z=z,
        p_value=p,
        ci_low=diff - Z_95 * se,
        ci_high=diff + Z_95 * se,
        n=n,
        alpha=alpha,
        resolved=p < alpha,
    )


def paired_differences(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float], *, label: str = "items"
) -> list[float]:
    """``a_i − b_i`` for every item id, in sorted id order.

    Raises:
        ValueError: the two models were not scored on the same items (names a few ids that
            only one of them has), or there are no items.
    """
    only_a, only_b = set(a) - set(b), set(b) - set(a)
    if only_a or only_b:
        raise ValueError(
            f"paired test on {label}: the two models were scored on different items "
            f"({len(only_a)} only in the first, e.g. {sorted(map(str, only_a))[:3]}; "
            f"{len(only_b)} only in the second, e.g. {sorted(map(str, only_b))[:3]}); "
            "compare rows of the same suite, split and data"
        )
    if not a:
        raise ValueError(f"paired test on {label}: no items")
    return [float(a[k]) - float(b[k]) for k in sorted(a, key=str)]


def paired_test(
    a: Mapping[Hashable, float],
    b: Mapping[Hashable, float],
    *,
    alpha: float = ALPHA,
    label: str = "items",
) -> PairedTest:
    """Paired z-test of two models' item scores on one task: ``mean(a − b) ± s_d / sqrt(n)``.

    Args:
        a, b: item id -> score (e.g. 0/1 correctness) of the two models; same ids required.
        alpha: significance level for ``resolved``.
        label: names the compared thing in errors.
    """
    d = paired_differences(a, b, label=label)
    mu, se = mean_stderr(d)
    return z_test(mu, se if se is not None else 0.0, len(d), alpha)


def paired_combination(
    parts: Sequence[tuple[float, Mapping[Hashable, float], Mapping[Hashable, float]]],
    *,
    alpha: float = ALPHA,
    label: str = "score",
) -> PairedTest:
    """Paired z-test of a linear combination of task means, ``Σ c_t mean_t(a − b)``.

    Each part is ``(c_t, a_items, b_items)`` on one task; tasks are independent item sets, so the
    stderr is ``sqrt(Σ c_t² SE_t²)`` with ``SE_t`` the paired stderr of task ``t``
    (:func:`combine_stderr`). A dimension score ``Σ w_t m_t / Σ w`` has ``c_t = w_t / Σ w``; the
    3H average has those divided by 3.
    """
    if not parts:
        raise ValueError(f"paired test on {label}: no tasks to combine")
    diff, var, n = 0.0, 0.0, 0
    for i, (c, a, b) in enumerate(parts):
        d = paired_differences(a, b, label=f"{label} (part {i})")
        mu, se = mean_stderr(d)
        diff += c * mu
        var += (c * (se or 0.0)) ** 2
        n += len(d)
    return z_test(diff, math.sqrt(var), n, alpha)


def win_values(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float], *, label: str = "items"
) -> dict[Hashable, float]:
    """Per-item wins of ``a`` over ``b`` from scalar scores (e.g. rewards): 1 if ``a_i > b_i``,
    0.5 on a tie, 0 otherwise (ties count half, as in AlpacaEval's win rate, Li et al. 2023,
    github.com/tatsu-lab/alpaca_eval). Their mean is the win rate, with :func:`mean_stderr`."""
    paired_differences(a, b, label=label)  # same ids
    return {k: 1.0 if a[k] > b[k] else 0.5 if a[k] == b[k] else 0.0 for k in a}


def _finite(values: Sequence[float], where: str) -> list[float]:
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError(f"{where}: no values")
    bad = [v for v in xs if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{where}: {len(bad)} value(s) are not finite numbers (e.g. {bad[0]})")
    return xs


def _sd(xs: Sequence[float]) -> float:
    mu = math.fsum(xs) / len(xs)
    return math.sqrt(math.fsum((x - mu) ** 2 for x in xs) / (len(xs) - 1))
