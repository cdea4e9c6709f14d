"""Length-controlled win rate against fixed reference answers (AlpacaEval 2's method).

A judge says, per instruction ``i``, how strongly the model's answer is preferred to a fixed
reference answer: ``p_i`` in [0, 1]. The raw win rate is ``mean(p_i)`` (AlpacaEval's
``win_rate``). Judges prefer longer answers, so AlpacaEval 2 (Dubois et al., "Length-Controlled
AlpacaEval: A Simple Way to Debias Automatic Evaluators", arXiv:2404.04475) fits, per model, a
logistic regression of the preference on the length difference and asks what the win rate
would be with no length difference:

    logit P(model ≻ reference | i) = θ + φ · tanh(Δ_i / sd(Δ)) [+ ψ · γ_i]

with ``Δ_i = len(reference_i) − len(answer_i)`` in characters (AlpacaEval's sign and unit),
``sd`` the sample standard deviation of the ``Δ_i`` over the evaluated items and ``γ_i`` an
optional per-instruction difficulty. The soft labels ``p_i`` are fitted by maximum likelihood
(each item a fractional success, the log loss AlpacaEval's ``fit_LogisticRegressionCV`` uses
with ``is_ytrue_proba=True``). The **length-controlled win rate** is the mean prediction with
the length term set to zero: ``LC = mean_i σ(θ + ψ γ_i)``.

What differs from AlpacaEval's code (``alpaca_eval/metrics/glm_winrate.py``), and why:

* AlpacaEval fits with an L1 penalty whose strength is chosen by 5-fold cross-validation, and
  adds rows of two "gamed" baselines (the reference model asked to be verbose / concise) with
  weight 0.2 to pull the length slope towards the baseline's; both need AlpacaEval's own
  annotations of those baselines by *its* judge. Here the fit is plain maximum likelihood, with
  a small ridge on the slopes only (``ridge``, default 1e-3 in units of summed log loss) so a
  preference separable by length gives a finite slope; the intercept is not penalised.
* AlpacaEval's ``γ_i`` come from its leaderboard (a GLM over ~100 models on its 805
  instructions, judged by GPT-4). They are used when given (``difficulty``: the published
  ``instruction_difficulty.csv`` exported at a pinned revision, or your own), else the term is
  left out: a pool of a few merges of one base cannot identify a difficulty per instruction.
* With no length variation at all (``sd(Δ) = 0``) the length term is dropped (AlpacaEval would
  divide by zero) and LC equals the raw win rate.

**Per-item values.** Because the intercept is unpenalised, the fitted probabilities have the
same mean as the ``p_i`` (the intercept's score equation), so the per-item values

    v_i = p_i − σ(θ + φ t_i + ψ γ_i) + σ(θ + ψ γ_i)

(the preference with its predicted length share removed) average exactly to ``LC``. They make
the LC rate an item mean like every other metric: its standard error is ``sd(v)/√n`` and the
paired tests and bootstraps of :mod:`hhh_bench.core.stats` apply unchanged. (AlpacaEval reports
the standard error of the predicted ``σ(θ + ψ γ_i)``, which is 0 without difficulty terms.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RIDGE = 1e-3
"""Default L2 penalty on the slopes (never the intercept), in units of summed log loss."""


@dataclass(frozen=True)
class LengthControlled:
    """One model's length-controlled fit.

    Attributes:
        lc_win_rate: ``mean_i σ(θ + ψ γ_i)`` (the length term at zero), in [0, 1].
        win_rate: the raw ``mean(p_i)``.
        values: the per-item ``v_i`` (module docstring), whose mean is ``lc_win_rate``.
        intercept: ``θ`` (0 when no fit was needed: every preference the same).
        length_coef: ``φ`` (0 when the length term was dropped).
        difficulty_coef: ``ψ`` (None without difficulties).
        length_sd: ``sd(Δ)`` in characters (0: no length variation, term dropped).
    """

    lc_win_rate: float
    win_rate: float
    values: tuple[float, ...]
    intercept: float
    length_coef: float
    difficulty_coef: float | None
    length_sd: float


def sigmoid(x: Any) -> Any:
    """The logistic function, stable at either end (an array, or a float as a NumPy float)."""
    return np.exp(-np.logaddexp(0.0, -x))


def fit_soft_logistic(
    x: np.ndarray, p: np.ndarray, *, ridge: float = RIDGE, penalise: np.ndarray | None = None
) -> np.ndarray:
    """Coefficients ``β`` minimising ``−Σ_i [p_i log σ(x_i β) + (1 − p_i) log(1 − σ(x_i β))]
    + ridge/2 · Σ_j penalise_j β_j²`` by Newton's method (the loss is convex; the ridge makes it
    strictly so on the penalised coordinates).

    Args:
        x: the design, ``(n, k)``.
        p: the soft labels in [0, 1], ``(n,)``.
        ridge: the L2 strength.
        penalise: a 0/1 mask of the penalised coordinates (default: all).

    Raises:
        ValueError: Newton's method did not converge in 100 steps (names the last step size).
    """
    n, k = x.shape
    mask = np.ones(k) if penalise is None else np.asarray(penalise, dtype=float)
    beta = np.zeros(k)

    def loss(b: np.ndarray) -> float:
        z = x @ b
        # log σ(z) = −log(1 + e^{−z}); log(1 − σ(z)) = −log(1 + e^{z})
        nll = np.sum(p * np.logaddexp(0.0, -z) + (1.0 - p) * np.logaddexp(0.0, z))
        return float(nll + 0.5 * ridge * np.sum(mask * b * b))

    current = loss(beta)
    for _ in range(100):
        mu = sigmoid(x @ beta)
        grad = x.T @ (mu - p) + ridge * mask * beta
        hess = (x.T * (mu * (1.0 - mu))) @ x + np.diag(ridge * mask + 1e-12)
        step = np.linalg.solve(hess, grad)
        t = 1.0  # backtracking: Newton's full step can overshoot where σ saturates
        while t > 1e-10:
            trial = beta - t * step
            new = loss(trial)
            if new <= current + 1e-4 * t * float(grad @ -step):
                break
            t /= 2.0
        beta, current = trial, new
        if float(np.max(np.abs(t * step))) < 1e-10:
            return beta
    raise ValueError(
        f"length-controlled fit: Newton's method did not converge (last step {t * step})"
    )


def length_controlled(
    preferences: Sequence[float],
    lengths: Sequence[float],
    reference_lengths: Sequence[float],
    difficulty: Sequence[float] | None = None,
    *,
    ridge: float = RIDGE,
) -> LengthControlled:
    """The length-controlled win rate of one model (module docstring).

    Args:
        preferences: ``p_i``, the judge's preference for the model's answer over the reference.
        lengths: the model's answer lengths (characters).
        reference_lengths: the reference answers' lengths (characters).
        difficulty: ``γ_i`` per item, or None (no difficulty term).
        ridge: the L2 strength on the slopes.

    Raises:
        ValueError: no items, sequences of different lengths, a preference outside [0, 1] or a
            value that is not finite.
    """
    p = np.asarray(preferences, dtype=float)
    n = len(p)
    cols = {"lengths": lengths, "reference_lengths": reference_lengths}
    if difficulty is not None:
        cols["difficulty"] = difficulty
    if n == 0:
        raise ValueError("length-controlled win rate: no items")
    for name, seq in cols.items():
        if len(seq) != n:
            raise ValueError(f"length-controlled win rate: {len(seq)} {name} for {n} preferences")
    arrays = {name: np.asarray(seq, dtype=float) for name, seq in cols.items()}
    for name, a in {"preferences": p, **arrays}.items():
        if not np.all(np.isfinite(a)):
            raise ValueError(
                f"length-controlled win rate: a {name} value is not finite"
                + (" (the data file's `instruction_difficulty`)" if name == "difficulty" else "")
            )
    if np.any((p < 0) | (p > 1)):
        raise ValueError("length-controlled win rate: a preference is outside [0, 1]")
    delta = arrays["reference_lengths"] - arrays["lengths"]
    sd = float(np.std(delta, ddof=1)) if n > 1 else 0.0
    if float(p.max()) == float(p.min()):  # one preference for every item (all answers empty,
        # or a judge that never changes its mind): no slope to fit, the rate is that preference
        same = float(p[0])
        return LengthControlled(
            lc_win_rate=same, win_rate=same, values=tuple(float(v) for v in p), intercept=0.0,
            length_coef=0.0, difficulty_coef=None if difficulty is None else 0.0, length_sd=sd,
        )  # fmt: skip
    features = [np.ones(n)]
    if sd > 0:
        features.append(np.tanh(delta / sd))
    if difficulty is not None:
        features.append(arrays["difficulty"])
    x = np.column_stack(features)
    penalise = np.array([0.0] + [1.0] * (x.shape[1] - 1))
    beta = fit_soft_logistic(x, p, ridge=ridge, penalise=penalise)
    x0 = x.copy()
    if sd > 0:
        x0[:, 1] = 0.0  # no length difference
    fitted, controlled = sigmoid(x @ beta), sigmoid(x0 @ beta)
    values = p - fitted + controlled
    return LengthControlled(
        lc_win_rate=float(math.fsum(controlled) / n),
        win_rate=float(math.fsum(p) / n),
        values=tuple(float(v) for v in values),
        intercept=float(beta[0]),
        length_coef=float(beta[1]) if sd > 0 else 0.0,
        difficulty_coef=float(beta[-1]) if difficulty is not None else None,
        length_sd=sd,
    )
