"""Tiny fixtures shared by the Lightning/CLI tests and the DDP script: a random Llama checkpoint
folder with a word-level tokenizer, local WikiText-2 files, and a config for ``cli.py``."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 64


def save_tiny_llama(folder, num_heads: int = 6, num_kv_heads: int = 2, seed: int = 0) -> Path:
    """A random GQA Llama (hidden 48, 2 layers) plus a word-level tokenizer ``w0 .. w62``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, head_dim=8,
                         max_position_embeddings=256, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    folder = Path(folder)
    model.save_pretrained(folder)
    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"[UNK]": VOCAB - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(folder)
    return folder


def write_tiny_wikitext(folder, test_words: int = 9 * 16 + 5, train_words: int = 3000, seed: int = 0) -> Path:
    """``wiki.test.raw`` (perplexity) and ``train.txt`` (calibration) of random ``wN`` words.

    The default test split gives 9 windows of 16 tokens (an odd number, for the DDP test)."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def text(n: int) -> str:
        words = [f"w{rng.randrange(VOCAB - 1)}" for _ in range(n)]
        return "\n".join(" ".join(words[i : i + 12]) for i in range(0, n, 12)) + "\n"

    (folder / "wiki.test.raw").write_text(text(test_words))
    (folder / "train.txt").write_text(text(train_words))
    # A tiny PIQA-shaped task (7 documents: an odd number) for the zero-shot dataloaders.
    import json

    (folder / "zeroshot").mkdir(exist_ok=True)
    docs = [{"goal": text(6).strip(), "sol1": text(3).strip(), "sol2": text(4).strip(), "label": i % 2} for i in range(7)]
    (folder / "zeroshot" / "piqa.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return folder


def tiny_config(path, model_dir, data_dir, out_dir, **overrides) -> Path:
    """A cli.py config for the tiny model: 16 x 16 calibration, 16-token perplexity windows.
    ``overrides``: ``section__key=value`` (nested: ``pruning__config__ratio=0.5``)."""
    import yaml

    out_dir = Path(out_dir)
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"model": str(model_dir), "dtype": "float32"},
        "data": {"data_dir": str(data_dir), "calibration": {"nsamples": 16, "seqlen": 16, "batch_size": 4},
                 "eval_seqlen": 16, "eval_batch_size": 2},
        "pruning": {"config": {"method": "rcpu", "ratio": 0.34, "head_rounding": "nearest"},
                    "save_dir": str(out_dir / "pruned"), "progress": False},
        "results": {"path": str(out_dir / "results.json")},
    }
    for key, value in overrides.items():  # "pruning__config__ratio": nested keys
        *sections, name = key.split("__")
        node = cfg
        for section in sections:
            node = node[section]
        node[name] = value
    Path(path).write_text(yaml.safe_dump(cfg))
    return Path(path)
