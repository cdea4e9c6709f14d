"""TSV-M: Task Singular Vectors merging (Gargiulo et al., "Task Singular Vectors: Reducing Task
Interference in Model Merging", CVPR 2025, arXiv:2412.00081, Sec. 4 and Algorithm 1).

Per 2-D parameter (m × n, r = min(m, n)) of weighted task vectors w_t·τ_t:

1. SVD τ_t = U_t Σ_t V_tᵀ; keep the top k triplets (U_t,k, σ_t,k, V_t,k).
2. Stack them: U = [U_1,k .. U_T,k] (m × Tk), σ = [σ_1,k .. σ_T,k], V = [V_1,k .. V_T,k] (n × Tk).
3. Replace each stack by its polar factor, the nearest matrix with orthonormal columns
   (Procrustes): U⊥ = P Qᵀ where U = P S Qᵀ is a thin SVD; V⊥ likewise.
4. τ_m = U⊥ diag(w ⊙ σ) V⊥ᵀ (w_t repeated over its k triplets), θ = θ0 + λ·τ_m.

The polar factors do not depend on the weights: scaling τ_t by w_t scales σ_t (a negative w_t
flips the signs of U_t,k, and polar(A·D) = polar(A)·D for a diagonal D of ±1), so weights and λ
are applied in ``compose`` and the SVDs are cached across sweeps of them.

Routing (by parameter name and shape):

- embeddings and the LM head (:func:`is_embedding`): ``embeddings`` = ``mean`` (default, the mean
  of w_t τ_t), ``tsv`` (as any matrix) or ``base`` (keep θ0);
- other 2-D parameters: TSV-M;
- everything else (biases, norms, conv kernels): the mean (1/T)·Σ_t w_t τ_t, as the official code.

Rank: k = int(r·rank_fraction), with ``rank_fraction`` = null meaning 1/T, computed as r // T
(exact; the official ``int(r * (1/T))`` can round down by one, e.g. int(49·(1/49)) = 0).
k is clipped to r // T so that T·k ≤ r and U⊥, V⊥ have orthonormal columns (in the released
code the blocks then no longer fit its m × r stack), and raised to 1 if it rounds to 0 (the
released code then merges the matrix to 0). A matrix with r < T cannot hold T orthonormal
directions and falls back to the mean.

Deviations from the authors' released code (``compute_and_sum_svd_mem_reduction``): it stacks
into an m × r zero-padded matrix (the polar factor of the non-zero block is the same); it rounds
k as int(r·sv_reduction) with sv_reduction = 1/T; it excludes CLIP's ``text_projection`` (we
have the ``embeddings`` rule instead); it has no per-model weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hhh_bench.merging.base import (
    CommonParams,
    MergeMethod,
    finish,
    on_device,
    param,
    register_method,
    task_vectors,
)

EMBEDDING_MODULES = frozenset(
    {
        "embed_tokens",  # Llama, Mistral, Qwen, Gemma
        "embed_in",  # GPT-NeoX
        "embed_out",  # GPT-NeoX LM head
        "wte",  # GPT-2 token embeddings
        "wpe",  # GPT-2 position embeddings
        "word_embeddings",  # BERT, Bloom, Falcon
        "position_embeddings",
        "token_type_embeddings",
        "tok_embeddings",  # Meta's original Llama checkpoints
        "lm_head",
        "shared",  # T5
    }
)


def is_embedding(name: str) -> bool:
    """Whether ``name`` is an embedding table or the LM head: one of its dotted components is in
    :data:`EMBEDDING_MODULES`, or it is Meta's top-level ``output.weight``."""
    return name == "output.weight" or any(p in EMBEDDING_MODULES for p in name.split("."))


def tsv_rank(r: int, num_models: int, rank_fraction: float | None, multiplier: float = 1.0) -> int:
    """Triplets kept per task: int(r·f·multiplier) with f = rank_fraction (None: exactly 1/T),
    clipped to [1, r // T]; 0 when r < T (the caller then falls back to the mean)."""
    cap = r // num_models
    if cap == 0:
        return 0
    if rank_fraction is None:
        k = int(r * multiplier / num_models)  # r / T is exact for r divisible by T
    else:
        k = int(r * rank_fraction * multiplier)
    return max(1, min(k, cap))


def polar_factor(a: Tensor) -> Tensor:
    """The orthonormal polar factor P Qᵀ of ``a`` = P S Qᵀ (thin SVD)."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def tsv_factors(taus: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(U⊥ (m × Tk), σ (T × k), V⊥ (n × Tk)) of a (T, m, n) stack of task vectors."""
    num_models, m, n = taus.shape
    u, s, vh = torch.linalg.svd(taus, full_matrices=False)  # batched over T
    u_stack = u[:, :, :k].permute(1, 0, 2).reshape(m, num_models * k)
    v_stack = vh[:, :k, :].reshape(num_models * k, n).T
    return polar_factor(u_stack), s[:, :k].contiguous(), polar_factor(v_stack)


def tsv_compose(u: Tensor, s: Tensor, v: Tensor, weights: Tensor) -> Tensor:
    """U⊥ diag(w ⊙ σ) V⊥ᵀ for σ of shape (T, k) and weights of shape (T, 1)."""
    return (u * (weights * s).reshape(-1)) @ v.T


def tsv_merge(taus: Tensor, weights: Tensor, k: int) -> Tensor:
    """TSV-M of a (T, m, n) stack with (T, 1) weights: U⊥ diag(w ⊙ σ) V⊥ᵀ, k triplets per task."""
    return tsv_compose(*tsv_factors(taus, k), weights)


def mean_merge(taus: Tensor, weights: Tensor) -> Tensor:
    """(1/T)·Σ_t w_t τ_t, TSV-M's rule for parameters it does not decompose."""
    return (weights * taus).mean(dim=0)


@dataclass(frozen=True)
class TsvParams(CommonParams):
    """TSV-M hyperparameters."""

    rank_fraction: float | None = param(
        None,
        "Share of each matrix's rank r kept per task, k = int(r·rank_fraction) clipped to "
        "[1, r // T] (null = 1/T, the paper's choice).",
    )
    embeddings: str = param(
        "mean",
        "Rule for embeddings and the LM head: mean of w_t·τ_t, TSV-M like other matrices, or "
        "keep the base's.",
        choices=("mean", "tsv", "base"),
    )

    def validate(self) -> None:
        super().validate()
        if self.rank_fraction is not None and not 0.0 < self.rank_fraction <= 1.0:
            raise ValueError(
                f"merge parameter 'rank_fraction' must be in (0, 1] or null, got {self.rank_fraction}"
            )


class TsvBase(MergeMethod):
    """Routing and compose shared by TSV-M and RESM; subclasses decide how τ enters the SVD and
    how k is chosen (:meth:`svd_input`, :meth:`rank_for`)."""

    def route(self, name: str, shape: Sequence[int], num_models: int, params: TsvParams) -> str:
        """``"tsv"``, ``"mean"`` or ``"base"`` for a parameter."""
        if is_embedding(name) and params.embeddings != "tsv":
            return params.embeddings
        if len(shape) != 2 or min(shape) < num_models:
            return "mean"
        return "tsv"

    def svd_input(self, name: str, taus: Tensor, params: TsvParams) -> Tensor:
        """The (T, m, n) stack that is decomposed (TSV-M: the task vectors themselves)."""
        return taus

    def rank_for(
        self, r: int, num_models: int, params: TsvParams, plan_entry: Mapping[str, Any]
    ) -> int:
        """k for a matrix of rank bound r (TSV-M: :func:`tsv_rank` of ``rank_fraction``)."""
        return tsv_rank(r, num_models, params.rank_fraction)

    def precompute(
        self,
        name: str,
        base: Tensor,
        finetuned: Sequence[Tensor],
        params: CommonParams,
        plan_entry: Mapping[str, Any],
    ) -> dict[str, Tensor]:
        assert isinstance(params, TsvParams)
        mode = self.route(name, base.shape, len(finetuned), params)
        if mode == "base":
            return {}
        taus = task_vectors(base, finetuned, params)
        if mode == "mean":
            return {"tau": taus}
        k = self.rank_for(min(base.shape), len(finetuned), params, plan_entry)
        u, s, v = tsv_factors(self.svd_input(name, taus, params), k)
        return {"U": u, "S": s, "V": v}

    def compose(
        self,
        name: str,
        base: Tensor,
        pre: Mapping[str, Tensor],
        params: CommonParams,
        plan_entry: Mapping[str, Any],
    ) -> Tensor:
        pre = on_device(pre, params)
        if "tau" in pre:
            taus = pre["tau"]
            return finish(base, mean_merge(taus, params.weight_tensor(len(taus), taus)), params)
        if "S" in pre:
            s = pre["S"]
            merged = tsv_compose(pre["U"], s, pre["V"], params.weight_tensor(len(s), s))
            return finish(base, merged, params)
        return base.clone()  # mode "base": θ0 whatever λ


@register_method
class Tsv(TsvBase):
    """TSV-M (arXiv:2412.00081): per-matrix low-rank task subspaces, decorrelated by
    orthogonalising the stacked singular vectors."""

    name = "tsv"
    params_cls = TsvParams
    precompute_keys = ("rank_fraction", "embeddings", "compute_dtype")
    summary = (
        "task singular vectors, stacked and orthogonalised (Gargiulo et al. 2025, arXiv:2412.00081)"
    )
