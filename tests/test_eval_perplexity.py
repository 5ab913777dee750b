"""SparseGPT-style token perplexity: metric and helper against a hand-written reference loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_llama
from rcpu_lightning.eval.perplexity import Perplexity, evaluate_perplexity


def _windows(n: int, seqlen: int, vocab: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seqlen), generator=g)


@torch.no_grad()
def _reference_ppl(model, windows: torch.Tensor) -> float:
    # FLAP / Wanda loop: one window at a time, mean CE of its L-1 shifted predictions, exp(mean of means).
    losses = []
    for w in windows:
        logits = model(w[None]).logits[0].double()
        losses.append(F.cross_entropy(logits[:-1], w[1:]).item())
    return math.exp(sum(losses) / len(losses))


def test_ppl_equals_reference_loop(tiny_mha):
    windows = _windows(7, 24, tiny_mha.config.vocab_size)
    out = evaluate_perplexity(tiny_mha, windows, batch_size=3, progress=False)  # last batch is short
    ref = _reference_ppl(tiny_mha, windows)
    assert out["ppl"] == pytest.approx(ref, rel=1e-6)
    assert out["tokens"] == 7 * 23
    assert out["windows"] == 7
    assert out["seqlen"] == 24
    assert ref > 1.0 and out["ppl"] < tiny_mha.config.vocab_size * 10  # a real, finite value


def test_ppl_does_not_depend_on_batch_size(tiny_gqa):
    windows = _windows(5, 16, tiny_gqa.config.vocab_size, seed=3)
    a = evaluate_perplexity(tiny_gqa, windows, batch_size=1, progress=False)["ppl"]
    b = evaluate_perplexity(tiny_gqa, windows, batch_size=5, progress=False)["ppl"]
    assert a == pytest.approx(b, rel=1e-6)


def test_metric_states_are_sums_and_merge_exactly():
    model = make_tiny_llama(seed=2)
    windows = _windows(6, 20, model.config.vocab_size, seed=4)
    with torch.no_grad():
        logits = model(windows).logits

    whole = Perplexity()
    whole.update(logits, windows)
    assert whole.nll_sum.dtype == torch.float64
    assert whole._defaults.keys() == {"nll_sum", "token_count"}

    # Two "ranks" each see half of the windows; merging their states must give the whole-set value.
    rank0, rank1 = Perplexity(), Perplexity()
    rank0.update(logits[:2], windows[:2])
    rank1.update(logits[2:], windows[2:])
    rank0.merge_state(rank1)
    assert int(rank0.token_count) == int(whole.token_count) == 6 * 19
    merged, full = float(rank0.compute()), float(whole.compute())
    assert merged == pytest.approx(full, rel=1e-12)

    # The mean of per-rank perplexities is NOT the answer (different half sizes make it visible).
    r0, r1 = Perplexity(), Perplexity()
    r0.update(logits[:2], windows[:2])
    r1.update(logits[2:], windows[2:])
    assert (float(r0.compute()) + float(r1.compute())) / 2 != pytest.approx(full, rel=1e-9)

    assert whole.tokens == 6 * 19
    assert whole.mean_nll == pytest.approx(math.log(full), rel=1e-12)


def test_metric_sum_reduction_declared():
    m = Perplexity()
    # torchmetrics maps dist_reduce_fx="sum" to dim_zero_sum
    from torchmetrics.utilities.data import dim_zero_sum

    assert m._reductions["nll_sum"] is dim_zero_sum
    assert m._reductions["token_count"] is dim_zero_sum


def test_logsoftmax_in_float32_for_half_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 9, 50) * 4
    ids = torch.randint(0, 50, (2, 9))
    m32, m16 = Perplexity(), Perplexity()
    m32.update(logits, ids)
    m16.update(logits.bfloat16(), ids)
    # bf16 logits are upcast before log_softmax: only the input rounding differs (bf16 ~ 3 significant digits).
    assert float(m16.compute()) == pytest.approx(float(m32.compute()), rel=2e-2)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1)).exp().item()
    assert float(m32.compute()) == pytest.approx(ref, rel=1e-6)


def test_rejects_bad_shapes():
    m = Perplexity()
    with pytest.raises(ValueError):
        m.update(torch.zeros(2, 5, 7), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(RuntimeError):
        Perplexity().compute()


def test_evaluate_perplexity_accepts_a_plain_module_returning_logits():
    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(11, 11))

        def forward(self, input_ids):  # no use_cache, returns a bare tensor
            return self.table[input_ids]

    torch.manual_seed(0)
    model = Bigram()
    windows = _windows(4, 10, 11, seed=9)
    out = evaluate_perplexity(model, windows, batch_size=3, progress=False)
    logp = torch.log_softmax(model.table.detach().double(), dim=-1)
    nll = -sum(float(logp[w[t], w[t + 1]]) for w in windows for t in range(9))
    assert out["ppl"] == pytest.approx(math.exp(nll / 36), rel=1e-6)
