"""SparseGPT-style token perplexity (eval-protocol.md section 2.2).

The token stream is cut into non-overlapping windows of ``L`` tokens (done by the data package,
``rcpu_lightning.data.wikitext.perplexity_windows``). Each window is an independent forward pass; its
``L - 1`` shifted predictions are scored, and

    PPL = exp( sum over all windows of the NLL / (n_windows * (L - 1)) )

which equals FLAP/Wanda's ``exp(mean of per-window mean losses)`` because every window scores the same
number of tokens. The metric keeps *sums* (float64 NLL, int64 token count) with ``dist_reduce_fx="sum"``
so the value from several ranks is exactly the value of one process over all windows.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from ..models import model_device

__all__ = ["Perplexity", "evaluate_perplexity", "window_nll"]

# Positions scored per cross-entropy call; bounds the float32 [chunk, V] temporary (128k vocab -> 256 MB).
_POSITION_CHUNK = 512


def window_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL (float64) and number of scored tokens for a batch of windows.

    ``logits[b, t]`` predicts ``input_ids[b, t + 1]``; the last position of each window has no target.
    log-softmax runs in float32 whatever the model dtype (chunked over positions to bound memory); the
    per-token values are summed in float64 so that sums over any split of the windows agree to ~1e-15.
    """
    if logits.dim() != 3 or input_ids.dim() != 2 or logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"expected logits [B, T, V] and input_ids [B, T]; got {tuple(logits.shape)} and {tuple(input_ids.shape)}"
        )
    batch, seqlen, vocab = logits.shape
    if seqlen < 2:
        return torch.zeros((), dtype=torch.float64, device=logits.device), 0
    pred = logits[:, :-1, :].reshape(-1, vocab)
    target = input_ids[:, 1:].reshape(-1).to(logits.device)
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for start in range(0, pred.shape[0], _POSITION_CHUNK):
        chunk = pred[start : start + _POSITION_CHUNK].float()
        per_token = F.cross_entropy(chunk, target[start : start + _POSITION_CHUNK], reduction="none")
        total += per_token.double().sum()  # float32 per token, float64 accumulation
    return total, batch * (seqlen - 1)


class Perplexity(Metric):
    """Token perplexity over non-overlapping windows; exact under DDP (sum states).

    ``update(logits [B, T, V], input_ids [B, T])`` adds ``B * (T - 1)`` shifted predictions.
    ``compute()`` returns ``exp(nll_sum / token_count)`` (float64 scalar tensor) after the usual
    torchmetrics sync; it also stores the global totals in ``self.tokens`` and ``self.mean_nll``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    nll_sum: torch.Tensor
    token_count: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("token_count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.tokens: int | None = None
        self.mean_nll: float | None = None

    def update(self, logits: torch.Tensor, input_ids: torch.Tensor) -> None:
        nll, count = window_nll(logits, input_ids)
        self.nll_sum += nll.to(self.nll_sum.device)
        self.token_count += count

    def compute(self) -> torch.Tensor:
        count = int(self.token_count)
        if count == 0:
            raise RuntimeError("Perplexity.compute() called before any tokens were scored")
        self.tokens = count
        self.mean_nll = float(self.nll_sum) / count
        return torch.exp(self.nll_sum / count)


@torch.no_grad()
def evaluate_perplexity(
    model: torch.nn.Module,
    windows: torch.Tensor,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, float | int]:
    """Perplexity of ``model`` on ``windows`` (LongTensor [n, L]), one independent forward per window.

    Returns ``{"ppl", "tokens", "windows", "seqlen", "mean_nll"}``; ``tokens = n * (L - 1)``.
    """
    if windows.dim() != 2 or windows.shape[0] == 0:
        raise ValueError(f"windows must be a non-empty LongTensor [n, L]; got shape {tuple(windows.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    was_training = model.training
    model.eval()
    metric = Perplexity(sync_on_compute=False).to(device)
    try:
        kwargs = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    except (TypeError, ValueError):
        kwargs = {}
    starts = range(0, windows.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="perplexity", unit="batch")
    try:
        for start in starts:
            batch = windows[start : start + batch_size].to(device)
            out = model(input_ids=batch, **kwargs)
            logits = out.logits if hasattr(out, "logits") else out
            metric.update(logits, batch)
        ppl = float(metric.compute())
    finally:
        model.train(was_training)
    return {
        "ppl": ppl if math.isfinite(ppl) else float("inf"),
        "tokens": int(metric.tokens),
        "windows": int(windows.shape[0]),
        "seqlen": int(windows.shape[1]),
        "mean_nll": float(metric.mean_nll),
    }
