"""A random-weight Llama-family checkpoint from a config, written shard by shard (never the whole model in memory).

    python benchmarks/random_checkpoint.py /tmp/llama-7b                       # LLaMA-7B's config, bfloat16 (~13.5 GB)
    python benchmarks/random_checkpoint.py /tmp/mine --config my-model/config.json   # your own model's shapes
    python -m benchmarks.random_checkpoint /tmp/x --preset llama-7b --dtype float16 --layers-per-shard 2

What it is for: a dry run of pruning a model you do not have here (or cannot load whole), at its real
shapes, e.g. ``cli.py prune -c configs/llama-out-of-core.yaml --model.model /tmp/llama-7b`` (see
``benchmarks/full7b.py``). The weights are random, so the pruned model's quality means nothing; time,
memory and disk traffic do.

* **Config**: ``--preset llama-7b`` (LLaMA-7B's architecture: :data:`PRESETS`) or ``--config`` (a
  ``config.json``, or the folder holding one) of any supported Llama-family model (``llama``,
  ``mistral``, ``qwen2``; grouped-query attention and an explicit ``head_dim`` included). The tensors
  and their shapes are those of the ``transformers`` model built from the config on the ``meta``
  device, so they are what ``from_pretrained`` expects, whatever the architecture.
* **Weights**: matrices normal(0, 0.02), norms 1, biases 0; each tensor drawn in float32 from its own
  generator, seeded by ``--seed`` and the tensor's name, in chunks of :data:`CHUNK` elements, then
  cast to ``--dtype``. So a tensor's values do not depend on the sharding, and a bfloat16 checkpoint
  is the float32 one of the same seed, rounded.
* **Shards**: ``--layers-per-shard`` decoder layers per ``model-0000k-of-0000n.safetensors`` (default
  1); the other tensors (embeddings, final norm, LM head) in the last shard; plus
  ``model.safetensors.index.json`` and ``config.json`` (``dtype`` set). One shard's tensors exist at a
  time (:func:`shard_tensors`): peak memory is about one shard (twice that while safetensors serialises
  it), whatever the depth.
* **Tokenizer** (``--no-tokenizer`` skips it): the CLI tokenizes WikiText-2, and a model's vocabulary
  size must match its tokenizer's. :func:`train_tokenizer` trains, offline and deterministically (a few
  seconds), a BPE with exactly ``vocab_size`` ids in LLaMA's layout: ``<unk>``, ``<s>``, ``</s>`` at 0,
  1, 2, the 256 byte-fallback pieces ``<0x00>``..``<0xFF>``, then the pieces learnt on the calibration
  split of WikiText-2 (``$RCPU_DATA_DIR`` or ``--data-dir``; the valid split offline: the test split is
  never read). Where that text yields fewer pieces than the vocabulary holds (32,000: it gives about
  20,000), the rest are ``<unused_k>`` pieces no text maps to. Saved as a ``PreTrainedTokenizerFast``
  that prepends ``<s>`` as LLaMA's does.
* **Outputs**: written into a hidden staging folder and renamed into place
  (:func:`rcpu_lightning.files.atomic_dir`). An existing non-empty output is refused unless
  ``--overwrite``, and even then replaced only when this project wrote it (its
  :data:`rcpu_lightning.files.RANDOM_CHECKPOINT_FILE`, the generator's record, or a pruned folder's
  markers, and nothing else: :data:`rcpu_lightning.files.OUTPUT_MARKERS`).

Progress: one line per shard (a tqdm bar on a terminal) with the GB written and the seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

if not __package__:  # run as `python benchmarks/random_checkpoint.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from rcpu_lightning.files import RANDOM_CHECKPOINT_FILE, atomic_dir, check_output_path, write_json_atomic  # noqa: E402

#: Named configs. ``llama-7b``: LLaMA-7B (Touvron et al. 2023) as its Hugging Face ``config.json`` states it.
PRESETS: dict[str, dict[str, Any]] = {
    "llama-7b": dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, hidden_act="silu",
                     max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2, architectures=["LlamaForCausalLM"]),
}
#: ``llama-7b-mini``: LLaMA-7B at an eighth of its width, 2 layers (8 heads of 64, so that 20 % removes a
#: head; MLP 2.6875 x hidden as LLaMA's; its vocabulary): 0.07 GB, for checking a script end to end quickly.
PRESETS["llama-7b-mini"] = {**PRESETS["llama-7b"], "hidden_size": 512, "intermediate_size": 1376,
                            "num_attention_heads": 8, "num_key_value_heads": 8, "num_hidden_layers": 2}
DTYPES = ("bfloat16", "float16", "float32")
STD = 0.02  # the normal init of every matrix (transformers' ``initializer_range`` default)
CHUNK = 1 << 24  # float32 elements drawn at a time (64 MiB): the one temporary besides the shard
INDEX_FILE = "model.safetensors.index.json"
#: LLaMA's tokenizer layout: these at ids 0, 1, 2, then the 256 byte-fallback pieces.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))


# -- the config ---------------------------------------------------------------------------------------
def build_config(preset: str | None = None, config_path: str | os.PathLike | None = None, dtype: str = "bfloat16"):
    """The ``transformers`` config of a preset or of a ``config.json`` (file or folder), with ``dtype`` set."""
    from transformers import AutoConfig

    from rcpu_lightning.models.adapter import check_supported

    if (preset is None) == (config_path is None):
        raise ValueError("give exactly one of a preset and a config path")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; allowed: {list(DTYPES)}")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        fields = dict(PRESETS[preset])
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    else:
        path = Path(config_path).expanduser()
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r}: no such config file")
        fields = json.loads(path.read_text(encoding="utf-8"))
        if "model_type" not in fields:
            raise ValueError(f"{str(path)!r} has no model_type: not a Hugging Face model config")
        for key in ("dtype", "torch_dtype", "quantization_config", "transformers_version"):
            fields.pop(key, None)  # the generator writes plain unquantised weights of --dtype
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    check_supported(config)
    config.dtype = dtype
    return config


# -- the tensors --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the checkpoint: its name, shape and initial values (``normal``, ``ones`` or ``zeros``)."""

    name: str
    shape: tuple[int, ...]
    init: str

    def nbytes(self, dtype: torch.dtype) -> int:
        return int(torch.Size(self.shape).numel()) * dtype.itemsize


def tensor_specs(config) -> list[TensorSpec]:
    """Every tensor ``save_pretrained`` would write for ``config``'s model (tied weights once), from the
    model built on the ``meta`` device: norms ``ones``, biases ``zeros``, other tensors ``normal``."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    norms = {name for name, module in model.named_modules() if "norm" in type(module).__name__.lower()}
    specs = []
    for name, param in model.named_parameters():  # a tied LM head is the embedding: listed once
        module, _, leaf = name.rpartition(".")
        init = "ones" if module in norms else "zeros" if leaf == "bias" else "normal"
        specs.append(TensorSpec(name, tuple(param.shape), init))
    return specs


def shard_groups(specs: list[TensorSpec], num_layers: int, layers_per_shard: int) -> list[list[TensorSpec]]:
    """Tensors per shard: ``layers_per_shard`` decoder layers each, then one shard for the rest."""
    from rcpu_lightning.models.adapter import layer_prefix

    if layers_per_shard < 1:
        raise ValueError(f"layers_per_shard={layers_per_shard}; allowed: >= 1")
    starts = range(0, num_layers, layers_per_shard)
    groups: list[list[TensorSpec]] = [[] for _ in starts]
    rest = []
    for spec in specs:
        layer = next((i for i in range(num_layers) if spec.name.startswith(layer_prefix(i))), None)
        (rest if layer is None else groups[layer // layers_per_shard]).append(spec)
    return groups + [rest]


def tensor_seed(seed: int, name: str) -> int:
    """The generator seed of tensor ``name`` (63 bits of a hash: independent of sharding and order)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def random_tensor(spec: TensorSpec, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``spec``'s tensor in ``dtype``: normal(0, STD) drawn in float32, :data:`CHUNK` elements at a time."""
    if spec.init != "normal":
        return (torch.ones if spec.init == "ones" else torch.zeros)(spec.shape, dtype=dtype)
    out = torch.empty(spec.shape, dtype=dtype)
    flat = out.view(-1)  # [numel]
    g = torch.Generator().manual_seed(tensor_seed(seed, spec.name))
    for start in range(0, flat.numel(), CHUNK):
        part = flat[start:start + CHUNK]
        if dtype == torch.float32:
            part.normal_(0.0, STD, generator=g)
        else:
            part.copy_(torch.empty(part.numel(), dtype=torch.float32).normal_(0.0, STD, generator=g))
    return out


def shard_tensors(groups: list[list[TensorSpec]], dtype: torch.dtype, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """The shards' tensors, one shard at a time: this generator keeps no reference to a shard it has
    yielded, so once the caller drops it, at most one shard's tensors exist."""
    for group in groups:
        yield {spec.name: random_tensor(spec, dtype, seed) for spec in group}


def shard_name(index: int, total: int) -> str:
    """The ``index``-th (0-based) of ``total`` shard files, named as ``save_pretrained`` names them."""
    return f"model-{index + 1:05d}-of-{total:05d}.safetensors"


# -- the folder ---------------------------------------------------------------------------------------
def generate(folder: str | os.PathLike, config, seed: int = 0, layers_per_shard: int = 1, tokenizer: bool = True,
             data_dir: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
             source: str | None = None) -> dict[str, Any]:
    """Write the random checkpoint of ``config`` (dtype: ``config.dtype``) to ``folder``; returns its record
    (also written as :data:`~rcpu_lightning.files.RANDOM_CHECKPOINT_FILE`). ``source``: where the config came
    from, for the record (a preset name or a path)."""
    folder = check_output_path(folder, overwrite, "output folder", "--overwrite")
    dtype = getattr(torch, str(config.dtype).replace("torch.", ""))
    groups = shard_groups(tensor_specs(config), int(config.num_hidden_layers), layers_per_shard)
    record = {"generator": "benchmarks/random_checkpoint.py", "source": source, "seed": seed, "dtype": str(dtype)[6:],
              "layers_per_shard": layers_per_shard, "init": f"matrices normal(0, {STD}), norms 1, biases 0",
              "shards": len(groups), "total_size": sum(s.nbytes(dtype) for g in groups for s in g),
              "params": sum(int(torch.Size(s.shape).numel()) for g in groups for s in g), "tokenizer": None}
    start = time.perf_counter()
    with atomic_dir(folder, overwrite, "output folder", "--overwrite") as staged:
        if tokenizer:  # first: a missing data folder fails in seconds, not after the weights
            record["tokenizer"] = save_tokenizer(staged, int(config.vocab_size), data_dir)
        report = shard_progress(len(groups), record["total_size"], start, progress)
        weight_map = {}
        for index, tensors in enumerate(shard_tensors(groups, dtype, seed)):
            write_shard(staged / shard_name(index, len(groups)), tensors)
            weight_map.update(dict.fromkeys(tensors, shard_name(index, len(groups))))
            report(index, sum(t.nbytes for t in tensors.values()))
            del tensors  # the next shard is drawn only after this one is gone
        index = {"metadata": {"total_size": record["total_size"]}, "weight_map": dict(sorted(weight_map.items()))}
        write_json_atomic(staged / INDEX_FILE, index)
        config.save_pretrained(staged)
        record["seconds"] = round(time.perf_counter() - start, 2)
        write_json_atomic(staged / RANDOM_CHECKPOINT_FILE, record)
    return record


def write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def shard_progress(total: int, total_bytes: int, start: float, enabled: bool):
    """``report(index, nbytes)`` after each shard: a tqdm bar on a terminal, else one line per shard."""
    written = 0
    bar = None
    if enabled and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=total_bytes / 1e9, unit="GB", desc="writing shards", bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} GB [{elapsed}<{remaining}]")

    def report(index: int, nbytes: int) -> None:
        nonlocal written
        written += nbytes
        if bar is not None:
            bar.update(nbytes / 1e9)
            if index + 1 == total:
                bar.close()
        elif enabled:
            print(f"shard {index + 1}/{total}: {written / 1e9:.2f} of {total_bytes / 1e9:.2f} GB written, "
                  f"{time.perf_counter() - start:.1f} s", flush=True)

    return report


def read_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The generator's record of ``folder`` (None: not a complete folder of this generator)."""
    path = Path(folder) / RANDOM_CHECKPOINT_FILE
    if not path.is_file() or not (Path(folder) / INDEX_FILE).is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def same_checkpoint(folder: str | os.PathLike, config, seed: int, tokenizer: bool = True) -> bool:
    """Whether ``folder`` is a complete checkpoint of this generator for ``config`` and ``seed``."""
    record = read_record(folder)
    if record is None or record.get("seed") != seed or (record.get("tokenizer") is not None) != tokenizer:
        return False
    saved, wanted = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")), json.loads(config.to_json_string())
    for fields in (saved, wanted):
        fields.pop("transformers_version", None)
    return saved == wanted


# -- the tokenizer ------------------------------------------------------------------------------------
def train_tokenizer(vocab_size: int, data_dir: str | os.PathLike | None = None):
    """A byte-fallback BPE ``PreTrainedTokenizerFast`` with exactly ``vocab_size`` ids in LLaMA's layout
    (module docstring), learnt on WikiText-2's calibration split; deterministic for given text."""
    from tokenizers import Tokenizer, models, trainers

    from rcpu_lightning.data.wikitext import calibration_split, load_rows

    budget = vocab_size - len(SPECIAL_TOKENS) - len(BYTE_TOKENS)
    if budget < 1:
        raise ValueError(f"vocab_size={vocab_size} leaves no room beside the {len(SPECIAL_TOKENS)} special and "
                         f"{len(BYTE_TOKENS)} byte tokens; pass --no-tokenizer (and calibrate on random ids)")
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = _metaspace()
    trainer = trainers.BpeTrainer(vocab_size=budget, limit_alphabet=min(budget, 1000), show_progress=False)
    learner.train_from_iterator(load_rows(calibration_split(data_dir), data_dir), trainer=trainer)
    learnt = json.loads(learner.to_str())["model"]
    fixed = (*SPECIAL_TOKENS, *BYTE_TOKENS)
    pieces = [p for p, _ in sorted(learnt["vocab"].items(), key=lambda kv: kv[1]) if p not in fixed][:budget]
    pieces += [f"<unused_{k}>" for k in range(budget - len(pieces))]
    vocab = {piece: i for i, piece in enumerate((*fixed, *pieces))}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    merges = [m for m in merges if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    return _llama_style(bpe)


def _metaspace():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)


def _llama_style(bpe):
    """``bpe`` with LLaMA's pieces (``▁`` for spaces), byte-fallback decoding and ``<s>`` prepended."""
    from tokenizers import decoders, processors
    from transformers import PreTrainedTokenizerFast

    bpe.pre_tokenizer = _metaspace()
    bpe.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])  # LLaMA's tokenizer.json decoder
    bpe.add_special_tokens(list(SPECIAL_TOKENS))
    bos = SPECIAL_TOKENS[1]
    bpe.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, bpe.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token=SPECIAL_TOKENS[0], bos_token=bos,
                                   eos_token=SPECIAL_TOKENS[2])


def save_tokenizer(folder: Path, vocab_size: int, data_dir: str | os.PathLike | None) -> dict[str, Any]:
    """Train (:func:`train_tokenizer`) and save the tokenizer into ``folder``; returns what the record says of it."""
    start = time.perf_counter()
    tok = train_tokenizer(vocab_size, data_dir)
    tok.save_pretrained(folder)
    unused = sum(t.startswith("<unused_") for t in tok.get_vocab())
    return {"kind": "byte-fallback BPE, LLaMA layout", "vocab_size": len(tok), "unused_pieces": unused,
            "seconds": round(time.perf_counter() - start, 2)}


# -- command line -------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="random_checkpoint.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("output", help="the folder to write (must not exist or be empty, unless --overwrite)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--preset", choices=sorted(PRESETS), help="a named config (default: llama-7b)")
    which.add_argument("--config", help="a config.json (or the folder holding one) of your own model")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--layers-per-shard", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-tokenizer", action="store_true", help="write no tokenizer (the CLI then cannot tokenize text)")
    p.add_argument("--data-dir", default=None, help="WikiText-2 for the tokenizer (default: $RCPU_DATA_DIR)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder this project wrote")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    preset = args.preset or (None if args.config else "llama-7b")
    config = build_config(preset, args.config, args.dtype)
    record = generate(args.output, config, seed=args.seed, layers_per_shard=args.layers_per_shard,
                      tokenizer=not args.no_tokenizer, data_dir=args.data_dir, overwrite=args.overwrite,
                      progress=not args.quiet, source=f"preset {preset}" if preset else str(args.config))
    print(f"wrote {args.output}: {record['params']:,} parameters, {record['total_size'] / 1e9:.3f} GB "
          f"in {record['shards']} shards, {record['dtype']}, {record['seconds']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
