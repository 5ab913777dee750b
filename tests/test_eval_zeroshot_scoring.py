"""Log-likelihood scoring, acc / acc_norm and the item metric (fake tokenizer, tiny and fake models)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from conftest import make_tiny_llama
from rcpu_lightning.eval.tasks import MultipleChoiceItem
from rcpu_lightning.eval.encoding import encode_request, resolve_max_length
from rcpu_lightning.eval.evaluate import evaluate_items
from rcpu_lightning.eval.loglikelihood import item_loglikelihoods, request_loglikelihoods
from rcpu_lightning.eval.multiple_choice import (
    MultipleChoiceAccuracy,
    MultipleChoiceDataset,
    collate_items,
    reference_rates,
    score_item,
)

VOCAB = 64


class CharTokenizer:
    """One token per character (ids 3..63); BOS=1 added by default like a Llama tokenizer, EOS=2."""

    bos_token = "<s>"
    bos_token_id = 1
    eos_token_id = 2
    model_max_length = 10**30

    def __init__(self, add_bos_default: bool = True):
        self.add_bos_default = add_bos_default

    def encode(self, text, add_special_tokens=True):
        ids = [3 + (ord(c) % (VOCAB - 3)) for c in text]
        if add_special_tokens and self.add_bos_default:
            ids = [self.bos_token_id] + ids
        return ids


def _item(requests, gold, lengths=None, task="t", doc_id=0):
    lengths = lengths or [len(c) - 1 for _, c in requests]
    return MultipleChoiceItem(task=task, doc_id=doc_id, requests=tuple(requests), gold=gold, choice_lengths=tuple(lengths))


@torch.no_grad()
def _reference_ll(model, ctx, cont, max_length):
    """Unbatched harness loop: one request, no padding, full logits, float64 sum of float32 log-probs."""
    full = (ctx + cont)[-(max_length + 1) :][:-1]
    logits = model(torch.tensor([full])).logits[0].float()
    logprobs = F.log_softmax(logits, dim=-1)[len(full) - len(cont) :]
    return float(logprobs.gather(-1, torch.tensor(cont)[:, None]).double().sum())


ITEMS = [
    _item([("The cat sat on the", " mat"), ("The cat sat on the", " moon over there")], 0, doc_id=0),
    _item([("Question: 2+2?\nAnswer:", " no"), ("Question: 2+2?\nAnswer:", " yes")], 1, doc_id=1),
    _item([("Mary went home and Mary", " slept."), ("Mary went home and John", " slept.")], 0, doc_id=2),
    _item([("A very long context " * 6, "end"), ("short ", "x y z")], 1, doc_id=3),
]


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_loglikelihoods_equal_unbatched_reference(batch_size):
    model = make_tiny_llama(vocab_size=VOCAB, seed=5)
    tok = CharTokenizer()
    got = item_loglikelihoods(model, tok, ITEMS, bos=None, max_length=256, batch_size=batch_size)
    for item, lls in zip(ITEMS, got):
        assert len(lls) == item.num_choices
        for (ctx, cont), ll in zip(item.requests, lls):
            c, k = encode_request(tok, ctx, cont, bos=None)
            ref = _reference_ll(model, c, k, 256)
            assert ll == pytest.approx(ref, rel=1e-5, abs=1e-5)
            assert ll < 0


def test_left_truncation_to_max_length():
    model = make_tiny_llama(vocab_size=VOCAB, seed=6)
    tok = CharTokenizer()
    ctx, cont = "abcdefghijklmnopqrstuvwxyz" * 2, " tail"
    c, k = encode_request(tok, ctx, cont, bos=None)
    assert len(c) + len(k) > 20
    [[ll]] = item_loglikelihoods(model, tok, [_item([(ctx, cont)], 0)], max_length=20, batch_size=4)
    assert ll == pytest.approx(_reference_ll(model, c, k, 20), rel=1e-5)
    # Truncation really changed the value (the BOS and the start of the context are gone).
    assert abs(ll - _reference_ll(model, c, k, 256)) > 1e-4
    with pytest.raises(ValueError, match="max_length"):
        item_loglikelihoods(model, tok, [_item([("a", " " + "b" * 30)], 0)], max_length=20)


def test_identical_inputs_share_one_forward():
    calls = []
    model = make_tiny_llama(vocab_size=VOCAB, seed=7)
    orig_forward = model.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return orig_forward(*args, **kwargs)

    model.forward = counting_forward
    tok = CharTokenizer()
    # Continuations " A" / " B" differ only in their last token, so both requests have the same model
    # input (context + " "): the harness' logits cache computes it once; so do we.
    ca, ka = encode_request(tok, "Answer:", " A")
    cb, kb = encode_request(tok, "Answer:", " B")
    assert ca == cb and ka[:-1] == kb[:-1] and ka != kb
    lls = request_loglikelihoods(model, [(ca, ka), (cb, kb)], max_length=64, batch_size=8)
    assert calls == [1]
    assert lls[0] != lls[1]
    model.forward = orig_forward  # (the counting wrapper also exercised the no-logits_to_keep path)
    assert lls[0] == pytest.approx(_reference_ll(model, ca, ka, 64), rel=1e-5)
    assert lls[1] == pytest.approx(_reference_ll(model, cb, kb, 64), rel=1e-5)


def test_bos_switch():
    tok = CharTokenizer()
    assert encode_request(tok, "Hi", " there", bos=None)[0][0] == 1  # tokenizer default adds BOS
    assert encode_request(tok, "Hi", " there", bos=False)[0][0] != 1
    no_bos_tok = CharTokenizer(add_bos_default=False)
    assert encode_request(no_bos_tok, "Hi", " there", bos=None)[0][0] != 1
    ctx, cont = encode_request(no_bos_tok, "Hi", " there", bos=True)
    assert ctx[0] == 1 and ctx.count(1) == 1 and cont == no_bos_tok.encode(" there", add_special_tokens=False)
    # A context that already starts with the BOS text gets no second BOS under the default.
    ctx, _ = encode_request(tok, "<s>Hi", " there", bos=None)
    assert ctx[0] != 1 and len(ctx) == len("<s>Hi")


def test_trailing_space_moves_and_empty_context():
    tok = CharTokenizer(add_bos_default=False)
    ctx, cont = encode_request(tok, "Answer:  ", "yes", bos=None)
    assert ctx == tok.encode("Answer:", add_special_tokens=False)
    assert cont == tok.encode("  yes", add_special_tokens=False)
    ctx, cont = encode_request(tok, "", " yes", bos=None)
    assert ctx == [tok.bos_token_id] and cont == tok.encode(" yes", add_special_tokens=False)


class _OracleLM(torch.nn.Module):
    """Predicts the character 'x' with high probability everywhere; everything else uniform."""

    def __init__(self, tok):
        super().__init__()
        self.x = tok.encode("x", add_special_tokens=False)[0]
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kwargs):
        logits = torch.zeros(*input_ids.shape, VOCAB)
        logits[..., self.x] = 8.0
        return SimpleNamespace(logits=logits)


def test_forced_correct_answers_give_acc_one():
    tok = CharTokenizer()
    model = _OracleLM(tok)
    items = [
        _item([("Q1", " abab"), ("Q1", " xxxx"), ("Q1", " cdcd")], 1, doc_id=0),
        _item([("Question two is longer", " xxx"), ("Question two is longer", " yyy")], 0, doc_id=1),
        _item([("Q3", " zz"), ("Q3", " qq"), ("Q3", " ww"), ("Q3", " xx")], 3, doc_id=2),
    ]
    res = evaluate_items(model, tok, items, task="fake", batch_size=2, max_length=64, progress=False)
    assert res["acc"] == 1.0 and res["acc_norm"] == 1.0 and res["n"] == 3
    assert res["reported_metric"] == "acc" and res["bos_in_context"] is True
    # chance = mean(1/3, 1/2, 1/4); golds 1, 0, 3 -> each position once -> majority 1/3
    assert res["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 4) / 3) and res["majority_position"] == pytest.approx(1 / 3)
    # The same items with the gold moved to a wrong choice score 0.
    wrong = [_item(list(it.requests), (it.gold + 1) % it.num_choices, doc_id=it.doc_id) for it in items]
    assert evaluate_items(model, tok, wrong, task="fake", max_length=64, progress=False)["acc"] == 0.0


def test_acc_norm_differs_exactly_where_lengths_differ():
    # Equal lengths: ll / L has the same argmax as ll -> acc == acc_norm whatever the values.
    same = _item([("c", " aaaa"), ("c", " bbbb")], 0, lengths=[4, 4])
    for lls in ([-3.0, -5.0], [-5.0, -3.0]):
        a, an = score_item(lls, same)
        assert a == an
    # Different lengths: gold is long with the lower total ll but the higher per-character ll.
    diff = _item([("c", " a long correct answer"), ("c", " no")], 0, lengths=[20, 2])
    assert score_item([-6.0, -4.0], diff) == (0, 1)  # -6/20=-0.3 beats -4/2=-2
    # Ties resolve to the lowest index, like np.argmax.
    tie = _item([("c", " ab"), ("c", " cd")], 1, lengths=[2, 2])
    assert score_item([-1.0, -1.0], tie) == (0, 0)

    metric = MultipleChoiceAccuracy()
    metric.update([[-3.0, -5.0], [-6.0, -4.0]], [same, diff])
    out = metric.compute()
    assert float(out["acc"]) == 0.5 and float(out["acc_norm"]) == 1.0 and int(out["n"]) == 2


def test_metric_merge_of_rank_shards_equals_whole():
    model = make_tiny_llama(vocab_size=VOCAB, seed=8)
    tok = CharTokenizer()
    items = [
        _item([(f"ctx {i} " + "w" * i, " " + "ab"[i % 2] * (1 + i % 3)), (f"ctx {i} " + "w" * i, " zz")], i % 2, doc_id=i)
        for i in range(9)
    ]
    whole = MultipleChoiceAccuracy()
    whole.update(item_loglikelihoods(model, tok, items, max_length=128), items)
    # Strided split as a DistributedSampler without padding would do for 2 ranks.
    shards = [MultipleChoiceAccuracy(), MultipleChoiceAccuracy()]
    loader_items = MultipleChoiceDataset(items)
    for rank in (0, 1):
        subset = [loader_items[i] for i in range(rank, len(items), 2)]
        for batch in DataLoader(subset, batch_size=2, collate_fn=collate_items):
            assert isinstance(batch, list) and isinstance(batch[0], MultipleChoiceItem)
            shards[rank].update(item_loglikelihoods(model, tok, batch, max_length=128), batch)
    shards[0].merge_state(shards[1])
    a, b = shards[0].compute(), whole.compute()
    assert int(a["n"]) == int(b["n"]) == 9
    assert float(a["acc"]) == float(b["acc"]) and float(a["acc_norm"]) == float(b["acc_norm"])


def test_dataset_collate_fn_keeps_items():
    ds = MultipleChoiceDataset(ITEMS)
    batches = list(DataLoader(ds, batch_size=3, collate_fn=MultipleChoiceDataset.collate_fn))
    assert [len(b) for b in batches] == [3, 1]
    assert batches[0][0] is ITEMS[0]


def test_resolve_max_length_rules():
    model = make_tiny_llama()
    assert resolve_max_length(model, CharTokenizer()) == 256  # max_position_embeddings
    no_cfg = SimpleNamespace(config=SimpleNamespace())
    assert resolve_max_length(no_cfg, CharTokenizer()) == 2048  # huge tokenizer limit -> default
    assert resolve_max_length(no_cfg, SimpleNamespace(model_max_length=512)) == 512


def test_stderr_matches_sample_std():
    tok = CharTokenizer()
    items = [_item([("q", " xx"), ("q", " ab")], g, doc_id=i) for i, g in enumerate([0, 0, 0, 1])]
    res = evaluate_items(_OracleLM(tok), tok, items, task="fake", max_length=32, progress=False)
    assert res["acc"] == 0.75
    outcomes = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert res["acc_stderr"] == pytest.approx(float(outcomes.std(unbiased=True)) / math.sqrt(4))


def test_request_without_context_token_is_rejected():
    model = make_tiny_llama(vocab_size=VOCAB)
    with pytest.raises(ValueError, match="no context token"):
        request_loglikelihoods(model, [([], [5, 6])], max_length=16)


def test_reference_rates_majority_position():
    yes_no = [_item([("q", " yes"), ("q", " no")], g, doc_id=i) for i, g in enumerate([0, 0, 0, 1])]
    assert reference_rates(yes_no) == {"chance": 0.5, "majority_position": 0.75}
    with pytest.raises(ValueError):
        reference_rates([])
