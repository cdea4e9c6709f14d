"""Fisher merging (diagonal): Matena & Raffel, "Merging Models with Fisher Weighting", NeurIPS
2022, arXiv:2111.09832 (Eq. 2 with the diagonal Fisher of Sec. 2.2).

Per parameter, with F_t the diagonal Fisher of finetuned model t (one statistics file per
model, :mod:`hhh_bench.merging.statsfile`; the stats stage computes them from each specialist's
training prompts, :mod:`hhh_bench.merging.datastats`), ε = ``minimal_fisher_weight``:

    c_t = (1/(‖F_t‖ + ε)) / Σ_s (1/(‖F_s‖ + ε))   with ``normalize_fisher_weight`` (‖·‖: the L2
                                                   norm of model t's whole Fisher), else 1
    θ   = Σ_t c_t (F_t + ε) θ_t / Σ_t c_t (F_t + ε)                      (entrywise)

which is the weighted average θ0 + Σ_t ŵ_t τ_t with entrywise weights ŵ_t = c_t (F_t + ε) /
Σ_s c_s (F_s + ε) summing to 1 (τ_t = θ_t − θ0; the θ0 terms cancel). What we compute is that
form, with the engine's knobs: θ = θ0 + λ·Σ_t ŵ_t·w_t·τ_t (``weights`` w_t multiply τ_t, as in
every method; λ = ``scaling``). With λ = 1 and w = 1 it is the paper's (and FusionBench's)
merge exactly.

Routing: every floating tensor (embeddings, the LM head, norms and biases included, as the
reference): each must have a Fisher in every statistics file, else the merge is refused before
any tensor is read, naming the tensor and the file. A parameter that got no gradient (F = 0 in
every model) falls back to the plain mean (ŵ_t = 1/T, the ε terms).

LoRA specialists: the statistics are those of the merged full weights θ0 + s·B·A (the stats
stage merges each adapter before its forward and backward passes), so the Fisher is of every
full weight; the LoRA task vector is formed densely (the weighting is entrywise).

Deviations from FusionBench (``fusion_bench/method/fisher_merging/fisher_merging.py``,
``merging_with_fisher_weights`` and ``get_models_fisher_norm``, read at commit 54c9e8c9 of
github.com/tanganke/fusion_bench):

- its ``fisher_scaling_coefficients`` (always 1/T in its ``FisherMergingAlgorithm``; the 1/T
  cancels) are not a knob; ``weights`` multiply τ_t instead, as in every method here;
- no ``exclude_param_names_regex`` (default there: none excluded; such a parameter keeps θ0);
  per-tensor params of ``hhh-bench merge`` YAMLs select tensors instead;
- ‖F_t‖ is over every tensor of the statistics file (the model's parameters), FusionBench's
  over the merged ones: the same when nothing is excluded;
- the estimator of F (in the stats stage): the mean over N samples of each sample's squared
  gradient (batch size 1), where FusionBench squares the gradient of a batch of 32 summed (a
  cross term between samples); see :mod:`hhh_bench.merging.datastats` for the loss.
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
    absolute_paths,
    fisher_coefficients,
    open_statistics,
)


@dataclass(frozen=True)
class FisherParams(CommonParams):
    """Fisher merging's hyperparameters."""

    statistics: tuple[str, ...] | None = param(None, STATISTICS_HELP)
    normalize_fisher_weight: bool = param(
        True,
        "Scale each model's Fisher by 1/(‖F_t‖ + ε), normalised over models (FusionBench's "
        "default), so a model with larger gradients does not dominate.",
    )
    minimal_fisher_weight: float = param(
        1e-6,
        "ε added to every Fisher entry (FusionBench's): entries with F ≪ ε get the plain mean.",
    )

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.minimal_fisher_weight < float("inf"):
            raise ValueError(
                "merge parameter 'minimal_fisher_weight' must be >= 0 and finite, got "
                f"{self.minimal_fisher_weight}"
            )
        absolute_paths(self)


def fisher_weights(fishers: Tensor, coefficients: Tensor, eps: float) -> Tensor:
    """ŵ_t = c_t (F_t + ε) / Σ_s c_s (F_s + ε) of a (T, *shape) Fisher stack and (T,) c."""
    return fisher_weights_(fishers.clone(), coefficients, eps)


def fisher_weights_(fishers: Tensor, coefficients: Tensor, eps: float) -> Tensor:
    """:func:`fisher_weights`, computed in place in ``fishers`` (a scratch stack) and returned."""
    c = coefficients.view(-1, *([1] * (fishers.dim() - 1)))
    scaled = fishers.add_(eps).mul_(c)
    total = scaled.sum(dim=0)
    if bool((total <= 0).any()):
        raise ValueError(
            "Fisher merging: an entry has Σ_t c_t (F_t + ε) = 0 (every Fisher is 0 there and "
            "ε = 0); set merge parameter 'minimal_fisher_weight' above 0"
        )
    return scaled.div_(total)


@register_method
class Fisher(MergeMethod[FisherParams]):
    """Fisher merging (arXiv:2111.09832): an entrywise average weighted by each model's
    diagonal Fisher, from each specialist's own training data."""

    name = "fisher"
    params_cls = FisherParams
    statistics_kind = "fisher"
    precompute_keys = (
        "statistics",
        "normalize_fisher_weight",
        "minimal_fisher_weight",
        "compute_dtype",
    )
    summary = (
        "entrywise average weighted by diagonal Fisher (Matena & Raffel 2022, arXiv:2111.09832)"
    )

    def check_merge(
        self, shapes: Mapping[str, tuple[int, ...]], num_models: int, params: FisherParams
    ) -> None:
        files = open_statistics(params.statistics, num_models, self.name)
        for f in files:
            for name, shape in shapes.items():
                if not f.has("fisher", name):
                    f.fisher(name)  # raises, naming the tensor and the file
                if f.shape("fisher", name) != tuple(shape):
                    raise ValueError(
                        f"{f.label}: the Fisher of {name!r} has shape "
                        f"{f.shape('fisher', name)}, the parameter {tuple(shape)}; the file was "
                        "computed for another model"
                    )

    def precompute(
        self,
        name: str,
        base: Tensor,
        taus: TaskVectors,
        params: FisherParams,
        plan_entry: Mapping[str, object],
    ) -> dict[str, Tensor]:
        files = open_statistics(params.statistics, len(taus), self.name)
        dev, dt = torch.device(params.device), params.dtype
        fishers = torch.empty((len(taus), *base.shape), dtype=dt, device=dev)
        for t, f in enumerate(files):
            one = f.fisher(name)
            if tuple(one.shape) != tuple(base.shape):
                raise ValueError(
                    f"{f.label}: the Fisher of {name!r} has shape {tuple(one.shape)}, the "
                    f"parameter {tuple(base.shape)}"
                )
            low, high = torch.aminmax(one) if one.numel() else (one.new_zeros(()),) * 2
            if not (bool(low >= 0) and bool(torch.isfinite(high))):  # NaN fails both
                raise ValueError(
                    f"{f.label}: the Fisher of {name!r} holds negative, NaN or Inf values (a "
                    "Fisher is a mean of squares); the file is corrupt"
                )
            fishers[t].copy_(one)
        coeffs = fisher_coefficients(
            files, params.minimal_fisher_weight, params.normalize_fisher_weight
        )
        c = torch.tensor(coeffs, dtype=dt, device=dev)
        stack = taus.consume()
        stack.mul_(fisher_weights_(fishers, c, params.minimal_fisher_weight))
        return {"tau": stack}

    def compose(
        self,
        name: str,
        base: Tensor,
        pre: Mapping[str, Tensor],
        params: FisherParams,
        plan_entry: Mapping[str, object],
    ) -> Tensor:
        stack = on_device(pre, params)["tau"]
        w = params.weight_tensor(len(stack), stack).reshape(-1)
        return finish(base, torch.tensordot(w, stack, dims=1), params)  # Σ_t w_t·stack_t
