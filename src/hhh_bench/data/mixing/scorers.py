"""Multi-objective scorers of preference pairs for ``reward_select`` and ``conflict_aware``.

A scorer maps each pair to its per-dimension reward *margin*, ``r_d(chosen) - r_d(rejected)``:
positive where dimension d agrees with the pair's preference, negative where d would reverse it.

* ``toy3h``: the toy world's exact reward (:class:`hhh_bench.data.toy3h.Toy3HScorer`), which also
  sees through injected noise (a flipped pair gets the negated margins of the original). The
  world and the strategies do not import each other: the train stage injects it
  (:func:`register_scorer`, ``hhh_bench.stages.train``); a library user does the same, or passes
  the scorer itself (``scorer=Toy3HScorer()``).
* ``bow_rm``: a small reward model learned from the mixed sets' own pairs
  (:class:`BowRewardScorer`: bag-of-words Bradley-Terry, one per dimension): a learned scorer on
  the toy world, where ``toy3h`` is the oracle itself.
* ``reward_model``: a multi-objective sequence-classification reward model by hub id or path,
  ArmoRM-style (``RLHFlow/ArmoRM-Llama3-8B-v0.1`` returns 19 objective rewards in
  ``output.rewards``); its outputs are mapped to dimensions by a configured list. Loaded lazily,
  on first use, with ``trust_remote_code`` only when configured.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hhh_bench.core.schema import DIMENSIONS, PreferenceRow

# ArmoRM-Llama3-8B-v0.1's 19 objectives, in output order, mapped to the 3H dimensions (None:
# unused). helpful ← helpsteer-helpfulness (0) and ultrafeedback-helpfulness (9); honest ←
# ultrafeedback-truthfulness (7) and ultrafeedback-honesty (8); harmless ← beavertails-is_safe (10).
ARMORM_OUTPUT_DIMENSIONS: tuple[str | None, ...] = (
    "helpful", None, None, None, None, None, None, "honest", "honest", "helpful",
    "harmless", None, None, None, None, None, None, None, None,
)  # fmt: skip


class Scorer(Protocol):
    """``scorer(rows) -> [{dimension: margin}, ...]``, one dict per row."""

    def __call__(self, rows: Sequence[PreferenceRow]) -> list[dict[str, float]]: ...


class RewardModelScorer:
    """Per-dimension margins from a multi-objective reward model (loaded on first call).

    Args:
        model: hub id or local folder of an ``AutoModelForSequenceClassification``-loadable model.
        output_dimensions: for each output of the model, the dimension it scores or None to
            ignore it; several outputs of one dimension are averaged
            (:data:`ARMORM_OUTPUT_DIMENSIONS` for ArmoRM).
        trust_remote_code: allow the model's own code (ArmoRM needs it); off unless configured.
        revision: pinned revision of a hub model.
        device: where to run it.
        dtype: ``float32`` | ``bfloat16`` | ``float16`` | ``auto``.
        batch_size: conversations per forward pass.
        max_length: truncate conversations to this many tokens (None: no truncation).
    """

    def __init__(
        self,
        model: str,
        output_dimensions: Sequence[str | None],
        *,
        trust_remote_code: bool = False,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str | None = "auto",
        batch_size: int = 8,
        max_length: int | None = 4096,
    ) -> None:
        if not model:
            raise ValueError("the reward_model scorer needs scorer_args.model (a hub id or folder)")
        bad = [d for d in output_dimensions if d is not None and d not in DIMENSIONS]
        if bad:
            raise ValueError(f"scorer_args.output_dimensions has unknown dimension(s) {bad}")
        if not any(d is not None for d in output_dimensions):
            raise ValueError("scorer_args.output_dimensions maps no output to a dimension")
        self.model_id = model
        self.output_dimensions = list(output_dimensions)
        self.trust_remote_code = trust_remote_code
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_length = max_length
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from hhh_bench.models.loading import resolve_dtype

        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision:
            kwargs["revision"] = self.revision
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_id, **kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(
            self.model_id, dtype=resolve_dtype(self.dtype, self.device), **kwargs
        )
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self._tokenizer.pad_token_id
        self._model = model.to(self.device).eval()

    def _rewards(self, convs: list[list[dict[str, str]]]) -> Any:
        import torch

        texts = [self._tokenizer.apply_chat_template(c, tokenize=False) for c in convs]
        enc = self._tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
            add_special_tokens=False,
        ).to(self.device)
        with torch.no_grad():
            out = self._model(**enc)
        values = getattr(out, "rewards", None)  # ArmoRM's multi-objective head
        if values is None:
            values = out.logits
        values = values.float().cpu()
        if values.shape[-1] != len(self.output_dimensions):
            raise ValueError(
                f"reward model {self.model_id!r} has {values.shape[-1]} outputs but "
                f"scorer_args.output_dimensions lists {len(self.output_dimensions)}"
            )
        return values

    def __call__(self, rows: Sequence[PreferenceRow]) -> list[dict[str, float]]:
        if self._model is None:
            self._load()
        out: list[dict[str, float]] = []
        dims = sorted({d for d in self.output_dimensions if d is not None}, key=DIMENSIONS.index)
        cols = {d: [i for i, x in enumerate(self.output_dimensions) if x == d] for d in dims}
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            chosen = self._rewards([list(r["prompt"]) + list(r["chosen"]) for r in batch])
            rejected = self._rewards([list(r["prompt"]) + list(r["rejected"]) for r in batch])
            diff = chosen - rejected
            for i in range(len(batch)):
                out.append({d: float(diff[i, cols[d]].mean()) for d in dims})
        return out


_WORD = re.compile(r"[a-z0-9']+")


def _words(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    return _WORD.findall(" ".join(str(m.get("content", "")) for m in messages).lower())


class BowRewardScorer:
    """A reward model learned from the mixed sets' own pairs: one linear Bradley-Terry model per
    dimension over bag-of-words features of the conversation, so that a data-mixture baseline
    ranks pairs by what a learned reward says, not by a world's exact reward (issue 29: the toy
    world's ``reward_select`` and ``conflict_aware`` scored pairs with the oracle).

    Features of a (prompt, response): the response's words, and every (prompt word, response
    word) pair (so a refusal can be good after one prompt and bad after another), counted and
    scaled by 1/√n. Dimension d's model w_d minimises the mean of log(1 + exp(-w_d·(φ(chosen) -
    φ(rejected)))) over d's own pairs, plus ``l2``/2·|w_d|², by full-batch gradient steps
    (Adam, ``steps``, from w = 0: deterministic). A pair's margins are w_d·(φ(chosen) -
    φ(rejected)) for every trained dimension. It reads only the text: injected label noise is
    learned as it is. Size: one weight per distinct feature of the sets per dimension (logged,
    with the seconds it took); no pretrained model, nothing downloaded.

    :meth:`fit` sees every set first (:func:`score_sets` calls it); called on rows without a fit,
    it fits on those rows, by their ``dimension``.
    """

    def __init__(self, *, l2: float = 1e-3, steps: int = 300, learning_rate: float = 0.1) -> None:
        for name, v in (("l2", l2), ("learning_rate", learning_rate)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ValueError(f"scorer_args.{name} must be a finite number >= 0, got {v!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"scorer_args.steps must be a positive integer, got {steps!r}")
        self.l2, self.steps, self.learning_rate = float(l2), steps, float(learning_rate)
        self.index: dict[str, int] = {}
        self.weights: dict[str, Any] = {}
        self.info: dict[str, Any] = {}

    def _features(self, prompt: list[str], response: list[str], grow: bool) -> dict[int, float]:
        counts: dict[int, float] = {}
        for f in [f"r:{w}" for w in response] + [f"{p}>{w}" for p in set(prompt) for w in response]:
            i = self.index.get(f)
            if i is None:
                if not grow:
                    continue
                i = self.index[f] = len(self.index)
            counts[i] = counts.get(i, 0.0) + 1.0
        norm = max(1.0, sum(v * v for v in counts.values())) ** 0.5
        return {i: v / norm for i, v in counts.items()}

    def _diffs(self, rows: Sequence[PreferenceRow], grow: bool) -> Any:
        import torch

        idx: list[list[int]] = [[], []]
        vals: list[float] = []
        for n, r in enumerate(rows):
            prompt = _words(r["prompt"])
            diff = dict(self._features(prompt, _words(r["chosen"]), grow))
            for i, v in self._features(prompt, _words(r["rejected"]), grow).items():
                diff[i] = diff.get(i, 0.0) - v
            for i, v in diff.items():
                idx[0].append(n)
                idx[1].append(i)
                vals.append(v)
        x = torch.zeros((len(rows), max(1, len(self.index))), dtype=torch.float64)
        x.index_put_((torch.tensor(idx[0], dtype=torch.long), torch.tensor(idx[1], dtype=torch.long)),
                     torch.tensor(vals, dtype=torch.float64), accumulate=True)  # fmt: skip
        return x  # dense: a few thousand features by the sets' pairs

    def fit(self, sets: Mapping[str, Sequence[PreferenceRow]]) -> None:
        """Learn one model per dimension from its own set's pairs."""
        import time

        import torch

        t0 = time.perf_counter()
        all_rows = [r for rows in sets.values() for r in rows]
        self._diffs(all_rows, grow=True)  # every feature of the sets gets its index
        for dim, rows in sets.items():
            if not rows:
                continue
            x = self._diffs(rows, grow=False)
            w = torch.zeros(len(self.index), dtype=torch.float64, requires_grad=True)
            opt = torch.optim.Adam([w], lr=self.learning_rate)
            for _ in range(self.steps):
                opt.zero_grad()
                z = x @ w
                loss = torch.nn.functional.softplus(-z).mean() + 0.5 * self.l2 * (w * w).sum()
                loss.backward()
                opt.step()
            self.weights[dim] = w.detach()
            with torch.no_grad():
                z = x @ self.weights[dim]
            self.info[dim] = {"pairs": len(rows), "train_agreement": float((z > 0).double().mean())}
        self.info["features"] = len(self.index)
        self.info["seconds"] = round(time.perf_counter() - t0, 2)
        logging.getLogger("hhh_bench").info("bow_rm scorer: %s", self.info)

    def __call__(self, rows: Sequence[PreferenceRow]) -> list[dict[str, float]]:
        import torch

        if not self.weights:
            by_dim: dict[str, list[PreferenceRow]] = {}
            for r in rows:
                by_dim.setdefault(str(r.get("dimension")), []).append(r)
            self.fit(by_dim)
        x = self._diffs(rows, grow=False)
        dims = [d for d in DIMENSIONS if d in self.weights]
        with torch.no_grad():
            z = {d: x @ self.weights[d] for d in dims}
        return [{d: float(z[d][i]) for d in dims} for i in range(len(rows))]


SCORERS: dict[str, Callable[..., Scorer]] = {
    "reward_model": RewardModelScorer,
    "bow_rm": BowRewardScorer,
}
"""Scorer factories by name: ``factory(**scorer_args)`` is the scorer. ``toy3h`` is added by
whoever brings the toy world (:func:`register_scorer`): the train stage does."""


def register_scorer(name: str, factory: Callable[..., Scorer]) -> None:
    """Make ``factory(**scorer_args)`` the scorer named ``name`` (a strategy's ``scorer``
    knob). Registering the same factory again is a no-op; another one under a taken name
    raises ``ValueError``."""
    if SCORERS.get(name, factory) is not factory:
        raise ValueError(f"scorer {name!r} is already registered ({SCORERS[name]!r})")
    SCORERS[name] = factory


def get_scorer(scorer: str | Scorer, args: Mapping[str, Any] | None = None) -> Scorer:
    """A scorer by name (``toy3h`` | ``reward_model``) with its arguments, or a scorer as is."""
    if callable(scorer) and not isinstance(scorer, str):
        return scorer
    if scorer not in SCORERS:
        hint = (
            " (the toy world's scorer is injected by the train stage; outside it, call "
            "register_scorer('toy3h', hhh_bench.data.toy3h.Toy3HScorer) or pass the scorer)"
            if scorer == "toy3h"
            else ""
        )
        raise ValueError(f"unknown scorer {scorer!r}; expected one of {sorted(SCORERS)}{hint}")
    return SCORERS[scorer](**dict(args or {}))


def score_sets(
    scorer: Scorer, sets: Mapping[str, Sequence[PreferenceRow]]
) -> dict[str, list[dict[str, float]]]:
    """Score every pair of every set (one scorer call per set); a scorer that learns from the
    sets (``fit``: :class:`BowRewardScorer`) sees them all first."""
    fit = getattr(scorer, "fit", None)
    if callable(fit):
        fit(sets)
    return {d: scorer(rows) for d, rows in sets.items()}


@dataclass
class ScoredParams:
    """The parameters of a strategy that scores pairs: ``scorer`` is ``toy3h`` | ``bow_rm`` |
    ``reward_model`` (or a callable), ``scorer_args`` its arguments (:func:`get_scorer`)."""

    scorer: Any = "toy3h"
    scorer_args: dict[str, Any] = field(default_factory=dict)

    def margins(
        self, sets: Mapping[str, Sequence[PreferenceRow]]
    ) -> dict[str, list[dict[str, float]]]:
        """Every pair of every set scored by the configured scorer (:func:`score_sets`)."""
        return score_sets(get_scorer(self.scorer, self.scorer_args), sets)
