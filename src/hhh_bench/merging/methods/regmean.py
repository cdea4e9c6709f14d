"""RegMean: Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR
2023, arXiv:2212.09849 (Eq. 2 and the off-diagonal reduction of Sec. 3.2).

Per weight W (out × in) of an ``nn.Linear`` (``nn.Linear`` stores W so that y = x Wᵀ), with G_t
the mean Gram matrix XᵀX / n of that layer's inputs X in finetuned model t on its own data (one
statistics file per model, :mod:`hhh_bench.merging.statsfile`; the stats stage computes them,
:mod:`hhh_bench.merging.datastats`) and α = ``reduce_non_diagonal_ratio``:

    G̃_t = α·G_t + (1 − α)·diag(G_t)          (off-diagonal entries scaled by α)
    Wᵀ  = (Σ_t G̃_t)⁻¹ Σ_t G̃_t W_tᵀ           (the least-squares fit of every model's outputs)

Because (Σ_t G̃_t)⁻¹ Σ_t G̃_t = I, this is θ0 + (Σ_t G̃_t)⁻¹ Σ_t G̃_t τ_tᵀ in task vectors
(τ_t = W_t − W_0). What we compute, with the engine's knobs: θ = θ0 + λ·Σ_t w_t A_t,
A_t = ((Σ_s G̃_s)⁻¹ G̃_t τ_tᵀ)ᵀ (``weights`` w_t multiply τ_t; λ = ``scaling``): with λ = 1 and
w = 1, RegMean exactly. Σ_t w_t A_t is solved at once, (Σ_s G̃_s)⁻¹ (Σ_t w_t G̃_t τ_tᵀ): one LU
of Σ G̃ and one right-hand side, and cached, so a sweep over λ recomposes from it; other weights
w solve again (``weights`` is one of the cached part's keys).

Routing: a tensor with a Gram matrix in every statistics file (the weights of ``nn.Linear``
layers: attention and MLP projections, the LM head) gets RegMean; one with none (embeddings,
norms, biases) gets the mean (1/T)·Σ_t w_t τ_t, as the reference. A tensor with a Gram matrix in
some files only, or one whose Gram does not match its input size, is refused before any tensor
is read, naming it and the file.

LoRA specialists: the statistics are those of the merged full model θ0 + s·B·A; the right-hand
side G̃_t τ_tᵀ is computed from the factors, s·(G̃_t Aᵀ) Bᵀ, without forming τ_t.

Deviations from FusionBench (``fusion_bench/method/regmean/regmean.py``,
``reduce_non_diagonal_elements``, ``merging_with_regmean_weights`` and the forward hook of
``regmean_merging``, read at commit 54c9e8c9 of github.com/tanganke/fusion_bench):

- ``torch.linalg.solve`` on Σ G̃ instead of ``torch.inverse`` then a product (the same to
  rounding; a singular Σ G̃, an input feature that is zero on every model's data, is an error
  naming the tensor instead of Inf/NaN weights);
- the Gram excludes no token but is taken one sample at a time (no padding rows; FusionBench's
  batches of 32 count the padding tokens' inputs as rows);
- default α = 0.9 (FusionBench ships 0.95 for CLIP, 0.6 for GPT-2, 0.1 in its base config;
  the paper tunes it per task, Sec. 3.2);
- no ``exclude_param_names_regex`` (default there: none excluded) and no ``Conv1D`` (GPT-2's
  transposed linear layers): ``nn.Linear`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from hhh_bench.merging.base import (
    CommonParams,
    MergeMethod,
    TaskVectors,
    finish,
    on_device,
    param,
    register_method,
)
from hhh_bench.merging.statsfile import (
    STATISTICS_HELP,
    StatisticsFile,
    absolute_paths,
    open_statistics,
)
from hhh_bench.merging.taskvec import LowRank


@dataclass(frozen=True)
class RegMeanParams(CommonParams):
    """RegMean's hyperparameters."""

    statistics: tuple[str, ...] | None = param(None, STATISTICS_HELP)
    reduce_non_diagonal_ratio: float = param(
        0.9,
        "α: each Gram's off-diagonal entries are multiplied by α, G̃ = α·G + (1 − α)·diag(G) "
        "(1 = plain RegMean, 0 = per-input-feature weighting).",
    )

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.reduce_non_diagonal_ratio <= 1.0:
            raise ValueError(
                "merge parameter 'reduce_non_diagonal_ratio' must be in [0, 1], got "
                f"{self.reduce_non_diagonal_ratio}"
            )
        absolute_paths(self)


def reduce_non_diagonal(gram: Tensor, alpha: float) -> Tensor:
    """α·G + (1 − α)·diag(G): the off-diagonal entries scaled by α, the diagonal kept."""
    out = gram * alpha
    out.diagonal().copy_(gram.diagonal())
    return out


def regmean_solve(
    name: str, grams: list[Tensor], taus: list[Tensor | LowRank], weights: list[float]
) -> Tensor:
    """(out, in) A = ((Σ_s G̃_s)⁻¹ Σ_t w_t G̃_t τ_tᵀ)ᵀ from reduced Grams G̃_t (in × in), task
    vectors τ_t (out × in, dense or LoRA factors) and weights w_t: one LU of Σ G̃ and one
    right-hand side of ``out`` columns (FusionBench inverts Σ G̃ and multiplies: the same to
    rounding, and no cheaper)."""
    total = torch.stack(grams).sum(dim=0)
    dead = (total.diagonal() <= 0).nonzero().flatten().tolist()
    if dead:
        raise ValueError(
            f"RegMean: the Gram matrices of the inputs of {name!r} are singular: input "
            f"feature(s) {dead[:5]} are zero on every model's data (Σ_t G_t has a zero "
            "diagonal); compute the statistics on more prompts, or merge this tensor with "
            "another method"
        )
    rhs: Tensor | None = None
    for g, tau, w in zip(grams, taus, weights, strict=True):
        if isinstance(tau, LowRank):  # w·s·(G Aᵀ) Bᵀ
            part = ((g @ tau.a.T) * (tau.scale * w)) @ tau.b.T
        else:
            part = g @ tau.T
            if w != 1.0:
                part = part * w
        rhs = part if rhs is None else rhs.add_(part)
    assert rhs is not None
    solved = torch.linalg.solve(total, rhs)  # (in, out)
    if not bool(torch.isfinite(solved).all()):
        raise ValueError(
            f"RegMean: solving with the Gram matrices of {name!r} gave NaN/Inf (they are "
            "singular to the compute dtype's precision); try merge parameter "
            "compute_dtype=float64 or a reduce_non_diagonal_ratio below 1"
        )
    return solved.T


def gram_route(files: list[StatisticsFile], name: str) -> bool:
    """Whether ``name`` gets RegMean (a Gram in every file) or the mean (in none); a Gram in
    some files only is an error naming the files that lack it."""
    has = [f.has("gram", name) for f in files]
    if all(has):
        return True
    if any(has):
        missing = [f.label for f, h in zip(files, has, strict=True) if not h]
        raise ValueError(
            f"RegMean: {missing[0]} has no Gram matrix for {name!r} but other statistics files "
            "do; compute every file for the same architecture"
        )
    return False


@register_method
class RegMean(MergeMethod[RegMeanParams]):
    """RegMean (arXiv:2212.09849): each linear layer the least-squares fit of every model's
    outputs on its own data's inputs; the other parameters averaged."""

    name = "regmean"
    params_cls = RegMeanParams
    statistics_kind = "gram"
    precompute_keys = ("statistics", "reduce_non_diagonal_ratio", "weights", "compute_dtype")
    summary = (
        "linear layers fit to every model's outputs on its data (Jin et al. 2023, arXiv:2212.09849)"
    )

    def check_merge(
        self, shapes: Mapping[str, tuple[int, ...]], num_models: int, params: RegMeanParams
    ) -> None:
        files = open_statistics(params.statistics, num_models, self.name)
        routed = 0
        for name, shape in shapes.items():
            if not gram_route(files, name):
                continue
            routed += 1
            if len(shape) != 2:
                raise ValueError(
                    f"RegMean: {files[0].label} has a Gram matrix for {name!r}, a tensor of "
                    f"shape {tuple(shape)}; Gram matrices belong to 2-D linear weights"
                )
            for f in files:
                want = (shape[1], shape[1])
                if f.shape("gram", name) != want:
                    raise ValueError(
                        f"{f.label}: the Gram matrix of {name!r} is {f.shape('gram', name)}, its "
                        f"weight {tuple(shape)} has {shape[1]} inputs ({want} expected); the file "
                        "was computed for another model"
                    )
        if shapes and routed == 0:
            raise ValueError(
                f"{files[0].label} holds no Gram matrix for any merged tensor (RegMean would be "
                "the plain mean); compute the statistics with kind 'gram' for these models"
            )

    def precompute(
        self,
        name: str,
        base: Tensor,
        taus: TaskVectors,
        params: RegMeanParams,
        plan_entry: Mapping[str, object],
    ) -> dict[str, Tensor]:
        files = open_statistics(params.statistics, len(taus), self.name)
        if not gram_route(files, name):
            return {"tau": taus.stack()}
        dev, dt = torch.device(params.device), params.dtype
        grams = []
        for f in files:
            g, _ = f.gram(name)
            if not bool(torch.isfinite(g).all()):
                raise ValueError(f"{f.label}: the Gram matrix of {name!r} holds NaN/Inf")
            grams.append(
                reduce_non_diagonal(g.to(device=dev, dtype=dt), params.reduce_non_diagonal_ratio)
            )
        weights = params.resolve_weights(len(taus))
        return {"regmean": regmean_solve(name, grams, list(taus.items), list(weights))}

    def compose(
        self,
        name: str,
        base: Tensor,
        pre: Mapping[str, Tensor],
        params: RegMeanParams,
        plan_entry: Mapping[str, object],
    ) -> Tensor:
        pre = on_device(pre, params)
        if "regmean" in pre:  # the weights are in it (precompute_keys)
            return finish(base, pre["regmean"], params)
        taus = pre["tau"]
        return finish(base, (params.weight_tensor(len(taus), taus) * taus).mean(dim=0), params)
