"""Continuation log-likelihoods with the lm-evaluation-harness protocol (eval-protocol.md 1.3).

After the tokenisation of :mod:`.encoding` (steps 1 and 2), per request:

3. model input = last ``max_length + 1`` tokens of ``ctx + cont`` minus the final one (left truncation);
4. log-softmax in float32; ``ll`` = sum of the log-probs of the continuation tokens.

Requests are sorted by descending length, batched with right padding and no attention mask (padding sits
after every scored position, so causal attention makes it harmless), identical inputs are computed once
(the harness' logits cache), and only the positions that are scored go through the LM head when the model
supports ``logits_to_keep``.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..models import model_device
from .encoding import encode_request, resolve_max_length
from .tasks import MultipleChoiceItem

__all__ = ["request_loglikelihoods", "item_loglikelihoods"]

log = logging.getLogger(__name__)

# Unique model input (token ids) -> the requests scored on it: (request index, continuation ids).
_Inputs = dict[tuple[int, ...], list[tuple[int, list[int]]]]


def _forward_kwargs(model: torch.nn.Module) -> set[str]:
    """Which of ``logits_to_keep`` / ``use_cache`` the model's ``forward`` accepts."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return set()
    return {n for n in ("logits_to_keep", "use_cache") if n in params}


def _forward_logits(model: torch.nn.Module, input_ids: torch.Tensor, keep: int, accepted: set[str]) -> torch.Tensor:
    """Logits of the last ``keep`` positions ([B, keep, V]); the whole sequence when not supported."""
    kwargs: dict[str, Any] = {}
    if "use_cache" in accepted:
        kwargs["use_cache"] = False
    trimmed = "logits_to_keep" in accepted and keep < input_ids.shape[1]
    if trimmed:
        kwargs["logits_to_keep"] = keep
    out = model(input_ids=input_ids, **kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
    if logits.shape[1] != keep:
        logits = logits[:, -keep:, :]
    return logits


def _group_by_input(encoded: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int) -> _Inputs:
    """Step 3 for every request; requests with identical model inputs share one entry (one forward)."""
    inputs: _Inputs = {}
    truncated = 0
    for idx, (ctx, cont) in enumerate(encoded):
        cont = list(cont)
        if len(cont) > max_length:
            raise ValueError(f"continuation of request {idx} has {len(cont)} tokens > max_length={max_length}")
        full = list(ctx) + cont
        truncated += len(full) - 1 > max_length
        inp = tuple(full[-(max_length + 1) :][:-1])
        if len(inp) < len(cont) or not inp:
            raise ValueError(f"request {idx}: no context token before the continuation (empty context encoding)")
        inputs.setdefault(inp, []).append((idx, cont))
    if truncated:
        log.warning("%d request(s) longer than max_length=%d were left-truncated", truncated, max_length)
    return inputs


def _continuation_ll(row_logits: torch.Tensor, cont: list[int]) -> float:
    """Step 4: ``row_logits[i]`` ([len(cont), V]) predicts ``cont[i]``; float32 log-softmax, float64 sum."""
    if not cont:
        return 0.0
    logprobs = F.log_softmax(row_logits.float(), dim=-1)  # [len(cont), V]
    target = torch.tensor(cont, dtype=torch.long, device=logprobs.device)  # [len(cont)]
    return float(logprobs.gather(-1, target[:, None]).sum(dtype=torch.float64))


def _score_chunk(
    model: torch.nn.Module, chunk: Sequence[tuple[int, ...]], inputs: _Inputs, results: list[float],
    accepted: set[str], pad_token_id: int,
) -> None:
    """One right-padded forward over ``chunk`` (unique inputs); writes each request's ``ll`` into ``results``."""
    width = max(len(t) for t in chunk)
    batch = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)  # [B, width]
    first_scored = width  # earliest position whose logits some request needs
    for row, inp in enumerate(chunk):
        batch[row, : len(inp)] = torch.tensor(inp, dtype=torch.long)
        first_scored = min(first_scored, len(inp) - max(len(c) for _, c in inputs[inp]))
    keep = max(width - first_scored, 1)
    logits = _forward_logits(model, batch.to(model_device(model)), keep, accepted)  # [B, keep, V]
    offset = width - keep  # absolute position of logits[:, 0]
    for row, inp in enumerate(chunk):
        for idx, cont in inputs[inp]:
            lo = len(inp) - len(cont) - offset
            results[idx] = _continuation_ll(logits[row, lo : lo + len(cont)], cont)


@torch.no_grad()
def request_loglikelihoods(
    model: torch.nn.Module,
    encoded: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_length: int,
    batch_size: int = 16,
    progress: bool = False,
    pad_token_id: int = 0,
) -> list[float]:
    """Summed continuation log-probabilities of pre-tokenised ``(context_ids, continuation_ids)`` pairs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs = _group_by_input(encoded, max_length)
    order = sorted(inputs, key=lambda t: (-len(t), t))  # longest first, as the harness
    results = [0.0] * len(encoded)
    accepted = _forward_kwargs(model)
    starts: Iterable[int] = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="loglikelihood", unit="batch", total=math.ceil(len(order) / batch_size))
    for start in starts:
        _score_chunk(model, order[start : start + batch_size], inputs, results, accepted, pad_token_id)
    return results


def item_loglikelihoods(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[MultipleChoiceItem],
    bos: bool | None = None,
    max_length: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[float]]:
    """Per item, the summed log-probability of each choice's continuation (harness ``loglikelihood``).

    The model is used as is (call ``model.eval()`` first; Lightning's eval loops do). ``max_length``
    defaults to :func:`~.encoding.resolve_max_length`; ``bos``: see :mod:`.encoding`.
    """
    if max_length is None:
        max_length = resolve_max_length(model, tokenizer)
    encoded = [encode_request(tokenizer, context, continuation, bos) for item in items for context, continuation in item.requests]
    flat = request_loglikelihoods(model, encoded, max_length=max_length, batch_size=batch_size, progress=progress)
    out: list[list[float]] = []
    pos = 0
    for item in items:
        out.append(flat[pos : pos + item.num_choices])
        pos += item.num_choices
    return out
