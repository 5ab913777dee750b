"""Streaming calibration statistics of a linear module's input (rcpu-method.md, "Calibration statistics").

From the input activations ``x_t`` (t = 1..N) of a module we keep only sums::

    n = N,  s1 = Σ x_t,  sabs = Σ |x_t|,  G = Σ x_t x_tᵀ   ([d_in, d_in])

so statistics stream batch by batch, merge by addition and all-reduce with a plain sum.
``diag_only`` statistics keep ``diag(G) = Σ x_t²`` only (what the scores need; used by the
AL-AM structure pass). :func:`reduce_stats` packs many statistics into one flat tensor so that
one ``reduce`` call serves a whole pruning step, whatever the number of local batches.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

Reduce = Callable[[Tensor], Tensor]

#: Elements of one block of a Gram update (``x.T @ x[:, block]``): 8 M, 32 MB in float32.
_GRAM_BLOCK = 1 << 23

#: Tokens of cross-term products (:meth:`ChannelStats.update_with_outputs`) summed in the product dtype
#: (one ``addmm_`` per batch) before they are added to ``C``'s float64 (:meth:`ChannelStats.settle`). A
#: separate float64 add of each batch's [4096, 11008] product cost as much as a third of the product at
#: LLaMA-7B's down_proj; the float32 partial sum of 8192 tokens is what one float32 GEMM with an inner
#: size of 8192 would round, and the float64 sum of the partials keeps the error from growing with N.
_CROSS_FOLD_TOKENS = 8192


@dataclass
class ChannelStats:
    """Sums over tokens of a module input: ``n``, ``s1`` [d], ``sabs`` [d], ``G`` [d, d] (or [d]).

    With an explicit target ``t_t`` for the module's output (dense-target compensation,
    :mod:`.dense_target`) also ``C = Σ t xᵀ`` [d_out, d] and ``tsum = Σ t`` [d_out]; without one the
    target is the module's own output ``W x`` and these are ``W G`` and ``W s1``, derived when needed.
    """

    n: Tensor  # [] token count (float, so that it reduces with the rest)
    s1: Tensor  # [d]  Σ x
    sabs: Tensor  # [d]  Σ |x|
    G: Tensor  # [d, d] Σ x xᵀ, or [d] Σ x² when diag_only
    C: Tensor | None = None  # [d_out, d]  Σ t xᵀ (explicit targets only)
    tsum: Tensor | None = None  # [d_out]  Σ t
    # C's partial sum in the product dtype, not yet in C (update_with_outputs; settle() adds it)
    _partial: Tensor | None = field(default=None, repr=False, compare=False)
    _partial_tokens: int = field(default=0, repr=False, compare=False)

    @classmethod
    def zeros(
        cls, dim: int, dtype: torch.dtype = torch.float64, device=None, diag_only: bool = False,
        cross_rows: int | None = None,
    ) -> "ChannelStats":
        """Empty statistics for a ``dim``-wide input (a rank with no batches still has these); with
        ``cross_rows`` (``d_out``) also an empty ``C`` [d_out, dim] and ``tsum`` [d_out]."""
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype={dtype} is not supported; allowed: torch.float32, torch.float64")
        shape = (dim,) if diag_only else (dim, dim)
        cross = cross_rows is not None
        return cls(
            n=torch.zeros((), dtype=dtype, device=device),
            s1=torch.zeros(dim, dtype=dtype, device=device),
            sabs=torch.zeros(dim, dtype=dtype, device=device),
            G=torch.zeros(shape, dtype=dtype, device=device),
            C=torch.zeros(cross_rows, dim, dtype=dtype, device=device) if cross else None,
            tsum=torch.zeros(cross_rows, dtype=dtype, device=device) if cross else None,
        )

    @property
    def dim(self) -> int:
        return self.s1.numel()

    @property
    def diag_only(self) -> bool:
        return self.G.dim() == 1

    def update(self, x: Tensor, product_dtype: torch.dtype | None = None) -> None:
        """Add the tokens of ``x`` [..., d] (any leading shape) to the sums.

        ``product_dtype`` (e.g. float32): compute this batch's sums and Gram product in that dtype and
        add them to the accumulators (their dtype) once; default: the accumulators' dtype throughout.
        """
        x = self._tokens(x, product_dtype)  # [N, d]
        self.n += x.shape[0]
        self.s1 += x.sum(0)
        self.sabs += x.abs().sum(0)
        if self.diag_only:
            self.G += (x * x).sum(0)
            return
        # [d, d] in the product dtype, summed in G's, a block of columns at a time (the product of a
        # whole 11008-wide MLP input would be a 0.5 GB temporary, 1 GB with its cast, beside G). G is
        # symmetric: each block is computed from its diagonal down and mirrored above it (half the work)
        d = self.dim
        step = max(1, _GRAM_BLOCK // d)
        for j in range(0, d, step):
            e = min(j + step, d)
            block = x[:, j:].T @ x[:, j:e]  # [d - j, e - j]: rows j.. of columns j..e
            self.G[j:, j:e] += block
            if e < d:
                self.G[j:e, e:] += block[e - j :].T

    def _tokens(self, x: Tensor, product_dtype: torch.dtype | None) -> Tensor:
        """``x`` [..., d] as [N, d] on the statistics' device, in the product dtype (default: the sums')."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has {x.shape[-1]} features, these statistics have {self.dim}")
        return x.detach().reshape(-1, self.dim).to(device=self.s1.device, dtype=product_dtype or self.s1.dtype)

    def update_with_outputs(self, x: Tensor, y: Tensor, product_dtype: torch.dtype | None = None) -> None:
        """Add the tokens of ``x`` [..., d] and the cross term of the module's own outputs ``y = W x``
        [..., d_out]: ``C += Σ y xᵀ`` (= ``W G``, without ever forming ``G``; the rotation needs only
        ``C[:, K]``, see :func:`.compensation.uses_cross_term`)."""
        x = self._tokens(x, product_dtype)  # [N, d]
        self.update(x, product_dtype)
        y = y.detach().reshape(x.shape[0], -1).to(x.device, x.dtype)  # [N, d_out]
        if self.C is None or x.dtype == self.C.dtype:
            self.add_targets(y, x)
            return
        if self._partial is None:
            self._partial = torch.zeros(self.C.shape, dtype=x.dtype, device=x.device)
        self._partial.addmm_(y.T, x)  # [d_out, d] in the product dtype, no temporary
        self.tsum += y.sum(0)
        self._partial_tokens += x.shape[0]
        if self._partial_tokens >= _CROSS_FOLD_TOKENS:
            self.settle(release=False)

    def settle(self, release: bool = True) -> None:
        """Add the pending partial cross term to ``C`` (a no-op without one); ``release`` frees its buffer.
        :func:`collect_input_stats` settles its statistics on exit, and :meth:`tensors` before any read."""
        if self._partial is not None and self._partial_tokens:
            self.C += self._partial
            self._partial.zero_()
            self._partial_tokens = 0
        if release:
            self._partial = None

    def merge(self, other: "ChannelStats") -> "ChannelStats":
        """Sum of two statistics (new object)."""
        mine, theirs = self.tensors(), other.tensors()
        if other.dim != self.dim or other.diag_only != self.diag_only or len(mine) != len(theirs):
            raise ValueError("cannot merge statistics of different widths or kinds")
        return ChannelStats(*(a + b for a, b in zip(mine, theirs)))

    __add__ = merge

    def reduce(self, fn: Reduce | None) -> "ChannelStats":
        """Statistics summed over processes by ``fn`` (one call); identity when ``fn`` is None."""
        return reduce_stats([self], fn)[0]

    # -- derived per-channel quantities ([d] each) --------------------------------------------
    def diag(self) -> Tensor:
        """``diag(G) = Σ x²`` [d]."""
        return self.G if self.diag_only else torch.diagonal(self.G)

    def mean(self) -> Tensor:
        """``s1 / n`` [d]."""
        return self.s1 / self.n

    def mean_abs(self) -> Tensor:
        """``sabs / n`` [d]."""
        return self.sabs / self.n

    def var(self) -> Tensor:
        """Population variance ``G_jj / n − (s1_j / n)²``, clamped at 0 [d]."""
        return (self.diag() / self.n - self.mean() ** 2).clamp_min(0)

    def covariance(self) -> Tensor:
        """Population covariance ``G / n − μμᵀ`` [d, d] in float64 (full statistics only)."""
        mean = self.mean().double()
        return self.G.double() / self.n.double() - torch.outer(mean, mean)

    def l2(self) -> Tensor:
        """``||X[j, :]||₂ = sqrt(G_jj)`` [d]."""
        return self.diag().clamp_min(0).sqrt()

    def add_targets(self, t: Tensor, x: Tensor) -> None:
        """Add explicit targets ``t`` [N, d_out] for the inputs ``x`` [N, d] (same tokens, same dtype)."""
        if self.C is None:
            self.C = torch.zeros(t.shape[1], self.dim, dtype=self.G.dtype, device=self.G.device)
            self.tsum = torch.zeros(t.shape[1], dtype=self.G.dtype, device=self.G.device)
        self.C += t.T @ x  # [d_out, d] in the product dtype, summed in C's
        self.tsum += t.sum(0)

    def is_finite(self) -> bool:
        # a block at a time: isfinite makes temporaries of its input's size (an abs() copy and masks)
        blocks = (block for t in self.tensors() for block in t.reshape(-1).split(_GRAM_BLOCK))
        return all(bool(torch.isfinite(block).all()) for block in blocks)

    def tensors(self) -> tuple[Tensor, ...]:
        self.settle()
        return (self.n, self.s1, self.sabs, self.G) + ((self.C, self.tsum) if self.C is not None else ())


def reduce_stats(stats: Sequence[ChannelStats], fn: Reduce | None) -> list[ChannelStats]:
    """Sum ``stats`` over processes with ONE call of ``fn`` on a packed flat tensor.

    All statistics must share dtype and device. ``fn`` gets a fresh buffer of its own (it may reduce
    in place); the results are views into what it returns (no further copy: statistics of a 7B MLP are
    ~1 GB). ``fn=None`` (one process) returns ``stats`` themselves.
    """
    stats = list(stats)
    if fn is None or not stats:
        return stats
    dtypes = {s.s1.dtype for s in stats}
    devices = {s.s1.device for s in stats}
    if len(dtypes) != 1 or len(devices) != 1:
        raise ValueError(f"statistics to reduce together must share dtype/device, got {dtypes}, {devices}")
    flat = torch.cat([t.reshape(-1) for s in stats for t in s.tensors()])
    out = fn(flat)
    if not isinstance(out, Tensor) or out.shape != flat.shape:
        raise ValueError(f"reduce must return a tensor of shape {tuple(flat.shape)}, got {out!r:.80}")
    result, offset = [], 0
    for s in stats:
        parts = []
        for t in s.tensors():
            parts.append(out[offset : offset + t.numel()].view(t.shape))
            offset += t.numel()
        result.append(ChannelStats(*parts))
    return result


@contextmanager
def collect_input_stats(
    modules: dict[str, nn.Module],
    dtype: torch.dtype = torch.float64,
    diag_only: bool = False,
    product_dtype: torch.dtype | None = None,
    token_scale: Callable[[], Tensor] | None = None,
    cross: Collection[str] = (),
) -> Iterator[dict[str, ChannelStats]]:
    """Forward hooks accumulating each module's input statistics while the context is open.

    Yields ``{name: ChannelStats}`` (zero-initialised, so a process without batches still has
    statistics of the right shape). Hooks are removed on exit, even on error. ``token_scale()``, when
    given, returns a per-token factor [..., 1] that multiplies each input before it is added (the
    statistics of ``s_t x_t``: a token-weighted Gram ``Σ s_t² x_t x_tᵀ``). ``cross``: names of modules whose
    statistics are diagonal plus ``C = Σ (W x) xᵀ`` from the module's own outputs
    (:meth:`ChannelStats.update_with_outputs`), so those modules must run (a forward hook, after the product).
    """
    if cross and token_scale is not None:
        raise ValueError("cross-term statistics are not token-weighted; pass token_scale or cross, not both")
    stats = {
        name: ChannelStats.zeros(m.in_features, dtype, m.weight.device, diag_only or name in cross,
                                 m.out_features if name in cross else None)
        for name, m in modules.items()
    }

    def make_hook(name: str):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["input"]
            stats[name].update(x if token_scale is None else x * token_scale().to(x.device, x.dtype), product_dtype)

        def cross_hook(module, args, kwargs, output):
            y = output if module.bias is None else output - module.bias  # W x: the bias is not the product's
            stats[name].update_with_outputs(args[0] if args else kwargs["input"], y, product_dtype)

        return cross_hook if name in cross else hook

    handles = [m.register_forward_hook(make_hook(n), with_kwargs=True) if n in cross
               else m.register_forward_pre_hook(make_hook(n), with_kwargs=True) for n, m in modules.items()]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()
    for s in stats.values():
        s.settle()
