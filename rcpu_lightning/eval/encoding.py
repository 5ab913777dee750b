"""Tokenisation of multiple-choice requests with the lm-evaluation-harness rules (eval-protocol.md 1.3).

Per request ``(context, continuation)`` (harness ``TemplateLM._encode_pair``):

1. trailing whitespace of the context moves to the front of the continuation;
2. ``whole = encode(context + continuation)``, ``ctx = encode(context)``, continuation tokens =
   ``whole[len(ctx):]`` (a merge across the boundary is attributed to the continuation, as in the harness);
   an empty context becomes ``[prefix_token]`` (BOS, else EOS).

BOS switch ``bos``: ``None`` = tokenizer default (harness >= 0.4.9.2), ``False`` = never (harness
0.3 - 0.4.9.1, LLM-Pruner, Wanda), ``True`` = always prepend ``bos_token_id``.

The model's context length (:func:`resolve_max_length`) follows the harness too; scoring with it is
:mod:`.loglikelihood`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_MAX_LENGTH", "encode_request", "resolve_max_length"]

_HF_HUGE_MAX_LENGTH = 1000000000000000019884624838656  # transformers' "no limit" sentinel
DEFAULT_MAX_LENGTH = 2048


def _encode(tokenizer: Any, text: str, bos: bool | None) -> list[int]:
    """Token ids of ``text`` under the BOS switch (see the module docstring)."""
    if bos is None:
        # Tokenizer default; a string already starting with the BOS text gets no second one (harness HEAD).
        bos_text = getattr(tokenizer, "bos_token", None)
        add = not (bos_text and text.startswith(bos_text))
        return list(tokenizer.encode(text, add_special_tokens=add))
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if bos:
        bos_id = getattr(tokenizer, "bos_token_id", None)
        if bos_id is None:
            raise ValueError(f"bos=True but the tokenizer {type(tokenizer).__name__} has no bos_token_id")
        if not ids or ids[0] != bos_id:
            ids = [bos_id] + ids
    return ids


def _prefix_token_id(tokenizer: Any) -> int:
    """The token that stands for an empty context: BOS, else EOS."""
    tok = getattr(tokenizer, "bos_token_id", None)
    if tok is None:
        tok = getattr(tokenizer, "eos_token_id", None)
    if tok is None:
        raise ValueError(f"empty context needs a BOS or EOS token id; tokenizer {type(tokenizer).__name__} has neither")
    return int(tok)


def encode_request(tokenizer: Any, context: str, continuation: str, bos: bool | None = None) -> tuple[list[int], list[int]]:
    """Context and continuation token ids exactly as the harness' ``TemplateLM._encode_pair``."""
    if context == "":
        return [_prefix_token_id(tokenizer)], list(tokenizer.encode(continuation, add_special_tokens=False))
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation, bos)
    ctx = _encode(tokenizer, context, bos)
    return ctx, whole[len(ctx) :]


def resolve_max_length(model: Any, tokenizer: Any = None, default: int = DEFAULT_MAX_LENGTH) -> int:
    """Harness rule: model config ``n_positions`` / ``max_position_embeddings`` / ``n_ctx``, else the
    tokenizer's ``model_max_length`` (unless it is transformers' "unlimited" sentinel), else ``default``."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    tml = getattr(tokenizer, "model_max_length", None)
    if tml and tml != _HF_HUGE_MAX_LENGTH and tml < 10**9:
        return int(tml)
    return default
