"""Uncertainty over seeds: the training seed as the unit of replication.

Two configurations compared on the same seeds (same world, data and training seed for both) give
one difference per seed, ``D_k`` (for the report's answer: merge − mix of the ``average`` score).
Items are shared by every seed and scored by models of the same seed, so item-level resampling
treats thousands of correlated 0/1 values as independent draws and ignores the seed-to-seed
spread of training: its interval is far too narrow (issue 28: about 79% coverage for a nominal
95%). Here the seeds are the sample:

* :func:`t_interval`: the one-sample Student t interval of the mean of ``D_1 … D_n``,
  ``D̄ ± t_{(1+level)/2, n−1} · s / sqrt(n)`` (``s`` the sample SD, ``ddof=1``), with the
  two-sided p-value of ``H0: E[D] = 0``, ``2 · P(T_{n−1} > |D̄| / (s / sqrt(n)))`` (scipy's t
  distribution; scipy comes with statsmodels). With one seed there is no spread to measure and
  no interval at all. :func:`t_ends` is its vectorised form over a leading axis (the coverage
  test runs it on thousands of simulated stores at once: the same code);
* :func:`bca_interval`: the bias-corrected and accelerated bootstrap over seeds (Efron, "Better
  bootstrap confidence intervals", JASA 1987; ``scipy.stats.bootstrap(method="BCa")``), the
  option ``report.interval=bca``. With a handful of seeds a resample has few distinct values:
  it is a check on the t interval's normality, not a cure for few seeds. Below
  :data:`BCA_MIN_SEEDS` seeds it is not computed (with 2 seeds it is the range of the two
  differences, "95%" with a true coverage near 50%: battery 12); the t interval is given,
  said as such (:attr:`SeedInterval.method` ``t``, :attr:`SeedInterval.requested` ``bca``);
* :func:`seeds_needed`: the smallest ``n ≥ 2`` with ``t_{(1+level)/2, n−1} · s / sqrt(n) ≤ h``
  (the half-width ``h``, default 0.02, at the observed per-seed SD ``s``), found by counting up
  from the normal approximation ``ceil((z · s / h)²)`` (``t > z``, so no smaller n can do);
* :func:`mixed_effects`: a linear mixed model fitted with statsmodels
  (``statsmodels.regression.mixed_linear_model.MixedLM``), a *linear probability model* on the
  item scores (0/1 correctness treated as a continuous outcome). Written on item scores it is
  ``y_kif = α_i + β · merge_f + u_k + v_k · merge_f + w_ke · merge_f + ε_kif``: item intercepts,
  the family effect β, a seed intercept ``u_k``, a seed-by-family random effect ``v_k`` (the
  seed-to-seed spread of the difference) and an entity-by-seed-by-family effect ``w_ke`` (items
  clustered by entity ``e``). Differencing the two families' scores of the same item and seed
  removes ``α_i`` and ``u_k``; summing the weighted differences of each entity (cluster) of a
  seed leaves ``Y_ke = β + v_k + r_ke``: a random-intercept model with the seed as group and the
  entity's total as the observation (its residual holds ``w_ke`` and the items' noise). Fitting
  the clusters' totals rather than the items with an entity variance component is what
  statsmodels fits reliably and in milliseconds on small data (the item-level fit with a
  variance component failed to converge on a third of small simulated stores and took
  seconds). Each total is scaled by the number of clusters of its seed, so that the mean of a
  seed's observations is exactly ``D_k``, and β estimates the same difference as the t
  interval. Items without an entity id are their own cluster (which the result says). The
  Wald z interval and p of β are reported; statsmodels' warnings are kept, a fit that fails
  or does not converge gives no number.

Everything takes plain sequences (or numpy arrays): nothing here knows the toy world.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

HALF_WIDTH = 0.02
"""The half-width of a 95% interval that would resolve a difference of the answer's size."""

INTERVALS = ("t", "bca")

BCA_MIN_SEEDS = 8
"""Fewest paired seeds a BCa interval is computed on; below it the t interval stands in."""
"""The seed-level intervals ``report.interval`` chooses between."""


def t_ends(diffs: Any, level: float = 0.95) -> dict[str, Any]:
    """The t interval and test over the last axis of ``diffs`` (n ≥ 2 values each; see the
    module docstring), vectorised: ``{"mean", "sd", "se", "low", "high", "p_value"}`` arrays of
    the leading shape. An SD of 0 gives the interval ``[mean, mean]`` and p 1 (mean 0) or 0."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    n = d.shape[-1]
    if n < 2:
        raise ValueError(f"t interval: needs at least 2 seeds, got {n}")
    mean = d.mean(axis=-1)
    sd = np.where((d == d[..., :1]).all(axis=-1), 0.0, d.std(axis=-1, ddof=1))  # no rounding SD
    se = sd / math.sqrt(n)
    q = float(stats.t.ppf((1 + level) / 2, n - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        tstat = np.where(se > 0, np.abs(mean) / np.where(se > 0, se, 1.0), np.inf)
    p = np.where(se > 0, 2 * stats.t.sf(tstat, n - 1), np.where(mean == 0, 1.0, 0.0))
    return {"mean": mean, "sd": sd, "se": se, "low": mean - q * se, "high": mean + q * se,
            "p_value": p}  # fmt: skip


def seeds_needed(
    sd: float, half_width: float = HALF_WIDTH, level: float = 0.95, limit: int = 1_000_000
) -> int | None:
    """The smallest number of seeds ``n ≥ 2`` whose t interval at ``level`` has half-width at
    most ``half_width`` at the per-seed SD ``sd``: ``t_{(1+level)/2, n−1} · sd / sqrt(n) ≤
    half_width``; None beyond ``limit``.

    Raises:
        ValueError: ``sd`` negative or not finite, ``half_width`` not > 0, ``level`` outside (0, 1).
    """
    from scipy import stats

    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"seeds_needed: sd must be a finite number >= 0, got {sd}")
    if not half_width > 0:
        raise ValueError(f"seeds_needed: half_width must be > 0, got {half_width}")
    _check_level(level, "seeds_needed")
    z = float(stats.norm.ppf((1 + level) / 2))
    n = max(2, math.ceil((z * sd / half_width) ** 2))  # t > z: no smaller n can do
    while n <= limit:
        if float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n) <= half_width:
            return n
        n += 1
    return None


def bca_interval(
    diffs: Sequence[float], level: float = 0.95, iters: int = 9999, seed: int = 0
) -> tuple[float, float] | None:
    """The BCa bootstrap interval of the mean of ``diffs`` (one value per seed;
    ``scipy.stats.bootstrap(method="BCa")``, ``iters`` resamples, seeded); None when it is not
    defined (fewer than 2 seeds, every value equal, or scipy returns no finite ends)."""
    from scipy import stats

    d = np.asarray(_finite(diffs, "bca_interval"), dtype=np.float64)
    if len(d) < 2 or np.all(d == d[0]):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate jackknife: the ends are NaN, checked below
        res = stats.bootstrap(
            (d,), np.mean, n_resamples=iters, confidence_level=level, method="BCa",
            rng=np.random.default_rng(seed), vectorized=True,
        )  # fmt: skip
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


@dataclass(frozen=True)
class SeedInterval:
    """A difference over paired seeds with its seed-level interval.

    Attributes:
        diff: the mean of the per-seed differences.
        n: the number of seeds.
        sd: the per-seed SD (``ddof=1``; None for one seed).
        se: ``sd / sqrt(n)``.
        low, high: the interval's ends (None for one seed, or a BCa interval that is undefined).
        p_value: two-sided p of the one-sample t test (None for one seed).
        method: ``t`` or ``bca`` (the interval given; the p is the t test's either way).
        level: the interval's coverage.
        half_width: the half-width ``seeds_needed`` is computed for.
        seeds_needed: seeds for a t interval of that half-width at the observed SD, when the
            interval contains 0 (None otherwise, or with one seed).
        requested: the method asked for when another is given (``bca`` below
            :data:`BCA_MIN_SEEDS` seeds), else None.
    """

    diff: float
    n: int
    sd: float | None
    se: float | None
    low: float | None
    high: float | None
    p_value: float | None
    method: str
    level: float
    half_width: float
    seeds_needed: int | None
    requested: str | None = None

    @property
    def inconclusive(self) -> bool:
        """No interval, one that contains 0 (an end at 0 included), or a BCa interval the t
        test does not back (p ≥ 1 − level): a verdict never contradicts its own p."""
        if self.low is None or self.high is None or self.low <= 0 <= self.high:
            return True
        return self.method == "bca" and (self.p_value is None or self.p_value >= 1 - self.level)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_interval(
    diffs: Sequence[float],
    *,
    level: float = 0.95,
    method: str = "t",
    half_width: float = HALF_WIDTH,
    iters: int = 9999,
    seed: int = 0,
) -> SeedInterval:
    """The interval over seeds of the mean of ``diffs`` (one difference per seed): the t
    interval, or with ``method="bca"`` the BCa bootstrap (``iters`` resamples, ``seed``); the
    t test's p either way; when the interval contains 0, the seeds needed for ``± half_width``.

    Raises:
        ValueError: no differences, one that is not finite, an unknown ``method`` or a
            ``level`` outside (0, 1).
    """
    if method not in INTERVALS:
        raise ValueError(f"seed interval: method must be one of {list(INTERVALS)}, got {method!r}")
    _check_level(level, "seed interval")
    d = _finite(diffs, "seed interval")
    n = len(d)
    if n == 1:
        return SeedInterval(d[0], 1, None, None, None, None, None, method, level, half_width, None)
    t = {k: float(v) for k, v in t_ends(d, level).items()}
    low, high = t["low"], t["high"]
    requested = None
    if method == "bca" and n < BCA_MIN_SEEDS:
        method, requested = "t", "bca"
    elif method == "bca":
        ends = bca_interval(d, level, iters=iters, seed=seed)
        low, high = ends if ends is not None else (None, None)
    out = SeedInterval(
        math.fsum(d) / n, n, t["sd"], t["se"], low, high, t["p_value"], method, level,
        half_width, None, requested,
    )  # fmt: skip
    if out.inconclusive:
        out = SeedInterval(
            **{**asdict(out), "seeds_needed": seeds_needed(t["sd"], half_width, level)}
        )
    return out


@dataclass(frozen=True)
class MixedView:
    """The mixed-effects estimate of a difference (module docstring), or why there is none.

    Attributes:
        estimate, se, low, high, p_value: β, its SE, its Wald interval at ``level`` and the
            two-sided Wald p (None when there is no fit).
        seed_var, cluster_var: the seed variance and the residual (cluster) variance.
        n_seeds, n_clusters: seeds and clusters (entities per seed, summed) fitted.
        clusters: ``entity`` when every item had a cluster id, ``item`` when none had (each item
            its own cluster), ``mixed`` when some had.
        level: the interval's coverage.
        warnings: statsmodels' warnings (e.g. an estimate on the boundary), kept to be shown.
        error: why there is no estimate (too few seeds, a failed or non-converged fit).
    """

    estimate: float | None = None
    se: float | None = None
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    seed_var: float | None = None
    cluster_var: float | None = None
    n_seeds: int = 0
    n_clusters: int = 0
    clusters: str = "entity"
    level: float = 0.95
    warnings: tuple[str, ...] = ()
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SeedItems = Sequence[tuple[float, float, Hashable | None]]
"""One seed's items: ``[(weight, paired difference, cluster id or None)]``; the weights are the
items' coefficients in the compared score (for the average: ``c_t / n_t``)."""


def cluster_totals(seeds: Sequence[SeedItems]) -> tuple[Any, Any, str]:
    """The observations of :func:`mixed_effects`: per seed and cluster, the cluster's weighted
    difference times the seed's number of clusters (so a seed's observations average to
    ``Σ_i w_i d_i``); an item without a cluster id is its own cluster. Returns ``(y, seed
    index, clusters)`` with ``clusters`` one of ``entity``, ``item``, ``mixed``."""
    ys: list[float] = []
    groups: list[int] = []
    with_id = without = 0
    for k, items in enumerate(seeds):
        totals: dict[Hashable, float] = {}
        for j, (w, d, c) in enumerate(items):
            if c is None:
                without += 1
                key: Hashable = ("item", j)
            else:
                with_id += 1
                key = ("cluster", c)
            totals[key] = totals.get(key, 0.0) + float(w) * float(d)
        ys.extend(v * len(totals) for v in totals.values())
        groups.extend([k] * len(totals))
    kind = "entity" if not without else "item" if not with_id else "mixed"
    return np.asarray(ys, dtype=np.float64), np.asarray(groups), kind


def mixed_effects(seeds: Sequence[SeedItems], *, level: float = 0.95) -> MixedView:
    """Fit the module docstring's mixed model to per-seed item differences (never raises on a
    bad fit: the result says why it has no estimate)."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    y, groups, kind = cluster_totals(seeds)
    base = {"n_seeds": len(seeds), "n_clusters": len(y), "clusters": kind, "level": level}
    if len(seeds) < 2:
        return MixedView(**base, error="needs at least 2 seeds (the seed is the random effect)")
    if not np.all(np.isfinite(y)):
        return MixedView(**base, error="a paired difference is not a finite number")
    if len(y) <= len(seeds):
        return MixedView(**base, error="needs more than one cluster per seed")
    caught: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fit = MixedLM(y, np.ones((len(y), 1)), groups=groups).fit(reml=True)
        caught = list(dict.fromkeys(str(w.message).split("\n")[0] for w in seen))
    except (ValueError, np.linalg.LinAlgError, ZeroDivisionError) as e:
        return MixedView(**base, error=f"the fit failed ({type(e).__name__}: {e})")
    params, bse = np.asarray(fit.params), np.asarray(fit.bse)
    if not fit.converged:
        return MixedView(**base, warnings=tuple(caught), error="the fit did not converge")
    if not (np.isfinite(params[0]) and np.isfinite(bse[0]) and bse[0] > 0):
        return MixedView(
            **base, warnings=tuple(caught), error="the fit gave no finite standard error"
        )
    est, se = float(params[0]), float(bse[0])
    from scipy import stats

    z = float(stats.norm.ppf((1 + level) / 2))
    return MixedView(
        estimate=est, se=se, low=est - z * se, high=est + z * se,
        p_value=float(2 * stats.norm.sf(abs(est) / se)),
        seed_var=float(np.asarray(fit.cov_re).ravel()[0]), cluster_var=float(fit.scale),
        warnings=tuple(caught), **base,
    )  # fmt: skip


def _check_level(level: float, where: str) -> None:
    if not 0 < level < 1:
        raise ValueError(f"{where}: level must be in (0, 1), got {level}")


def _finite(values: Sequence[float], where: str) -> list[float]:
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError(f"{where}: no values (no seed was paired)")
    bad = [v for v in xs if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{where}: {len(bad)} value(s) are not finite numbers (e.g. {bad[0]})")
    return xs
