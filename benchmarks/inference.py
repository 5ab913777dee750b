"""Inference speed of dense vs structurally pruned models: prefill and KV-cached decode throughput.

    RCPU_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/inference.py [--quick]

Models (``--models``, comma-separated):

- ``smollm2``: the embedded SmolLM2-135M-Instruct (float32), pruned with the project's engine:
  uniform RCPU (rotation, ``head_rounding="nearest"``) and FLAP's adaptive structure (AL-AM, bias
  compensation), each at every ``--ratios`` value; calibration: ``--calib-windows`` WikiText-2
  windows of 128 tokens.
- ``stack``: randomly initialised float32 Llama layers with LLaMA-7B's dimensions (hidden 4096,
  32 heads of 128, MLP 11008), ``--stack-layers`` of them and a ``--stack-vocab`` vocabulary so
  that the layers dominate; pruned by the same engine calls on random calibration tokens
  (``--stack-calib-windows``). Uniform RCPU uses ``--stack-compensation`` (default ``none``: the
  rotation's SVDs take ~4 min per 4096-wide layer here and give the same shapes, no bias).
- ``tiny``: a 2-layer hidden-64 Llama (tests and smoke checks only).

Measurements (``torch.inference_mode()``, ``--threads`` torch threads):

- prefill: one forward of ``--prefill-batch`` x ``--prefill-seqlen`` tokens (default 8 x 128,
  ``use_cache=False``, logits for every position as in perplexity evaluation); tokens/s =
  batch * seqlen / seconds.
- decode: greedy decoding with the KV cache of exactly ``--new-tokens`` (128) tokens after a
  ``--prompt-len`` (16) token prompt at batch 1: the prompt's forward (``logits_to_keep=1``)
  yields the first token, then 127 cached single-token forwards, argmax after each — the
  computation of ``model.generate(do_sample=False)``, written out so that the group's models can
  take their k-th forward in turn (*lockstep*, order reversed every step): a burst of load from
  another job then hits dense and pruned alike. No EOS stop can happen. tokens/s = new tokens /
  seconds of all forwards (the prompt's included). The warm-up runs ``generate`` itself
  (``--warmup-tokens``, ``min_new_tokens = max_new_tokens``) and the row records whether the loop
  reproduced its tokens (``decode_matches_generate``).

Variants are measured in *groups*, one per model and ratio (the dense model, the uniform and the
AL-AM variant), so that every pruned figure has a dense figure from the same minutes: after one
untimed warm-up of each member (one prefill, a short ``generate``), ``--repeats`` rounds each run
every member's prefill (list order on even rounds, reversed on odd ones), then one lockstep
decode of all members. Throughput = work / median seconds; speedup = pruned throughput / dense
throughput of the same group. Other estimators of the same comparison, recorded next to it
because other jobs share the machine: ``*_speedup_per_round`` (median of the per-round ratios),
``*_speedup_best`` (fastest run of each), ``*_speedup_cpu`` (median process CPU seconds, all
threads) and ``decode_speedup_per_step`` (median over the cached decode forwards of dense /
pruned seconds of the same step). The 1-minute load average is recorded at the start of every
round, and for every round's prefills and decode the cores taken from this virtual machine by the
hypervisor (``steal`` in ``/proc/stat``: our threads runnable but not running) and by other
processes (``cpu_share_rounds``).

Ideal speedup. The matmul FLOPs per token at a mean context of ``L`` keys::

    F(L) = sum over layers l of [ 2 h (d H_l + 2 d K_l)           q, k, v projections
                                + 2 (d H_l) h                      o_proj
                                + 2 * 3 h I_l                      gate, up, down
                                + 4 d H_l L ]                      scores Q K^T and P V
           + 2 h V                                                 LM head

(``h`` hidden size, ``d`` head dim, ``H_l`` / ``K_l`` query / kv heads kept in layer ``l``, ``I_l``
MLP channels kept, ``V`` vocabulary; each projection counted from its actual ``nn.Linear``
shape, so ``2 * in * out``; norms, rotary, activations, softmax, biases, embeddings not counted).
Prefill: ``L = (T + 1) / 2`` (mean keys per query under the causal mask, ``T`` = prefill seqlen);
decode: ``L = P + (N - 1) / 2`` (the i-th new token's query sees ``P + i - 1`` keys; the prompt's own
forward is not counted). ``ideal_speedup = F_dense(L) / F_pruned(L)`` at the prefill ``L``
(``ideal_speedup_decode`` at the decode ``L``); ``*_efficiency`` = measured / ideal.

Investigation rows (why a speedup falls short of the ideal):

- ``--rounding 8,64``: for every ``--rounding-models`` model and ratio, the uniform variant with
  its kept MLP channel counts rounded *down* to a multiple of 8 / 64 (the last kept channels of
  each layer dropped from the pruned model; heads are kept whole, so attention widths are already
  multiples of the head dim), measured in their own group next to the dense model and the
  unrounded variant; compare the efficiencies.
- prefill time split into attention (``self_attn`` modules, SDPA included), MLP and the rest
  (embeddings, norms, LM head), from forward hooks on the timed prefill runs; the per-part
  speedups compare with the per-part FLOP ratios (``attn_ideal`` / ``mlp_ideal``).
- ``--gemm``: the stack's MLP projections alone (``F.linear`` with up/gate ``[M, 4096] x [4096, I]``
  and down ``[M, I] x [I, 4096]``) at ``M`` = prefill tokens and ``M = 1`` (decode), for the dense,
  pruned and rounded channel counts, round-robin, median of ``--gemm-repeats``; GFLOP/s per shape.

Rows go to ``results/inference.json`` (``--quick``: ``results/inference_quick.json``), keyed by
model, variant and settings; groups whose rows all exist are skipped (rerun to resume).
``--quick``: SmolLM2 and a 1-layer stack at 30 % uniform only, 3 repeats, prefill 2 x 128,
32 new tokens, rounding to 64, no GEMM rows.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

if not __package__:  # run as `python benchmarks/inference.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks import _common as C  # noqa: E402

log = logging.getLogger("benchmarks.inference")

MODEL_IDS = ("smollm2", "stack", "tiny")
STACK = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, head_dim=128, intermediate_size=11008)
TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
            num_hidden_layers=2, vocab_size=128)
TARGET_EFFICIENCY = 0.85  # measured speedup >= 0.85 x ideal on the hidden-4096 stack at 30 %


@dataclass
class Settings:
    models: tuple[str, ...] = ("smollm2", "stack")
    ratios: tuple[float, ...] = (0.2, 0.3)
    structures: tuple[str, ...] = ("uniform", "al_am")
    repeats: int = 5  # decode rounds
    prefill_repeats: int = 9  # prefill rounds (cheaper, noisier: more of them)
    threads: int = 2
    prefill_batch: int = 8
    prefill_seqlen: int = 128
    prompt_len: int = 16
    new_tokens: int = 128
    warmup_tokens: int = 16
    calib_windows: int = 32
    stack_layers: int = 4
    stack_vocab: int = 1024
    stack_calib_windows: int = 8
    stack_compensation: str = "none"
    rounding: tuple[int, ...] = (8, 64)
    rounding_models: tuple[str, ...] = ("stack",)
    rounding_ratios: tuple[float, ...] = (0.3,)
    gemm: bool = True
    gemm_repeats: int = 7
    seed: int = 0
    data_dir: str | None = None

    def signature(self, model_id: str) -> str:
        """Settings a throughput depends on (part of every row key)."""
        sig = (f"prefill{self.prefill_batch}x{self.prefill_seqlen}|decode{self.prompt_len}+{self.new_tokens}"
               f"|threads{self.threads}|rep{self.repeats}/{self.prefill_repeats}")
        if model_id == "stack":
            sig += f"|layers{self.stack_layers}|vocab{self.stack_vocab}"
        return sig


# -- FLOPs, sizes, shapes ---------------------------------------------------------------------------
def flop_parts(model, ctx: float) -> dict[str, float]:
    """Matmul FLOPs per token at a mean context of ``ctx`` keys, by part (formula in the docstring)."""
    from rcpu_lightning.models.adapter import decoder_layers, layer_parts

    parts = {"attn_proj": 0.0, "attn_sdpa": 0.0, "mlp": 0.0, "lm_head": 0.0}
    for layer in decoder_layers(model):
        p = layer_parts(layer)
        for lin in (p.q_proj, p.k_proj, p.v_proj, p.o_proj):
            parts["attn_proj"] += 2.0 * lin.in_features * lin.out_features
        parts["attn_sdpa"] += 4.0 * p.head_dim * p.num_heads * ctx
        for lin in (p.gate_proj, p.up_proj, p.down_proj):
            parts["mlp"] += 2.0 * lin.in_features * lin.out_features
    head = model.get_output_embeddings()
    parts["lm_head"] = 2.0 * head.in_features * head.out_features
    return parts


def flops_per_token(model, ctx: float) -> float:
    return sum(flop_parts(model, ctx).values())


def prefill_ctx(seqlen: int) -> float:
    return (seqlen + 1) / 2.0


def decode_ctx(prompt_len: int, new_tokens: int) -> float:
    return prompt_len + (new_tokens - 1) / 2.0


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embeddings counted once


def weights_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def layer_shapes(model) -> list[dict[str, int]]:
    from rcpu_lightning.models.adapter import decoder_layers, layer_parts

    return [{"heads": p.num_heads, "kv_heads": p.num_kv_heads, "channels": p.intermediate_size}
            for p in map(layer_parts, decoder_layers(model))]


def kept_summary(shapes: list[dict[str, int]], dense: list[dict[str, int]]) -> str:
    """E.g. ``heads 22/32, kv 22/32, channels 7706/11008 (all 4 layers)`` or min–max per kind."""
    out = []
    for key, label in (("heads", "heads"), ("kv_heads", "kv"), ("channels", "channels")):
        vals, full = [s[key] for s in shapes], dense[0][key]
        lo, hi = min(vals), max(vals)
        out.append(f"{label} {lo}/{full}" if lo == hi else f"{label} {lo}–{hi}/{full}")
    uniform = all(s == shapes[0] for s in shapes)
    return ", ".join(out) + (f" (all {len(shapes)} layers)" if uniform else f" ({len(shapes)} layers)")


# -- models -----------------------------------------------------------------------------------------
@dataclass
class Variant:
    """One member of a measurement group."""

    id: str  # e.g. "dense", "rcpu_uniform", "rcpu_uniform_round64"
    model: Any
    method: str | None = None
    structure: str | None = None
    ratio: float = 0.0
    compensation: str | None = None
    round_to: int | None = None
    prune_seconds: float | None = None
    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    prefill_cpu: list[float] = field(default_factory=list)  # process CPU seconds (all threads)
    decode_cpu: list[float] = field(default_factory=list)
    decode_steps: list[float] = field(default_factory=list)  # wall seconds of every cached decode forward
    matches_generate: bool | None = None
    attn_s: list[float] = field(default_factory=list)
    mlp_s: list[float] = field(default_factory=list)


@dataclass
class Bench:
    """A loaded dense model and its inputs."""

    model_id: str
    name: str
    model: Any
    calib: Any  # [N, T] token windows for pruning
    prefill_ids: Any  # [B, T]
    prompt: Any  # [1, P]
    pad_token_id: int
    compensation: dict[str, str | None]  # method -> compensation passed to PruningConfig (None: default)


def random_llama(config_kwargs: dict, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(max_position_embeddings=2048, tie_word_embeddings=False, **config_kwargs)
    return LlamaForCausalLM(cfg).eval()


def load_bench(model_id: str, s: Settings) -> Bench:
    import torch

    n_tok = max(s.prefill_batch, 1)
    if model_id == "smollm2":
        from rcpu_lightning.data import calibration_windows
        from rcpu_lightning.models import load_causal_lm

        model, tok = load_causal_lm(C.MODEL_SPEC)
        model.eval()
        windows = calibration_windows(tok, max(s.calib_windows, n_tok), s.prefill_seqlen, s.seed, s.data_dir)
        calib, pad = windows[: s.calib_windows], tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return Bench(model_id, C.MODEL_NAME, model, calib, windows[:n_tok].contiguous(),
                     windows[:1, : s.prompt_len].contiguous(), int(pad), {"rcpu": None, "flap": None})
    if model_id == "stack":
        kwargs = dict(STACK, num_hidden_layers=s.stack_layers, vocab_size=s.stack_vocab)
        name = f"random Llama, LLaMA-7B layer dims x{s.stack_layers} layers, vocab {s.stack_vocab}"
        nwin, comp = s.stack_calib_windows, {"rcpu": s.stack_compensation, "flap": None}
    elif model_id == "tiny":
        kwargs, name, nwin, comp = dict(TINY), "tiny random Llama (tests)", s.calib_windows, {"rcpu": None, "flap": None}
    else:
        raise ValueError(f"unknown model {model_id!r}; choose from {MODEL_IDS}")
    model = random_llama(kwargs, s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    vocab = kwargs["vocab_size"]
    calib = torch.randint(0, vocab, (nwin, s.prefill_seqlen), generator=gen)
    ids = torch.randint(0, vocab, (n_tok, s.prefill_seqlen), generator=gen)
    return Bench(model_id, name, model, calib, ids, ids[:1, : s.prompt_len].contiguous(), 0, comp)


def prune_variant(bench: Bench, method: str, structure: str, ratio: float) -> Variant:
    """A deep copy of the dense model pruned by the engine (the calls the project documents)."""
    from rcpu_lightning.pruning import PruningConfig, prune_copy

    kwargs: dict[str, Any] = {"method": method, "structure": structure, "ratio": ratio}
    if method == "rcpu":
        kwargs["head_rounding"] = "nearest"
    if bench.compensation.get(method) is not None:
        kwargs["compensation"] = bench.compensation[method]
    cfg = PruningConfig(**kwargs)
    t0 = time.perf_counter()
    model, _ = prune_copy(bench.model, bench.calib, cfg, batch_size=8)
    seconds = time.perf_counter() - t0
    return Variant(f"{method}_{structure}", model.eval(), method, structure, ratio, cfg.compensation,
                   prune_seconds=seconds)


def round_channels(variant: Variant, multiple: int) -> Variant:
    """A copy of ``variant`` whose kept MLP channels per layer are rounded down to ``multiple`` (the first
    ones kept, through the pruning surgery; the config's ``intermediate_size`` follows when uniform)."""
    import torch

    from rcpu_lightning.models.adapter import decoder_parts
    from rcpu_lightning.pruning.surgery import prune_mlp

    model = copy.deepcopy(variant.model)
    layers = decoder_parts(model)
    for p in layers:
        keep = (p.intermediate_size // multiple) * multiple
        if keep <= 0:
            raise ValueError(f"rounding {p.intermediate_size} channels down to a multiple of {multiple} leaves none")
        if keep < p.intermediate_size:
            with torch.no_grad():
                prune_mlp(p, list(range(keep)), p.down_proj.weight[:, :keep], None)  # down_proj keeps its bias
    sizes = {p.intermediate_size for p in layers}
    if len(sizes) == 1:
        model.config.intermediate_size = sizes.pop()
    return Variant(f"{variant.id}_round{multiple}", model.eval(), variant.method, variant.structure, variant.ratio,
                   variant.compensation, round_to=multiple)


# -- timing -------------------------------------------------------------------------------------------
class PartTimer:
    """Forward hooks summing wall time spent in every layer's ``self_attn`` and ``mlp``."""

    def __init__(self, model):
        from rcpu_lightning.models.adapter import decoder_layers

        self.model, self.handles, self.seconds = model, [], {"attn": 0.0, "mlp": 0.0}
        self.modules = [(layer.self_attn, "attn") for layer in decoder_layers(model)] + \
                       [(layer.mlp, "mlp") for layer in decoder_layers(model)]

    def __enter__(self) -> "PartTimer":
        for module, part in self.modules:
            start = {}

            def pre(mod, args, _start=start):
                _start["t"] = time.perf_counter()

            def post(mod, args, out, _start=start, _part=part):
                self.seconds[_part] += time.perf_counter() - _start["t"]

            self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def time_prefill(model, ids, parts: bool = False) -> tuple[float, float, dict[str, float] | None]:
    """(wall seconds, CPU seconds, per-part wall seconds or None) of one forward over ``ids``."""
    import torch

    timer = PartTimer(model) if parts else None
    with torch.inference_mode():
        if timer:
            timer.__enter__()
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            model(input_ids=ids, use_cache=False)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            if timer:
                timer.__exit__()
    return seconds, cpu, (timer.seconds if timer else None)


def time_generate(model, prompt, new_tokens: int, pad_token_id: int) -> tuple[float, Any]:
    """(wall seconds, tokens [1, new_tokens]) of ``model.generate``, greedy, exactly ``new_tokens`` tokens."""
    import torch

    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_token_id)
        seconds = time.perf_counter() - t0
    made = int(out.shape[1] - prompt.shape[1])
    if made != new_tokens:
        raise RuntimeError(f"generate made {made} tokens, expected {new_tokens}")
    return seconds, out[:, prompt.shape[1]:]


def lockstep_decode(models: list, prompt, new_tokens: int) -> tuple[list[list[float]], list[list[float]], list[Any]]:
    """Greedy KV-cached decoding of exactly ``new_tokens`` tokens by every model, one forward at a time in turn.

    Forward 0 runs the prompt (``logits_to_keep=1``) and yields token 1; forward ``k`` feeds token ``k``
    with the cache and yields token ``k + 1`` (what ``generate`` computes, without its Python
    bookkeeping). The models take their ``k``-th forward one after another (order reversed on
    odd ``k``), so a burst of load from other jobs hits all of them alike. Returns per-model lists
    of wall and CPU seconds per forward (argmax included) and the generated tokens [1, new_tokens].
    """
    import torch

    n = len(models)
    # transformers >= 5.2x names the KV cache ``cache`` (argument and output), earlier ``past_key_values``
    names = ["cache" if "cache" in inspect.signature(m.forward).parameters else "past_key_values" for m in models]
    wall, cpu = [[] for _ in range(n)], [[] for _ in range(n)]
    caches, tokens = [None] * n, [[] for _ in range(n)]
    with torch.inference_mode():
        for k in range(new_tokens):
            for i in (range(n) if k % 2 == 0 else reversed(range(n))):
                c0, t0 = time.process_time(), time.perf_counter()
                if k == 0:
                    out = models[i](input_ids=prompt, use_cache=True, logits_to_keep=1)
                else:
                    out = models[i](input_ids=tokens[i][-1], use_cache=True, **{names[i]: caches[i]})
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                wall[i].append(time.perf_counter() - t0)
                cpu[i].append(time.process_time() - c0)
                caches[i] = out[names[i]]
                if caches[i] is None:
                    raise RuntimeError(f"the model returned no {names[i]!r}: decoding would run without the KV cache")
                tokens[i].append(nxt)
                del out
    return wall, cpu, [torch.cat(t, dim=1) for t in tokens]


def measure_group(bench: Bench, members: list[Variant], s: Settings, say: Callable[[str], None] = print) -> list[float]:
    """Warm up every member, then ``s.repeats`` rounds (prefills alternating, decodes in lockstep).

    Returns the load average at the start of each round. The warm-up (untimed) runs one prefill and
    a ``warmup_tokens`` ``generate`` per member and records whether the lockstep loop of the first
    round reproduced ``generate``'s tokens (``Variant.matches_generate``).
    """
    warm = max(1, min(s.warmup_tokens, s.new_tokens))
    reference = {}
    for v in members:  # untimed warm-up (allocator, first-call costs)
        time_prefill(v.model, bench.prefill_ids)
        reference[v.id] = time_generate(v.model, bench.prompt, warm, bench.pad_token_id)[1]
    loads = []
    rounds = max(s.repeats, s.prefill_repeats)
    for rep in range(rounds):
        loads.append({"loadavg_1m": round(os.getloadavg()[0], 2)})
        msg = []
        if rep < s.prefill_repeats:
            with CpuShare() as share:
                for v in (members if rep % 2 == 0 else members[::-1]):
                    sec, cpu, parts = time_prefill(v.model, bench.prefill_ids, parts=True)
                    v.prefill_s.append(sec)
                    v.prefill_cpu.append(cpu)
                    v.attn_s.append(parts["attn"])
                    v.mlp_s.append(parts["mlp"])
            loads[-1]["prefill"] = share.result
            msg.append(f"prefill dense {members[0].prefill_s[-1]:.2f}s, " + ", ".join(
                f"{v.id} {members[0].prefill_s[-1] / v.prefill_s[-1]:.2f}x" for v in members[1:]))
        if rep < s.repeats:
            with CpuShare() as share:
                wall, cpu, tokens = lockstep_decode([v.model for v in members], bench.prompt, s.new_tokens)
            loads[-1]["decode"] = share.result
            for v, w, c, tok in zip(members, wall, cpu, tokens):
                v.decode_s.append(sum(w))
                v.decode_cpu.append(sum(c))
                v.decode_steps.extend(w[1:])  # cached single-token forwards (the prompt's forward left out)
                if rep == 0:
                    v.matches_generate = bool(torch_equal(tok[:, :warm], reference[v.id]))
            msg.append(f"decode dense {members[0].decode_s[-1]:.2f}s, " + ", ".join(
                f"{v.id} {members[0].decode_s[-1] / v.decode_s[-1]:.2f}x" for v in members[1:]))
        say(f"  round {rep + 1}/{rounds} (load {loads[-1]['loadavg_1m']}; cores stolen / other processes: "
            + ", ".join(f"{k} {x['steal_cores']} / {x['others_cores']}" for k in ("prefill", "decode")
                        if (x := loads[-1].get(k))) + "): " + "; ".join(msg))
    return loads


def _proc_stat() -> tuple[int, int, int] | None:
    """(total, idle + iowait, steal) jiffies of all CPUs, from ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            vals = [int(x) for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(vals), vals[3] + vals[4], vals[7]


class CpuShare:
    """Where the machine's CPU time went while the block ran, in cores (``/proc/stat`` deltas).

    ``steal``: taken by the hypervisor for other virtual machines (our threads runnable but not
    running); ``others``: other processes of this machine (busy time less steal less our own CPU).
    """

    def __enter__(self) -> "CpuShare":
        self.a, self.c = _proc_stat(), time.process_time()
        self.result: dict[str, float] | None = None
        return self

    def __exit__(self, *exc) -> None:
        b, c = _proc_stat(), time.process_time()
        if self.a is None or b is None or b[0] <= self.a[0]:
            return
        total, idle, steal = (y - x for x, y in zip(self.a, b))
        ncpu, hz = os.cpu_count() or 1, os.sysconf("SC_CLK_TCK")
        ours = (c - self.c) * hz
        self.result = {"steal_cores": round(ncpu * steal / total, 2),
                       "others_cores": round(max(ncpu * (total - idle - steal - ours) / total, 0.0), 2)}


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


# -- rows -----------------------------------------------------------------------------------------------
def row_key(model_id: str, variant_id: str, ratio: float, rounding_group: bool, s: Settings) -> str:
    """Unique per model, variant, ratio, group kind (the rounding group re-measures the uniform variant), settings."""
    return f"{model_id}|{'rounding' if rounding_group else 'main'}|{variant_id}|{ratio:g}|{s.signature(model_id)}"


def make_row(bench: Bench, dense: Variant, v: Variant, s: Settings, loads: list[dict], group: str,
             rounding_group: bool = False) -> dict:
    pre_tok, dec_tok = s.prefill_batch * s.prefill_seqlen, s.new_tokens
    L_pre, L_dec = prefill_ctx(s.prefill_seqlen), decode_ctx(s.prompt_len, s.new_tokens)
    fd, fp = flop_parts(dense.model, L_pre), flop_parts(v.model, L_pre)
    tps = {
        "prefill": {"dense": pre_tok / C.median(dense.prefill_s), "pruned": pre_tok / C.median(v.prefill_s)},
        "decode": {"dense": dec_tok / C.median(dense.decode_s), "pruned": dec_tok / C.median(v.decode_s)},
    }
    ideal = sum(fd.values()) / sum(fp.values())
    ideal_dec = flops_per_token(dense.model, L_dec) / flops_per_token(v.model, L_dec)
    attn_ideal = (fd["attn_proj"] + fd["attn_sdpa"]) / (fp["attn_proj"] + fp["attn_sdpa"])
    shapes, dshapes = layer_shapes(v.model), layer_shapes(dense.model)
    md = lambda xs: C.median(xs)  # noqa: E731
    row = {
        "key": row_key(bench.model_id, v.id, v.ratio, rounding_group, s),
        "group": group,
        "group_kind": "rounding" if rounding_group else "main",
        "kind": "rounded" if v.round_to else "pruned",
        "model": bench.name,
        "model_id": bench.model_id,
        "hidden": int(dense.model.config.hidden_size),
        "layers": len(shapes),
        "vocab": int(dense.model.get_output_embeddings().out_features),
        "method": v.method,
        "structure": v.structure,
        "compensation": v.compensation,
        "ratio": v.ratio,
        "round_to": v.round_to,
        "params": {"dense": param_count(dense.model), "pruned": param_count(v.model)},
        "weights_mb": {"dense": weights_mb(dense.model), "pruned": weights_mb(v.model)},
        "prefill_tokens_per_s": tps["prefill"],
        "decode_tokens_per_s": tps["decode"],
        "prefill_speedup": tps["prefill"]["pruned"] / tps["prefill"]["dense"],
        "decode_speedup": tps["decode"]["pruned"] / tps["decode"]["dense"],
        # the same comparison by other estimators (less sensitive to the other jobs on the machine):
        "prefill_speedup_per_round": md([d / p for d, p in zip(dense.prefill_s, v.prefill_s)]),
        "decode_speedup_per_round": md([d / p for d, p in zip(dense.decode_s, v.decode_s)]),
        "prefill_speedup_best": min(dense.prefill_s) / min(v.prefill_s),  # fastest run of each
        "decode_speedup_best": min(dense.decode_s) / min(v.decode_s),
        "prefill_speedup_cpu": md(dense.prefill_cpu) / md(v.prefill_cpu),  # median process CPU seconds
        "decode_speedup_cpu": md(dense.decode_cpu) / md(v.decode_cpu),
        # median over decode steps of (dense forward k) / (pruned forward k): taken seconds apart at most
        "decode_speedup_per_step": md([d / p for d, p in zip(dense.decode_steps, v.decode_steps)]),
        "decode_step_ms": {"dense": 1e3 * md(dense.decode_steps), "pruned": 1e3 * md(v.decode_steps)},
        "decode_matches_generate": {"dense": dense.matches_generate, "pruned": v.matches_generate},
        "ideal_speedup": ideal,
        "ideal_speedup_decode": ideal_dec,
        "flops_per_token": {"dense": sum(fd.values()), "pruned": sum(fp.values()), "ctx": L_pre,
                            "dense_parts": fd, "pruned_parts": fp},
        "parts": {  # prefill time inside self_attn / mlp modules (medians over rounds)
            "dense_attn_s": md(dense.attn_s), "dense_mlp_s": md(dense.mlp_s), "dense_total_s": md(dense.prefill_s),
            "pruned_attn_s": md(v.attn_s), "pruned_mlp_s": md(v.mlp_s), "pruned_total_s": md(v.prefill_s),
            "attn_speedup": md(dense.attn_s) / md(v.attn_s), "mlp_speedup": md(dense.mlp_s) / md(v.mlp_s),
            "attn_ideal": attn_ideal, "mlp_ideal": fd["mlp"] / fp["mlp"],
        },
        "kept": kept_summary(shapes, dshapes),
        "kept_per_layer": shapes,
        "prune_seconds": v.prune_seconds,
        "prefill_seconds": {"dense": dense.prefill_s, "pruned": v.prefill_s},
        "decode_seconds": {"dense": dense.decode_s, "pruned": v.decode_s},
        "prefill_cpu_seconds": {"dense": dense.prefill_cpu, "pruned": v.prefill_cpu},
        "decode_cpu_seconds": {"dense": dense.decode_cpu, "pruned": v.decode_cpu},
        "settings": {"prefill_batch": s.prefill_batch, "prefill_seqlen": s.prefill_seqlen, "prompt_len": s.prompt_len,
                     "new_tokens": s.new_tokens, "repeats": s.repeats, "prefill_repeats": s.prefill_repeats,
                     "warmup_tokens": s.warmup_tokens,
                     "calib_windows": int(bench.calib.shape[0]), "threads": s.threads},
        "loadavg_rounds": [x["loadavg_1m"] for x in loads],
        # per round and phase: cores taken by the hypervisor (steal) and by other processes while timing
        "cpu_share_rounds": [{k: x.get(k) for k in ("prefill", "decode")} for x in loads],
        "run": C.run_info(),
    }
    row["prefill_efficiency"] = row["prefill_speedup"] / ideal
    row["decode_efficiency"] = row["decode_speedup"] / ideal_dec
    return row


def gemm_rows(channels: list[int], s: Settings, hidden: int = 4096, say: Callable[[str], None] = print) -> list[dict]:
    """MLP projections alone for each channel count, round-robin over the counts, at M = prefill tokens and 1."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(s.seed)
    rows = []
    for m in (s.prefill_batch * s.prefill_seqlen, 1):
        x = torch.randn(m, hidden, generator=gen)
        mats = {}
        for n in channels:
            mats[n] = (torch.randn(n, hidden, generator=gen) * 0.02, torch.randn(hidden, n, generator=gen) * 0.02,
                       torch.randn(m, n, generator=gen))
        times = {n: {"up": [], "down": []} for n in channels}
        reps = s.gemm_repeats if m > 1 else s.gemm_repeats * 10
        with torch.inference_mode():
            for rep in range(reps + 1):  # round 0: warm-up
                for n in (channels if rep % 2 == 0 else channels[::-1]):
                    w_up, w_down, xd = mats[n]
                    t0 = time.perf_counter()
                    F.linear(x, w_up)
                    t1 = time.perf_counter()
                    F.linear(xd, w_down)
                    t2 = time.perf_counter()
                    if rep:
                        times[n]["up"].append(t1 - t0)
                        times[n]["down"].append(t2 - t1)
        for n in channels:
            up, down = C.median(times[n]["up"]), C.median(times[n]["down"])
            flops = 2.0 * m * hidden * n
            rows.append({"key": f"gemm|M{m}|I{n}|h{hidden}|threads{s.threads}|rep{reps}", "kind": "gemm", "m": m,
                         "hidden": hidden, "channels": n, "up_ms": up * 1e3, "down_ms": down * 1e3,
                         "up_gflops": flops / up / 1e9, "down_gflops": flops / down / 1e9,
                         "mlp_ms": (2 * up + down) * 1e3, "mlp_gflops": 3 * flops / (2 * up + down) / 1e9,
                         "repeats": reps, "run": C.run_info()})
            say(f"  gemm M={m} I={n}: up {up * 1e3:.2f} ms ({flops / up / 1e9:.1f} GFLOP/s), "
                f"down {down * 1e3:.2f} ms ({flops / down / 1e9:.1f} GFLOP/s)")
    return rows


# -- driver -----------------------------------------------------------------------------------------------
def plan_groups(model_id: str, s: Settings) -> list[tuple[str, float, list[tuple[str, str]], list[int]]]:
    """(group name, ratio, [(method, structure)], rounding multiples) per measurement group."""
    methods = {"uniform": ("rcpu", "uniform"), "al_am": ("flap", "al_am")}
    groups = []
    for r in s.ratios:  # a ratio's rounding group right after its main group: one uniform prune kept alive
        groups.append((f"{model_id}@{r:g}", r, [methods[st] for st in s.structures], []))
        if model_id in s.rounding_models and s.rounding and any(abs(r - x) < 1e-9 for x in s.rounding_ratios):
            groups.append((f"{model_id}@{r:g}/rounding", r, [methods["uniform"]], list(s.rounding)))
    return groups


def run(s: Settings, out: Path, say: Callable[[str], None] = print) -> C.RowStore:
    store = C.RowStore(out)
    for model_id in s.models:
        groups = plan_groups(model_id, s)
        bench, pruned_cache = None, {}
        for group, ratio, kinds, rounding in groups:
            ids = [f"{m}_{st}" for m, st in kinds] if not rounding else \
                [f"{kinds[0][0]}_{kinds[0][1]}"] + [f"{kinds[0][0]}_{kinds[0][1]}_round{k}" for k in rounding]
            keys = [row_key(model_id, i, ratio, bool(rounding), s) for i in ids]
            if all(store.has(k) for k in keys):
                say(f"{group}: done, skipped")
                continue
            if bench is None:
                say(f"{model_id}: loading")
                bench = load_bench(model_id, s)
            dense = Variant("dense", bench.model)
            members = [dense]
            for method, structure in kinds:
                cached = pruned_cache.get((method, structure, ratio))
                if cached is None:
                    say(f"{group}: pruning {method} {structure} {ratio:g}")
                    cached = prune_variant(bench, method, structure, ratio)
                    say(f"  pruned in {cached.prune_seconds:.1f}s: {kept_summary(layer_shapes(cached.model), layer_shapes(bench.model))}")
                members.append(Variant(cached.id, cached.model, cached.method, cached.structure, cached.ratio,
                                       cached.compensation, prune_seconds=cached.prune_seconds))
                if structure == "uniform" and any(g[0] == f"{group}/rounding" for g in groups):
                    pruned_cache[(method, structure, ratio)] = cached  # the rounding group reuses it
            for k in rounding:
                members.append(round_channels(members[1], k))
            say(f"{group}: measuring {[v.id for v in members]}, {s.prefill_repeats} prefill / {s.repeats} decode rounds")
            loads = measure_group(bench, members, s, say)
            for v in members[1:]:
                row = make_row(bench, dense, v, s, loads, group, bool(rounding))
                store.add(row)
                say(f"  {row['key']}: prefill {row['prefill_speedup']:.3f}x, decode {row['decode_speedup']:.3f}x, "
                    f"ideal {row['ideal_speedup']:.3f}x ({row['kept']})")
            if rounding:
                pruned_cache.pop((kinds[0][0], kinds[0][1], ratio), None)
            del members, dense
            gc.collect()
        if model_id == "stack" and s.gemm:
            rows_now = [r for r in store if r.get("model_id") == "stack" and r.get("kind") in ("pruned", "rounded")
                        and r["key"].endswith(s.signature("stack"))]
            kept = {lp["channels"] for r in rows_now if r["structure"] == "uniform" for lp in r["kept_per_layer"]}
            kept |= {c // k * k for c in kept for k in s.rounding}  # the rounded counts of every ratio
            channels = sorted({STACK["intermediate_size"]} | kept, reverse=True)
            keys = {f"gemm|M{m}|I{n}|h{STACK['hidden_size']}|threads{s.threads}|rep{reps}" for n in channels
                    for m, reps in ((s.prefill_batch * s.prefill_seqlen, s.gemm_repeats), (1, s.gemm_repeats * 10))}
            if keys <= store.keys():
                say("gemm: done, skipped")
            else:
                say(f"gemm: MLP projections for channel counts {channels}")
                for row in gemm_rows(channels, s, STACK["hidden_size"], say):
                    store.add(row)
        del bench, pruned_cache
        gc.collect()
    return store


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def settings_from_args(argv=None) -> tuple[Settings, Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fast check (see above); rows go to inference_quick.json")
    p.add_argument("--models", default=None, help=f"comma-separated from {MODEL_IDS} (default smollm2,stack)")
    p.add_argument("--ratios", default=None, help="comma-separated pruning ratios (default 0.2,0.3)")
    p.add_argument("--structures", default=None, help="uniform and/or al_am (default both)")
    p.add_argument("--repeats", type=int, default=None, help="decode rounds per group (default 5, quick 3)")
    p.add_argument("--prefill-repeats", type=int, default=None, help="prefill rounds per group (default 9, quick 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill-batch", type=int, default=None)
    p.add_argument("--prefill-seqlen", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=None, help="decode length (default 128, quick 32)")
    p.add_argument("--warmup-tokens", type=int, default=16)
    p.add_argument("--calib-windows", type=int, default=32)
    p.add_argument("--stack-layers", type=int, default=None, help="layers of the hidden-4096 stack (default 4, quick 1)")
    p.add_argument("--stack-vocab", type=int, default=1024)
    p.add_argument("--stack-calib-windows", type=int, default=8)
    p.add_argument("--stack-compensation", default="none", help="compensation of the stack's uniform RCPU prune")
    p.add_argument("--rounding", default=None, help="channel multiples for the rounding groups (default 8,64; '' = none)")
    p.add_argument("--rounding-models", default="stack")
    p.add_argument("--rounding-ratios", default="0.3", help="ratios that get a rounding group")
    p.add_argument("--no-gemm", action="store_true", help="skip the stack's GEMM rows")
    p.add_argument("--gemm-repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    q = a.quick
    s = Settings(
        models=_names(a.models) if a.models else (("smollm2", "stack")),
        ratios=_floats(a.ratios) if a.ratios else ((0.3,) if q else (0.2, 0.3)),
        structures=_names(a.structures) if a.structures else (("uniform",) if q else ("uniform", "al_am")),
        repeats=a.repeats if a.repeats is not None else (3 if q else 5),
        prefill_repeats=a.prefill_repeats if a.prefill_repeats is not None else (3 if q else 9),
        threads=a.threads,
        prefill_batch=a.prefill_batch if a.prefill_batch is not None else (2 if q else 8),
        prefill_seqlen=a.prefill_seqlen,
        prompt_len=a.prompt_len,
        new_tokens=a.new_tokens if a.new_tokens is not None else (32 if q else 128),
        warmup_tokens=a.warmup_tokens,
        calib_windows=a.calib_windows,
        stack_layers=a.stack_layers if a.stack_layers is not None else (1 if q else 4),
        stack_vocab=a.stack_vocab,
        stack_calib_windows=a.stack_calib_windows,
        stack_compensation=a.stack_compensation,
        rounding=_ints(a.rounding) if a.rounding is not None else ((64,) if q else (8, 64)),
        rounding_models=_names(a.rounding_models),
        rounding_ratios=_floats(a.rounding_ratios),
        gemm=not (a.no_gemm or q),
        gemm_repeats=a.gemm_repeats,
        seed=a.seed,
        data_dir=a.data_dir,
    )
    for m in s.models:
        if m not in MODEL_IDS:
            p.error(f"--models: unknown model {m!r}; choose from {', '.join(MODEL_IDS)}")
    for st in s.structures:
        if st not in ("uniform", "al_am"):
            p.error(f"--structures: {st!r} is not uniform or al_am")
    if s.repeats < 1 or s.prefill_repeats < 1:
        p.error("--repeats and --prefill-repeats must be >= 1")
    if s.rounding and "uniform" not in s.structures:
        s.rounding = ()  # rounding groups round the uniform variant
    out = Path(a.out) if a.out else C.RESULTS_DIR / ("inference_quick.json" if q else "inference.json")
    return s, out


def main(argv=None) -> int:
    s, out = settings_from_args(argv)
    if min(s.repeats, s.prefill_repeats) < 5:
        print(f"note: {s.repeats} / {s.prefill_repeats} repeats; the README's figures use medians of >= 5", file=sys.stderr)
    C.setup_torch(s.threads)
    logging.getLogger("rcpu_lightning").setLevel(logging.WARNING)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    store = run(s, out)
    print(f"{len([r for r in store if r.get('kind') != 'gemm'])} rows in {out} ({time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
