"""Multi-objective scorers of preference pairs for ``reward_select`` and ``conflict_aware``.

A scorer maps each pair to its per-dimension reward *margin*, ``r_d(chosen) - r_d(rejected)``:
positive where dimension d agrees with the pair's preference, negative where d would reverse it.

* ``toy3h``: the toy world's exact reward (:class:`hhh_bench.data.toy3h.Toy3HScorer`), which also
  sees through injected noise (a flipped pair gets the negated margins of the original). The
  world and the strategies do not import each other: the train stage injects it
  (:func:`register_scorer`, ``hhh_bench.stages.train``); a library user does the same, or passes
  the scorer itself (``scorer=Toy3HScorer()``).
* ``reward_model``: a multi-objective sequence-classification reward model by hub id or path,
  ArmoRM-style (``RLHFlow/ArmoRM-Llama3-8B-v0.1`` returns 19 objective rewards in
  ``output.rewards``); its outputs are mapped to dimensions by a configured list. Loaded lazily,
  on first use, with ``trust_remote_code`` only when configured.
"""

from __future__ import annotations

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


SCORERS: dict[str, Callable[..., Scorer]] = {
    "reward_model": RewardModelScorer,
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
    """Score every pair of every set (one scorer call per set)."""
    return {d: scorer(rows) for d, rows in sets.items()}


@dataclass
class ScoredParams:
    """The parameters of a strategy that scores pairs: ``scorer`` is ``toy3h`` |
    ``reward_model`` (or a callable), ``scorer_args`` its arguments (:func:`get_scorer`)."""

    scorer: Any = "toy3h"
    scorer_args: dict[str, Any] = field(default_factory=dict)

    def margins(
        self, sets: Mapping[str, Sequence[PreferenceRow]]
    ) -> dict[str, list[dict[str, float]]]:
        """Every pair of every set scored by the configured scorer (:func:`score_sets`)."""
        return score_sets(get_scorer(self.scorer, self.scorer_args), sets)
