"""Task vectors of one parameter, dense or low-rank, as the merge methods receive them.

τ_t = θ_t − θ0 for a full-weight specialist; τ_t = s·B·A for a LoRA adapter (B: m × r,
A: r × n, s = lora_alpha / r or lora_alpha / √r with rsLoRA), kept as its factors so that SVD
methods decompose it exactly in O((m + n)·r²) (:func:`hhh_bench.merging.linalg.top_svd`) and no
method ever sees a task vector rounded through the model's dtype (a bf16 θ0 + s·B·A loses most
of a small LoRA update to rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LowRank:
    """τ = scale · b @ a, with b: (m, r) and a: (r, n); r = 0 is the zero task vector."""

    b: Tensor
    a: Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.b.dim() != 2 or self.a.dim() != 2 or self.b.shape[1] != self.a.shape[0]:
            raise ValueError(
                f"low-rank task vector: B {tuple(self.b.shape)} and A {tuple(self.a.shape)} "
                "do not multiply (expected B: m × r, A: r × n)"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.b.shape[0]), int(self.a.shape[1]))

    @property
    def rank(self) -> int:
        return int(self.b.shape[1])

    @staticmethod
    def zero(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> LowRank:
        """The zero task vector of a 2-D parameter (an adapter that leaves it untouched)."""
        m, n = (int(d) for d in shape)
        return LowRank(torch.zeros(m, 0, dtype=dtype), torch.zeros(0, n, dtype=dtype), 0.0)

    def to(self, dtype: torch.dtype, device: torch.device | str) -> LowRank:
        return LowRank(
            self.b.to(device=device, dtype=dtype), self.a.to(device=device, dtype=dtype), self.scale
        )

    def dense(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
        """s·B·A as an (m, n) tensor, computed in ``dtype``."""
        b, a = self.b.to(device=device, dtype=dtype), self.a.to(device=device, dtype=dtype)
        if self.rank == 0:
            return torch.zeros(self.shape, dtype=dtype, device=device)
        return (b * self.scale) @ a

    def transposed(self) -> LowRank:
        """τᵀ = s·Aᵀ·Bᵀ (peft's ``fan_in_fan_out`` layers store the weight transposed)."""
        return LowRank(self.a.T, self.b.T, self.scale)

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.b).all()) and bool(torch.isfinite(self.a).all())


TaskVector = Tensor | LowRank
"""One task's τ for one parameter: a dense tensor in the compute dtype, or its LoRA factors."""

SIGNIFICAND_BITS = {torch.bfloat16: 8, torch.float16: 11}
"""Significand bits (the implicit one included) of the storage dtypes coarser than float32."""

ROUNDING_BITS = {**SIGNIFICAND_BITS, torch.float32: 24}
"""Significand bits of every dtype whose rounding :meth:`TaskVectors.rounding` counts (float64's
is below any cutoff here)."""


def rounding_rms(values: Tensor, storage: torch.dtype, *, bits: int | None = None) -> float:
    """The RMS of the error made when ``values`` were rounded to nearest into ``storage``: each
    entry x = m·2^e (m in [0.5, 1)) lies on a grid of spacing 2^(e − p) (p: the dtype's
    significand bits), and its rounding error, uniform on ±spacing/2, has variance
    spacing²/12. Exact zeros add nothing. 0 for float32 and wider (their rounding is below
    the float32 cutoff of :mod:`hhh_bench.merging.linalg` already), unless ``bits`` gives the
    significand bits to use (24 for float32: :meth:`TaskVectors.rounding`).

    This is the noise floor of a task vector θ_t − θ0 whose θ_t was stored in bf16 or fp16: the
    rounding of θ_t is a dense matrix of roughly independent entries, of full rank, whose
    largest singular value is about rms·(√m + √n) (:func:`hhh_bench.merging.linalg.noise_floor`).
    """
    bits = SIGNIFICAND_BITS.get(storage) if bits is None else bits
    if bits is None or values.numel() == 0:
        return 0.0
    x = values.detach().to(torch.float32)
    _, exponent = torch.frexp(x)
    spacing_sq = torch.pow(4.0, (exponent - bits).to(torch.float32))  # no float64 copy
    spacing_sq = torch.where(x == 0, 0.0, spacing_sq)
    return float((spacing_sq.mean(dtype=torch.float64) / 12.0).sqrt())


class TaskVectors:
    """The T task vectors of one parameter, in the compute dtype and on the compute device.

    ``items`` keeps each τ_t as it came (dense or :class:`LowRank`); :meth:`stack` is the dense
    (T, *shape) stack, built once (methods that work entrywise use it; SVD methods use the items,
    so a LoRA task vector is never formed as an m × n matrix for them).
    """

    def __init__(
        self,
        items: Sequence[TaskVector],
        shape: Sequence[int],
        dtype: torch.dtype,
        device: torch.device | str,
        *,
        stack: Tensor | None = None,
        single_use: bool = False,
    ) -> None:
        self.items = list(items)
        self._noise: list[float] | None = None
        self._rounding: list[float] | None = None
        self._storage: list[torch.dtype | None] = [None] * len(self.items)
        self._base: Tensor | None = None
        self.single_use = single_use
        self._consumed = False
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self.device = torch.device(device)
        self._stack = stack

    @classmethod
    def from_weights(
        cls,
        base: Tensor,
        finetuned: Sequence[Tensor],
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        *,
        single_use: bool = False,
    ) -> TaskVectors:
        """τ_t = θ_t − θ0 of full weights, filled into one preallocated (T, *shape) stack
        (``single_use``: see :meth:`consume`). A θ_t stored in bf16 or fp16 records its rounding
        floor in :attr:`noise` (matrices only: the SVD methods' input)."""
        dev = torch.device(device)
        out = torch.empty((len(finetuned), *base.shape), dtype=dtype, device=dev)
        b = base.to(device=dev, dtype=dtype)
        for t, ft in enumerate(finetuned):
            out[t].copy_(ft)
            out[t].sub_(b)
        tv = cls(list(out), base.shape, dtype, dev, stack=out, single_use=single_use)
        tv._storage, tv._base = [ft.dtype for ft in finetuned], b
        return tv

    @property
    def noise(self) -> list[float]:
        """Per task, the RMS rounding error of its θ_t's storage (:func:`rounding_rms` of
        θ_t = τ_t + θ0; 0 for float32 storage, LoRA factors and non-matrices): the floor below
        which the SVD methods count no direction of τ_t
        (:func:`hhh_bench.merging.linalg.noise_floor`). Computed on first use, so that only the
        SVD methods pay its pass over the weights."""
        if self._noise is None:
            coarse = self._base is not None and len(self.shape) == 2
            self._noise = [
                rounding_rms(self.stack()[t] + self._base, st)
                if coarse and st in SIGNIFICAND_BITS
                else 0.0
                for t, st in enumerate(self._storage)
            ]
        return self._noise

    def rounding(self) -> list[float]:
        """Per task, the RMS rounding error in θ_t as the arithmetic sees it, float32 included:
        θ_t = τ_t + θ0 rounded to the coarser of its storage dtype and the compute dtype (float64
        weights merged in float32 are rounded to float32 when the task vectors are formed); 0
        for LoRA factors, non-matrices and float64 throughout. :attr:`noise` counts bf16 and
        fp16 only (TSV-M's relative cutoff covers float32 there); a method that gives every
        direction it keeps the same weight (Iso-C, Iso-CTS) needs float32's floor as well: the
        rounding of a float32 θ_t is ε32-relative to θ, not to a small τ_t. Computed on first
        use."""
        if self._rounding is None:
            coarse = self._base is not None and len(self.shape) == 2
            out = []
            for t, st in enumerate(self._storage):
                bits = min(ROUNDING_BITS.get(st, 53), ROUNDING_BITS.get(self.dtype, 53))
                if not coarse or st is None or bits >= 53:
                    out.append(0.0)
                else:
                    out.append(rounding_rms(self.stack()[t] + self._base, st, bits=bits))
            self._rounding = out
        return self._rounding

    @classmethod
    def from_stack(cls, stack: Tensor) -> TaskVectors:
        """Task vectors already stacked as (T, *shape)."""
        return cls(list(stack), stack.shape[1:], stack.dtype, stack.device, stack=stack)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def any_lowrank(self) -> bool:
        return any(isinstance(t, LowRank) for t in self.items)

    def stack(self) -> Tensor:
        """The dense (T, *shape) stack (LoRA factors multiplied out in the compute dtype)."""
        if self._consumed:
            raise RuntimeError("these task vectors were consumed (TaskVectors.consume)")
        if self._stack is None:
            out = torch.empty((len(self.items), *self.shape), dtype=self.dtype, device=self.device)
            for t, tau in enumerate(self.items):
                if isinstance(tau, LowRank):
                    out[t].copy_(tau.dense(self.dtype, self.device))
                else:
                    out[t].copy_(tau)
            self._stack = out
            # dense items become views of the stack (no second copy); LoRA factors stay
            self.items = [
                tau if isinstance(tau, LowRank) else out[t] for t, tau in enumerate(self.items)
            ]
        return self._stack

    def consume(self) -> Tensor:
        """The dense stack for a caller that overwrites it in place (a method's ``prepare``).

        Task vectors built for one use (``single_use=True``: the merge driver's, one parameter,
        deleted after its merge) hand over their own stack, so trimming or dropping needs no
        second T-sized buffer, and cannot be used after; any others return a copy."""
        stack = self.stack()
        if not self.single_use:
            return stack.clone()
        self._stack, self.items, self._consumed = None, [], True
        return stack
