"""TSV-M: Task Singular Vectors merging (Gargiulo et al., "Task Singular Vectors: Reducing Task
Interference in Model Merging", CVPR 2025, arXiv:2412.00081, Sec. 4 and Algorithm 1).

Per 2-D parameter (m × n, r = min(m, n)) of weighted task vectors w_t·τ_t:

1. SVD τ_t = U_t Σ_t V_tᵀ; keep the top k_t = min(k, numerical rank of τ_t) triplets
   (U_t, σ_t, V_t). Directions whose σ is zero up to rounding are arbitrary and would rotate
   the real ones in step 3; the cutoff (``rank_rtol``, default max(m, n)·ε_float32 relative to
   σ_1) and how the triplets are computed (a float64 Gram eigendecomposition for dense τ, the
   exact thin SVD from the factors for a LoRA τ = s·B·A) are in :mod:`hhh_bench.merging.linalg`.
2. Stack them: U = [U_1 .. U_T] (m × K), σ = [σ_1 .. σ_T], V = [V_1 .. V_T] (n × K),
   K = Σ_t k_t ≤ T·k.
3. Replace each stack by its polar factor, the nearest matrix with orthonormal columns
   (Procrustes): U⊥ = U (UᵀU)^(-1/2), from the K × K Gram (:func:`~hhh_bench.merging.linalg.polar`);
   V⊥ likewise.
4. τ_m = U⊥ diag(w ⊙ σ) V⊥ᵀ (w_t repeated over its k_t triplets), θ = θ0 + λ·τ_m.

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
k as int(r·sv_reduction) with sv_reduction = 1/T; it keeps k directions whatever τ_t's rank (on
a rank-deficient τ_t, e.g. a LoRA update, its result depends on rounding: we keep
min(k, numerical rank)); it computes full SVDs of τ_t and of the stacks (we compute only what
is used, in float64; on full-rank inputs the results agree to float32 rounding); it excludes
CLIP's ``text_projection`` (we have the ``embeddings`` rule instead); it has no per-model
weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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
from hhh_bench.merging.linalg import polar, top_svd
from hhh_bench.merging.taskvec import TaskVector

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


def tsv_factors(
    taus: Sequence[TaskVector],
    k: int | Sequence[int],
    rtol: float | None = None,
    noise: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(U⊥ (m × K), σ (K,), V⊥ (n × K), task (K,)) of T dense or low-rank task vectors: each
    task's top k_t = min(k, numerical rank) triplets (``k`` one int, or one per task), stacked,
    U and V orthogonalised; ``task`` holds the task index of each column (so weights can be
    applied per task in compose). ``noise``: each task's storage rounding RMS
    (:attr:`TaskVectors.noise`; the numerical rank's floor). Float64 (the caller casts)."""
    ks = [int(k)] * len(taus) if isinstance(k, int) else [int(x) for x in k]
    floors = [0.0] * len(taus) if noise is None else [float(x) for x in noise]
    us, ss, vs, ids = [], [], [], []
    for t, tau in enumerate(taus):
        u, s, v = top_svd(tau, ks[t], rtol, floors[t])
        us.append(u)
        ss.append(s)
        vs.append(v)
        ids.append(torch.full((s.numel(),), t, dtype=torch.int64, device=s.device))
    u_stack, v_stack = torch.cat(us, dim=1), torch.cat(vs, dim=1)
    return polar(u_stack), torch.cat(ss), polar(v_stack), torch.cat(ids)


def tsv_compose(u: Tensor, s: Tensor, v: Tensor, task: Tensor, weights: Tensor) -> Tensor:
    """U⊥ diag(w_task ⊙ σ) V⊥ᵀ for the (T,) weights."""
    return (u * (weights[task] * s)) @ v.T


def tsv_merge(taus: Sequence[TaskVector], weights: Tensor, k: int) -> Tensor:
    """TSV-M of T task vectors with (T,) weights, k triplets per task at most."""
    u, s, v, task = tsv_factors(taus, k)
    dt = weights.dtype
    return tsv_compose(u.to(dt), s.to(dt), v.to(dt), task, weights)


def mean_merge(taus: Tensor, weights: Tensor) -> Tensor:
    """(1/T)·Σ_t w_t τ_t, TSV-M's rule for parameters it does not decompose."""
    return (weights * taus).mean(dim=0)


@dataclass(frozen=True)
class TsvParams(CommonParams):
    """TSV-M hyperparameters."""

    rank_fraction: float | None = param(
        None,
        "Share of each matrix's rank r kept per task, k = int(r·rank_fraction) clipped to "
        "[1, r // T] (null = 1/T, the paper's choice); a task keeps min(k, its numerical rank).",
    )
    rank_rtol: float | None = param(
        None,
        "Relative singular-value cutoff of the numerical rank: directions with σ ≤ rank_rtol·σ_1 "
        "are zero up to rounding and never enter the orthogonalisation (null = max(m, n)·ε of "
        "float32, the rounding floor of a float32 task vector).",
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
        if self.rank_rtol is not None and not 0.0 < self.rank_rtol < 1.0:
            raise ValueError(
                f"merge parameter 'rank_rtol' must be in (0, 1) or null, got {self.rank_rtol}"
            )


TP = TypeVar("TP", bound=TsvParams)


class TsvBase(MergeMethod[TP], Generic[TP]):
    """Routing and compose shared by TSV-M and RESM; subclasses decide how τ enters the SVD and
    how k is chosen (:meth:`svd_inputs`, :meth:`rank_for`)."""

    def route(self, name: str, shape: Sequence[int], num_models: int, params: TP) -> str:
        """``"tsv"``, ``"mean"`` or ``"base"`` for a parameter."""
        if is_embedding(name) and params.embeddings != "tsv":
            return params.embeddings
        if len(shape) != 2 or min(shape) < num_models:
            return "mean"
        return "tsv"

    def svd_inputs(
        self, name: str, taus: TaskVectors, params: TP, k: int
    ) -> tuple[list[TaskVector], list[int]]:
        """The task vectors that are decomposed and how many directions each may keep (TSV-M:
        the task vectors themselves, LoRA factors kept, k each; their numerical rank caps it)."""
        return list(taus.items), [k] * len(taus)

    def rank_for(self, r: int, num_models: int, params: TP, plan_entry: Mapping[str, Any]) -> int:
        """k for a matrix of rank bound r (TSV-M: :func:`tsv_rank` of ``rank_fraction``)."""
        return tsv_rank(r, num_models, params.rank_fraction)

    def precompute(
        self,
        name: str,
        base: Tensor,
        taus: TaskVectors,
        params: TP,
        plan_entry: Mapping[str, Any],
    ) -> dict[str, Tensor]:
        mode = self.route(name, base.shape, len(taus), params)
        if mode == "base":
            return {}
        if mode == "mean":
            return {"tau": taus.stack()}
        k = self.rank_for(min(base.shape), len(taus), params, plan_entry)
        inputs, ks = self.svd_inputs(name, taus, params, k)
        u, s, v, task = tsv_factors(inputs, ks, params.rank_rtol, taus.noise)
        dt = params.dtype
        num = torch.tensor(len(taus), dtype=torch.int64)
        return {"U": u.to(dt), "S": s.to(dt), "V": v.to(dt), "task": task, "num_models": num}

    def compose(
        self,
        name: str,
        base: Tensor,
        pre: Mapping[str, Tensor],
        params: TP,
        plan_entry: Mapping[str, Any],
    ) -> Tensor:
        pre = on_device(pre, params)
        if "tau" in pre:
            taus = pre["tau"]
            return finish(base, mean_merge(taus, params.weight_tensor(len(taus), taus)), params)
        if "S" in pre:
            s = pre["S"]
            num = int(pre["num_models"])
            w = torch.tensor(params.resolve_weights(num), dtype=s.dtype, device=s.device)
            merged = tsv_compose(pre["U"], s, pre["V"], pre["task"], w)
            return finish(base, merged, params)
        return base.clone()  # mode "base": θ0 whatever λ


@register_method
class Tsv(TsvBase[TsvParams]):
    """TSV-M (arXiv:2412.00081): per-matrix low-rank task subspaces, decorrelated by
    orthogonalising the stacked singular vectors."""

    name = "tsv"
    params_cls = TsvParams
    precompute_keys = ("rank_fraction", "rank_rtol", "embeddings", "compute_dtype")
    summary = (
        "task singular vectors, stacked and orthogonalised (Gargiulo et al. 2025, arXiv:2412.00081)"
    )
