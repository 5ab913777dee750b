"""Shared fixtures: tiny random Llama models (MHA and GQA) and paths to the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RCPU_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(items) -> None:
    """Tests that start processes (ddp) or use the embedded SmolLM2 model (integration: the first one
    converts its GGUF, ~40 s on a fresh machine) are slow too, so ``-m "not slow"`` is the edit-loop suite."""
    for item in items:
        if item.get_closest_marker("integration") or item.get_closest_marker("ddp"):
            item.add_marker(pytest.mark.slow)


def rounding_bound(terms: int, magnitude: float, dtype: torch.dtype = torch.float64, condition: float = 1.0) -> float:
    """The largest difference two evaluations of one quantity may show when they only round differently
    (another summation order, BLAS kernel, CPU or thread count): ``condition · terms · eps · magnitude``.

    A sum of ``terms`` products whose absolute values add up to at most ``magnitude`` errs by at most
    ``terms · eps · magnitude`` to first order (Higham, *Accuracy and Stability of Numerical Algorithms*,
    §3.1), and a linear solve whose matrix has condition number κ amplifies a relative perturbation of
    its data by at most κ (§7.1). Worst-case bounds: observed differences are far smaller, while a wrong
    algorithm differs by O(magnitude). Tests use this instead of bit-equality, which no CPU guarantees.
    """
    return condition * terms * torch.finfo(dtype).eps * magnitude


def make_tiny_llama(
    num_heads: int = 4,
    num_kv_heads: int = 4,
    head_dim: int = 8,
    hidden_size: int = 48,
    intermediate_size: int = 48,
    num_layers: int = 2,
    vocab_size: int = 64,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised float32 Llama small enough for millisecond tests."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    # Larger-than-default init so that pruning visibly changes outputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model


@pytest.fixture
def cli_argv(monkeypatch):
    """sys.argv as cli.py sees it (LightningCLI(args=...) warns about pytest's own argv)."""
    import sys

    monkeypatch.setattr(sys, "argv", ["cli.py"])


@pytest.fixture
def tiny_mha() -> LlamaForCausalLM:
    return make_tiny_llama()


@pytest.fixture
def tiny_gqa() -> LlamaForCausalLM:
    return make_tiny_llama(num_heads=6, num_kv_heads=2)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(
            f"shared data folder {SHARED_DATA} not found; set RCPU_DATA_DIR to the folder holding "
            "wikitext-2/ and zeroshot/"
        )
    return SHARED_DATA
