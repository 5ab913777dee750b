"""Deployment check: pruned SmolLM2 models exported to GGUF and run by llama.cpp itself (llama-cpp-python).

    CMAKE_ARGS="-DGGML_NATIVE=ON" .venv/bin/pip install llama-cpp-python   # builds llama.cpp (benchmark only)
    RCPU_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/deploy_llamacpp.py [--quick]

Models (the pruned folders are made first with the commands in ``PRUNE_COMMANDS``; the script prints
them when a folder is missing): SmolLM2-135M dense (the embedded GGUF, dequantised to float32), RCPU
20 % uniform (``configs/smollm2-rcpu.yaml``, 128 calibration windows), RCPU-affine 20 % and 30 %
(``configs/rcpu-affine.yaml`` on top, **32** calibration windows instead of 128 to keep the pruning
short; this benchmark is about deployment, not quality). Each is written with
:func:`rcpu_lightning.export.export_gguf` as f32, f16 and q8_0, tokenizer keys passed through from the
embedded GGUF. Uniform models become llama.cpp's ``llama`` architecture, the others ``deci``.

Checks, per model:

- agreement (f32 GGUF, with a float32 KV cache: the whole computation in float32): llama.cpp's logits on the first ``--windows`` WikiText-2 test windows of 128
  tokens (the project's perplexity windows) against the PyTorch model's (``load_pruned``, float32):
  max |difference|, and the perplexity both compute on the same windows (must agree to 3 digits);
  the f16 file's PPL on the same windows too (llama.cpp's defaults: f16 KV cache).
- greedy generation: 32 new tokens after the first 16 tokens of window 0, llama.cpp's sampler at
  temperature 0 vs ``model.generate(do_sample=False)``: identical in f32 (float32 KV cache; f16/q8_0
  files with the default f16 cache recorded).
- speed: llama.cpp tokens/s in f16 and q8_0, ``--threads`` (2) threads: prefill of ``--prefill`` (512)
  tokens in one batch, then decode of ``--decode`` (128) tokens one at a time with the KV cache (fixed
  text tokens: the work does not depend on their values); median of ``--repeats`` (5) rounds, each round
  running every model in turn (order reversed on odd rounds, so a burst of load from other jobs hits
  dense and pruned alike). Speedup = pruned / dense tokens/s; ideal = dense / pruned parameters that a
  token's forward multiplies (decoder layers + LM head; the embedding lookup is free).

Writes ``benchmarks/results/deploy.json`` (``--quick``: ``deploy_quick.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C

from rcpu_lightning.data.wikitext import perplexity_windows
from rcpu_lightning.eval.perplexity import window_nll
from rcpu_lightning.export.gguf import load_source_model, export_gguf, layer_shapes
from rcpu_lightning.models.loading import embedded_gguf_path, load_causal_lm

OUT_DIR = C.REPO_ROOT / "outputs" / "deploy"
CALIB_AFFINE = 32
PRUNE_COMMANDS = {
    "rcpu-20": "python cli.py prune -c configs/smollm2-rcpu.yaml --trainer.prune_evaluate false "
               "--pruning.save_dir outputs/deploy/rcpu-20 --results.path null",
    "rcpu-affine-20": "python cli.py prune -c configs/smollm2-rcpu.yaml -c configs/rcpu-affine.yaml "
                      f"--data.calibration.nsamples {CALIB_AFFINE} --trainer.prune_evaluate false "
                      "--pruning.save_dir outputs/deploy/rcpu-affine-20 --results.path null",
    "rcpu-affine-30": "python cli.py prune -c configs/smollm2-rcpu.yaml -c configs/rcpu-affine.yaml "
                      f"--pruning.config.ratio 0.3 --data.calibration.nsamples {CALIB_AFFINE} "
                      "--trainer.prune_evaluate false --pruning.save_dir outputs/deploy/rcpu-affine-30 "
                      "--results.path null",
}
LABELS = {"dense": "Dense", "rcpu-20": "RCPU 20 % (uniform)",
          "rcpu-affine-20": f"RCPU-affine 20 % ({CALIB_AFFINE} calib. windows)",
          "rcpu-affine-30": f"RCPU-affine 30 % ({CALIB_AFFINE} calib. windows)"}
SEQLEN, PROMPT, NEW_TOKENS = 128, 16, 32


def matmul_params(model) -> int:
    """Parameters a token's forward multiplies: every decoder layer's plus the LM head."""
    layers = sum(p.numel() for p in model.model.layers.parameters())
    return layers + model.get_output_embeddings().weight.numel()


def _llama(path: Path, n_ctx: int, threads: int, logits_all: bool, f32_cache: bool = False):
    """llama.cpp on ``path``; ``f32_cache``: a float32 KV cache instead of llama.cpp's default f16 one."""
    from llama_cpp import GGML_TYPE_F32, Llama

    cache = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_cache else {}
    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                 n_threads_batch=threads, logits_all=logits_all, verbose=False, **cache)


def _ppl(nll: float, count: int) -> float:
    return float(np.exp(nll / count))


def agreement(model, gguf_f32: Path, gguf_f16: Path, windows: torch.Tensor, threads: int) -> dict:
    """llama.cpp (f32 and f16 files) vs PyTorch on the same windows: max |logit diff|, PPL of each."""
    out = {}
    with torch.no_grad():
        torch_logits = model(windows).logits.float()  # [W, T, V]
    nll, count = window_nll(torch_logits, windows)
    out["ppl_torch"] = _ppl(float(nll), count)
    for dtype, path in (("f32", gguf_f32), ("f16", gguf_f16)):
        llm = _llama(path, SEQLEN, threads, logits_all=True, f32_cache=dtype == "f32")
        cpp = []
        for window in windows:
            llm.reset()
            llm.eval(window.tolist())
            cpp.append(np.array(llm.scores[:SEQLEN], dtype=np.float32))
        cpp_logits = torch.from_numpy(np.stack(cpp))
        nll, count = window_nll(cpp_logits, windows)
        out[f"ppl_llamacpp_{dtype}"] = _ppl(float(nll), count)
        out[f"max_abs_logit_diff_{dtype}"] = float((cpp_logits - torch_logits).abs().max())
        llm.close()
    out["max_abs_logit"] = float(torch_logits.abs().max())
    out["ppl_agree_3_digits_f32"] = f"{out['ppl_torch']:.3g}" == f"{out['ppl_llamacpp_f32']:.3g}"
    return out


def generation(model, paths: dict[str, Path], prompt: list[int], threads: int) -> dict:
    """32 greedy tokens: transformers' generate vs llama.cpp's sampler at temperature 0, per GGUF dtype."""
    with torch.no_grad():
        ids = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    out = {"tokens_torch": ids}
    for dtype, path in paths.items():
        llm = _llama(path, SEQLEN, threads, logits_all=False, f32_cache=dtype == "f32")
        got = []
        for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            got.append(int(token))
            if len(got) == NEW_TOKENS:
                break
        out[f"tokens_llamacpp_{dtype}"] = got
        out[f"same_tokens_{dtype}"] = sum(a == b for a, b in zip(got, ids))
        llm.close()
    out["identical_f32"] = out.get("tokens_llamacpp_f32") == ids
    return out


def _time_one(llm, prefill: list[int], decode: list[int]) -> tuple[float, float]:
    """Seconds of one prefill (one batch) and of ``len(decode)`` single-token steps after it."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prefill)
    t1 = time.perf_counter()
    for token in decode:
        llm.eval([token])
    return t1 - t0, time.perf_counter() - t1


def speed(files: dict[str, Path], stream: list[int], args) -> dict[str, dict]:
    """tokens/s per model (median of ``args.repeats`` rounds; models in turn, order reversed on odd rounds)."""
    prefill, decode = stream[: args.prefill], stream[args.prefill: args.prefill + args.decode]
    llms = {name: _llama(path, args.prefill + args.decode + 8, args.threads, logits_all=False)
            for name, path in files.items()}
    for llm in llms.values():  # warm-up: page the weights in, build the graphs
        _time_one(llm, prefill[:64], decode[:4])
    times = {name: ([], []) for name in llms}
    for r in range(args.repeats):
        for name in (list(llms) if r % 2 == 0 else list(llms)[::-1]):
            p, d = _time_one(llms[name], prefill, decode)
            times[name][0].append(p), times[name][1].append(d)
    for llm in llms.values():
        llm.close()
    return {name: {"prefill_tok_s": len(prefill) / C.median(p), "decode_tok_s": len(decode) / C.median(d),
                   "prefill_s": p, "decode_s": d} for name, (p, d) in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folders", default=str(OUT_DIR), help="where the pruned folders are (see PRUNE_COMMANDS)")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quick", action="store_true", help="2 windows, 1 repeat, prefill 128 / decode 16")
    args = p.parse_args(argv)
    if args.quick:
        args.windows, args.repeats, args.prefill, args.decode = 2, 1, 128, 16
    C.setup_torch(args.threads)
    import llama_cpp

    folders = Path(args.folders)
    missing = [name for name in PRUNE_COMMANDS if not (folders / name / "config.json").is_file()]
    if missing:
        print("missing pruned folders; make them first (from the repository root):", file=sys.stderr)
        for name in missing:
            print("  " + PRUNE_COMMANDS[name], file=sys.stderr)
        return 2
    tokenizer_gguf = embedded_gguf_path(C.MODEL_SPEC)
    _, tokenizer = load_causal_lm(C.MODEL_SPEC)
    all_windows = perplexity_windows(tokenizer, SEQLEN, args.data_dir)  # [N, 128]
    windows = all_windows[: args.windows]
    stream = all_windows[args.windows:].flatten().tolist()  # text tokens for the timing runs
    gguf_dir = folders / "gguf"
    rows, files = [], {}
    for name in ["dense", *PRUNE_COMMANDS]:
        source = C.MODEL_SPEC if name == "dense" else folders / name
        model = load_source_model(source).eval()
        paths = {}
        for dtype in ("f32", "f16", "q8_0"):
            paths[dtype] = export_gguf(model, gguf_dir / f"{name}-{dtype}.gguf", dtype=dtype,
                                       tokenizer=tokenizer_gguf, name=f"smollm2-135m-{name}", overwrite=True)
        shapes = layer_shapes(model)
        row = {"key": name, "model": LABELS[name], "arch": "llama" if len(set(shapes)) == 1 else "deci",
               "heads": [s.num_heads for s in shapes], "kv_heads": [s.num_kv_heads for s in shapes],
               "mlp": [s.intermediate_size for s in shapes],
               "params": sum(p.numel() for p in model.parameters()), "matmul_params": matmul_params(model),
               "prune_command": PRUNE_COMMANDS.get(name),
               "calibration_windows": None if name == "dense" else (CALIB_AFFINE if "affine" in name else 128),
               "gguf_mib": {d: round(path.stat().st_size / 2**20, 1) for d, path in paths.items()},
               "windows": int(windows.shape[0]), "seqlen": SEQLEN}
        print(f"[{name}] {row['arch']}: agreement ...", flush=True)
        row.update(agreement(model, paths["f32"], paths["f16"], windows, args.threads))
        print(f"[{name}] generation ...", flush=True)
        row["generation"] = generation(model, paths, windows[0, :PROMPT].tolist(), args.threads)
        rows.append(row)
        files[name] = paths
        del model
    for dtype in ("f16", "q8_0"):
        print(f"speed {dtype} ...", flush=True)
        measured = speed({name: paths[dtype] for name, paths in files.items()}, stream, args)
        dense = measured["dense"]
        for row in rows:
            m = measured[row["key"]]
            row[f"speed_{dtype}"] = {**m, "prefill_speedup": m["prefill_tok_s"] / dense["prefill_tok_s"],
                                     "decode_speedup": m["decode_tok_s"] / dense["decode_tok_s"]}
    dense_params = rows[0]["matmul_params"]
    for row in rows:
        row["ideal_speedup"] = dense_params / row["matmul_params"]
    result = {"rows": rows, "settings": {"threads": args.threads, "prefill": args.prefill, "decode": args.decode,
                                         "repeats": args.repeats, "windows": args.windows, "seqlen": SEQLEN,
                                         "prompt_tokens": PROMPT, "new_tokens": NEW_TOKENS, "quick": args.quick,
                                         "llama_cpp_python": llama_cpp.__version__},
              "run": C.run_info(),
              "command": "python benchmarks/deploy_llamacpp.py" + (" --quick" if args.quick else "")}
    out = C.RESULTS_DIR / ("deploy_quick.json" if args.quick else "deploy.json")
    C.write_json_atomic(out, result, indent=1)
    print(f"wrote {out}")
    for row in rows:
        print(f"{row['key']:>15} {row['arch']:>5} ppl torch {row['ppl_torch']:.3f} llama.cpp {row['ppl_llamacpp_f32']:.3f}"
              f" max|dlogit| {row['max_abs_logit_diff_f32']:.2e} gen f32 {row['generation']['identical_f32']}"
              f" f16 decode x{row['speed_f16']['decode_speedup']:.2f} q8 decode x{row['speed_q8_0']['decode_speedup']:.2f}"
              f" ideal x{row['ideal_speedup']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
