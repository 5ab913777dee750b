"""A whole LLaMA-7B-shaped bfloat16 checkpoint pruned out of core on one small machine, end to end.

    python benchmarks/full7b.py                  # hours on a 2-core, 24 GB machine (below); ~25 GB of /tmp
    python benchmarks/full7b.py --quick          # llama-7b-mini (2 layers, 0.08 GB): about a minute
    python benchmarks/full7b.py --config my-model/config.json --nsamples 64   # your own model's shapes
    python benchmarks/full7b.py --extra-prune-args "--pruning.config.execution_dtype float32"

Steps, each command a fresh process (the commands are printed):

1. ``random_checkpoint.py`` writes the random-weight checkpoint (``--preset``, default ``llama-7b``, or
   ``--config``; bfloat16) to ``WORK/checkpoint``, shard by shard, with a tokenizer of the model's
   vocabulary; a checkpoint that an earlier ``--keep`` run left there with the same settings is reused.
2. ``cli.py prune -c configs/llama-out-of-core.yaml --model.model WORK/checkpoint --pruning.save_dir
   WORK/pruned --data.calibration.nsamples N`` (RCPU rotation at 20 %, calibration N windows of 128
   tokens of the WikiText-2 calibration split: ``$RCPU_DATA_DIR``).
3. ``cli.py test`` of the pruned folder on the first ``--ppl-windows`` WikiText-2 test windows.
4. ``transformers.AutoModelForCausalLM.from_pretrained(WORK/pruned)`` and one forward: finite logits?
   (with ``trust_remote_code=True`` where transformers refuses the pruned head count in a plain config:
   :func:`worker_reload`).
5. The layer's two-forward limit (:func:`worker_limit`, as ``scale.py``'s layer7b rows measure it): decoder
   layer 0 of the checkpoint, then the same layer in its pruned shapes with the pruned folder's weights, each
   run over the calibration's N x 128 tokens in the config's batches, in the prune's execution dtype (the
   checkpoint's unless ``--extra-prune-args`` names one), best of 2.
   ``ours_over_limit`` = the prune's mean seconds per layer / (dense + pruned forward); ``phases`` = the mean
   seconds per phase from the pruned folder's ``pruning_report.json``.

The prune and test commands run inside a small wrapper (``--worker-cli``: the same ``cli.main`` in the
same process, so the measured process is the CLI's) that records, without changing what runs:

* ``peak_rss_mb``: the process's ``VmHWM`` at its end (the whole process: Python, torch, the skeleton,
  one layer, the calibration activations and statistics);
* ``layer_seconds``: each decoder layer's wall time, from the engine's per-layer progress events;
* ``read_bytes``: tensor bytes the checkpoint reader handed out (``CheckpointSource.tensors``; the
  embedding twice: for the skeleton, then for the copy into the pruned folder); ``read_seconds``: time
  loading the decoder layers (``SafetensorsLayers.load``: mapping the shard, then the copy into the
  layer's weights, whose page faults are the disk reads of a shard not in the page cache; the other
  tensors, 4 % of LLaMA-7B, are read where first used and are not in it);
* ``write_seconds``/``write_bytes``: time in, and tensor bytes through, the shard writer
  (``ShardWriter.write``: serialising and ``write`` into the page cache, which the kernel flushes to
  disk later, so this is not the disk's time; for the embeddings and LM head it includes reading them);
* ``proc_io``: the process's ``/proc/self/io`` at its end: ``read_bytes``/``write_bytes`` are what it
  made the block layer read or dirty (page-cache hits are not counted, so a checkpoint still in the
  cache reads as less), ``rchar``/``wchar`` the bytes of its read/write calls (memory-mapped reads are
  not counted there).

**bfloat16 on a CPU.** The layers run in the checkpoint's dtype unless told otherwise. A CPU with
bfloat16 matrix instructions (``avx512_bf16`` or AMX; ``run.bf16_matmul`` in the row) multiplies bfloat16
faster than float32: keep the default there. One without them is several times slower in bfloat16: give
``--extra-prune-args "--pruning.config.execution_dtype float32"``. The test step's forwards stay in the
checkpoint's dtype (a pruned 7B in float32, 21.6 GB, would not fit in 24 GB); ``--ppl-windows`` scales it.

The row (``mode: "full7b"``) goes to ``results/scale.json`` (``--quick``: ``results/scale_quick.json``;
``--out``), keyed by model, dtype, calibration, windows and extra arguments; rerunning a finished key
runs again and replaces the row. Without ``--keep`` what this run wrote under ``--work-dir`` is removed
at the end (a reused checkpoint stays).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/full7b.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks import _common as C  # noqa: E402
from benchmarks import random_checkpoint as rc  # noqa: E402

CONFIG = C.REPO_ROOT / "configs" / "llama-out-of-core.yaml"
CLI = C.REPO_ROOT / "cli.py"
SEQLEN = 128  # the config's calibration.seqlen and the test's eval_seqlen (defaults, not overridden here)


# -- what runs ----------------------------------------------------------------------------------------
def prune_args(source: Path, target: Path, results: Path, nsamples: int, extra: list[str]) -> list[str]:
    """``cli.py prune`` of the out-of-core config, replacing only this script's own earlier outputs."""
    return ["prune", "-c", str(CONFIG), "--model.model", str(source), "--pruning.save_dir", str(target),
            "--pruning.overwrite", "true", "--results.path", str(results), "--results.overwrite", "true",
            "--data.calibration.nsamples", str(nsamples), *extra]


def test_args(pruned: Path, results: Path, windows: int, dtype: str) -> list[str]:
    """``cli.py test`` of the pruned folder: the same config, the model loaded whole (not out of core) in the
    checkpoint's ``dtype`` (a module loaded into memory defaults to float32: 21.6 GB for a pruned 7B)."""
    return ["test", "-c", str(CONFIG), "--model.model", str(pruned), "--model.out_of_core", "false",
            "--model.dtype", dtype, "--pruning.save_dir", "null", "--data.ppl_max_windows", str(windows),
            "--results.path", str(results), "--results.overwrite", "true"]


def run_child(cmd: list[str], what: str, capture: bool = False) -> tuple[float, float, str]:
    """Run ``cmd`` from the repository root: (wall seconds, its peak RSS in MB from ``wait4``, its stdout
    if ``capture``, else it prints to ours). A failure raises, naming ``what``."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=C.REPO_ROOT, stdout=subprocess.PIPE if capture else None, text=True)
    out = ""
    if capture:
        with proc.stdout:
            out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}); its output is above")
    return seconds, usage.ru_maxrss / 1024, out  # ru_maxrss: KiB on Linux


def run_measured(cli_args: list[str], stats: Path) -> tuple[dict[str, Any], float]:
    """Run ``cli.py ARGS`` in the measuring wrapper; (its stats, wall seconds). Output goes to ours."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-cli", str(stats), "--", *cli_args]
    print("$ python cli.py " + shlex.join(cli_args), flush=True)
    seconds, _, _ = run_child(cmd, f"cli.py {cli_args[0]}")
    return json.loads(stats.read_text(encoding="utf-8")), seconds


def run_reload(pruned: Path) -> dict[str, Any]:
    """``from_pretrained`` + one forward in a fresh process (the worker prints one JSON line)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-reload", str(pruned)]
    print(f"$ python benchmarks/full7b.py --worker-reload {shlex.quote(str(pruned))}   # from_pretrained, one forward",
          flush=True)
    try:
        _, _, out = run_child(cmd, "the reload", capture=True)
    except RuntimeError as exc:
        return {"reload_ok": False, "reload_error": str(exc)}
    return json.loads(out.strip().splitlines()[-1])


def execution_dtype(extra: list[str]) -> str | None:
    """The ``--pruning.config.execution_dtype`` among the extra prune arguments (None: the checkpoint's)."""
    flag = "--pruning.config.execution_dtype"
    for i, arg in enumerate(extra):
        if arg == flag and i + 1 < len(extra):
            return None if extra[i + 1] == "null" else extra[i + 1]
        if arg.startswith(flag + "="):
            return None if arg.split("=", 1)[1] == "null" else arg.split("=", 1)[1]
    return None


def run_limit(checkpoint: Path, pruned: Path, nsamples: int, dtype: str | None) -> dict[str, Any]:
    """The two-forward limit in a fresh process (the worker prints one JSON line); a failure is recorded."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-limit", str(checkpoint), str(pruned),
           "--nsamples", str(nsamples), *(["--limit-dtype", dtype] if dtype else [])]
    print("$ python benchmarks/full7b.py " + shlex.join(cmd[2:]) + "   # layer 0, dense and pruned forward", flush=True)
    try:
        _, _, out = run_child(cmd, "the limit", capture=True)
    except RuntimeError as exc:
        return {"limit_error": str(exc)}
    return json.loads(out.strip().splitlines()[-1])


def with_limit(row: dict[str, Any], limit: dict[str, Any], pruned: Path) -> dict[str, Any]:
    """``row`` with the limit's figures, ``ours_over_limit`` and the mean seconds per phase."""
    row = {**row, **limit}
    if row.get("limit_s") and row.get("seconds_per_layer"):
        row["ours_over_limit"] = row["seconds_per_layer"] / row["limit_s"]
    report = pruned / "pruning_report.json"
    layers = json.loads(report.read_text(encoding="utf-8")).get("layers") if report.is_file() else None
    if layers and all("seconds" in layer for layer in layers):
        row["phases"] = C.mean_phases(layers)
    return row


# -- workers (inside the measured processes) ----------------------------------------------------------
def worker_cli(stats_path: Path, cli_args: list[str]) -> int:
    """``cli.main(cli_args)`` with the reader, writer and per-layer progress timed (module docstring)."""
    from rcpu_lightning.lightning.cli import main as cli_main

    stats: dict[str, Any] = {"read_seconds": 0.0, "read_bytes": 0, "write_seconds": 0.0, "write_bytes": 0,
                             "layer_seconds": [], "layer_rss_mb": []}
    _time_io(stats)
    _record_layers(stats)
    sys.argv = [str(CLI), *cli_args]  # what the results record names as the command
    start = time.perf_counter()
    try:
        cli_main()
    finally:
        stats.update(seconds=time.perf_counter() - start, peak_rss_mb=C.peak_rss_mb(), proc_io=_proc_io())
        C.write_json_atomic(stats_path, stats)
    return 0


def _time_io(stats: dict[str, Any]) -> None:
    """Wrap the out-of-core reader and writer with timers and byte counts (the functions unchanged).
    ``CheckpointSource.tensors`` only maps the shards (safetensors returns tensors backed by the
    memory-mapped file): the reading happens where the bytes are first touched, for a decoder layer in
    ``SafetensorsLayers.load`` (copied into the layer's weights), which is what ``read_seconds`` times."""
    from rcpu_lightning.pruning import streaming

    tensors, load, write = (streaming.CheckpointSource.tensors, streaming.SafetensorsLayers.load,
                            streaming.ShardWriter.write)

    def counted_tensors(self, names, device, dtype):
        out = tensors(self, names, device, dtype)
        stats["read_bytes"] += sum(t.nbytes for t in out.values())
        return out

    def timed_load(self, index, layer):
        start = time.perf_counter()
        load(self, index, layer)
        stats["read_seconds"] += time.perf_counter() - start

    def timed_write(self, tensors):
        start = time.perf_counter()
        write(self, tensors)
        stats["write_seconds"] += time.perf_counter() - start
        stats["write_bytes"] += sum(t.nbytes for t in tensors.values())

    streaming.CheckpointSource.tensors, streaming.ShardWriter.write = counted_tensors, timed_write
    streaming.SafetensorsLayers.load = timed_load


def _record_layers(stats: dict[str, Any]) -> None:
    """Record each layer's progress event, then report it as the callback would have."""
    from rcpu_lightning.lightning import callback

    make = callback.default_progress

    def recording_progress(*args, **kwargs):
        report = make(*args, **kwargs)

        def record(event):
            stats["layer_seconds"].append(event.seconds)
            stats["layer_rss_mb"].append(event.rss_mb)
            report(event)

        return record

    callback.default_progress = recording_progress


def _proc_io() -> dict[str, int]:
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:  # not Linux, or no permission
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in lines)}


def worker_reload(pruned: Path) -> dict[str, Any]:
    """``from_pretrained`` of the pruned folder and one forward of a tokenized sentence. Plain first; a
    folder whose config a plain ``LlamaConfig`` refuses (transformers 5 wants ``hidden_size`` divisible by
    the heads: 4096 and LLaMA-7B's 26 heads after 20 %) carries the project's modeling file
    (``modeling_pruned.py``), loaded with ``trust_remote_code=True``: ``reload_how`` says which loaded it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    start = time.perf_counter()
    out: dict[str, Any] = {"reload_how": "from_pretrained"}
    try:
        model = AutoModelForCausalLM.from_pretrained(pruned)
    except Exception as exc:  # noqa: BLE001  what a plain load says, recorded; the remote-code load decides
        if not (pruned / "modeling_pruned.py").is_file():
            raise
        out.update(reload_how="from_pretrained(trust_remote_code=True)",
                   reload_plain_error=(str(exc).strip().splitlines() or ["?"])[0][:300])
        model = AutoModelForCausalLM.from_pretrained(pruned, trust_remote_code=True)
    ids = AutoTokenizer.from_pretrained(pruned)("The tower is 324 metres tall.", return_tensors="pt").input_ids
    logits = model.eval()(ids).logits.float()  # [1, T, vocab]
    return {**out, "reload_ok": bool(torch.isfinite(logits).all()), "reload_seconds": time.perf_counter() - start,
            "reload_peak_rss_mb": C.peak_rss_mb(), "reload_logits_abs_max": float(logits.abs().max()),
            "reload_dtype": str(model.dtype).replace("torch.", "")}


def worker_limit(checkpoint: Path, pruned: Path, nsamples: int, dtype: str | None = None) -> dict[str, Any]:
    """One dense and one pruned forward of decoder layer 0 over ``nsamples`` x 128 tokens (step 5 of the module
    docstring), in ``dtype`` (the prune's execution dtype; default the checkpoint's). Only layer 0 is loaded
    (a 1-layer model of the checkpoint's config); the shapes decide the time, so the tokens are random ids,
    in the batches of the prune's calibration."""
    from dataclasses import replace

    import torch
    import yaml
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from rcpu_lightning.models.adapter import layer_prefix
    from rcpu_lightning.pruning import capture_layer_inputs
    from rcpu_lightning.pruning.io import load_plan
    from rcpu_lightning.pruning.streaming import INDEX_FILE
    from rcpu_lightning.pruning.surgery import apply_plan_shapes

    torch.set_grad_enabled(False)
    batch = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["data"]["init_args"]["calibration"]["batch_size"]
    config = AutoConfig.from_pretrained(checkpoint)
    config.num_hidden_layers = 1
    model = AutoModelForCausalLM.from_pretrained(checkpoint, config=config, dtype=getattr(torch, dtype) if dtype else "auto").eval()
    ids = torch.randint(0, config.vocab_size, (nsamples, SEQLEN), generator=torch.Generator().manual_seed(0))
    layer0 = capture_layer_inputs(model, list(ids.split(batch))).batches
    dense = C.layer_forward_seconds(model, layer0)
    plan = load_plan(pruned)
    apply_plan_shapes(model, replace(plan, layers=plan.layers[:1]))
    prefix = layer_prefix(0)  # "model.layers.0."
    index = json.loads((pruned / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
    weights = {}
    for shard in sorted({f for k, f in index.items() if k.startswith(prefix)}):
        with safe_open(str(pruned / shard), framework="pt") as f:
            weights.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    missing, unexpected = model.load_state_dict(weights, strict=False)  # cast to the layer's dtype
    if unexpected or any(k.startswith(prefix) for k in missing):
        raise RuntimeError(f"the pruned layer 0 does not fit its plan: missing {missing}, unexpected {unexpected}")
    pruned_s = C.layer_forward_seconds(model, layer0)
    return {"dense_forward_s": dense, "pruned_forward_s": pruned_s, "limit_s": dense + pruned_s,
            "limit_dtype": str(next(model.parameters()).dtype).replace("torch.", "")}


# -- the run ------------------------------------------------------------------------------------------
def ensure_checkpoint(folder: Path, args, config) -> dict[str, Any]:
    """Generate the checkpoint (a fresh process) unless ``folder`` holds the same one; what happened."""
    if rc.same_checkpoint(folder, config, args.seed):
        print(f"reusing {folder} (same config and seed)", flush=True)
        return {"generated": False, "generate_seconds": None, "generate_peak_rss_mb": None}
    which = ["--config", str(Path(args.config).resolve())] if args.config else ["--preset", args.preset]
    cmd = [sys.executable, str(Path(rc.__file__).resolve()), str(folder), *which, "--dtype", args.dtype,
           "--seed", str(args.seed), "--overwrite"]  # --overwrite replaces only a folder this project wrote
    print("$ python benchmarks/random_checkpoint.py " + shlex.join(cmd[2:]), flush=True)
    seconds, peak, _ = run_child(cmd, "random_checkpoint.py")
    return {"generated": True, "generate_seconds": seconds, "generate_peak_rss_mb": peak}


def row_key(label: str, args) -> str:
    extra = " ".join(args.extra) or "-"
    return (f"full7b|{label}|{args.dtype}|calib={args.nsamples}x{SEQLEN}|ppl_windows={args.ppl_windows}|"
            f"extra={extra}")


def build_row(label: str, args, config, gen: dict, prune: tuple[dict, float], test: tuple[dict, float],
              results: tuple[dict, dict], reload: dict, checkpoint: Path) -> dict[str, Any]:
    """The ``full7b`` row from what the steps measured (field meanings: module docstring)."""
    (pstats, pwall), (tstats, twall), (pres, tres) = prune, test, results
    layers = pstats["layer_seconds"]
    row = {"key": row_key(label, args), "mode": "full7b", "model": label, "dtype": args.dtype,
           "params": rc.read_record(checkpoint)["params"], "layers": int(config.num_hidden_layers),
           "hidden": config.hidden_size, "intermediate": config.intermediate_size,
           "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads, "vocab": config.vocab_size,
           "checkpoint_gb": _folder_bytes(checkpoint, "*.safetensors") / 1e9,
           "pruned_gb": pres.get("pruned_gb"), **gen,
           "total_minutes": pwall / 60, "prune_wall_seconds": pwall, "prune_seconds": pres.get("prune_seconds"),
           "seconds_per_layer": sum(layers) / len(layers) if layers else None, "layer_seconds": layers,
           "peak_rss_mb": pstats["peak_rss_mb"], "layer_rss_mb": pstats["layer_rss_mb"],
           "read_seconds": pstats["read_seconds"], "read_bytes": pstats["read_bytes"],
           "write_seconds": pstats["write_seconds"], "write_bytes": pstats["write_bytes"],
           "proc_io": pstats["proc_io"], "calib_samples": args.nsamples, "calib_seqlen": SEQLEN,
           "calibration": pres.get("calibration"), "decoder_params_removed": pres.get("decoder_params_removed"),
           "ppl": tres.get("ppl"), "ppl_windows": tres.get("ppl_windows"), "ppl_tokens": tres.get("tokens"),
           "test_wall_seconds": twall, "test_peak_rss_mb": tstats["peak_rss_mb"], **reload,
           "extra_prune_args": args.extra, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "ram_gb": _ram_gb(), "run": C.run_info()}
    return row


def _config_label(path: Path) -> str:
    """A user's config by the name of the folder that holds it."""
    return path.name if path.is_dir() else path.parent.name


def _folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


def _ram_gb() -> float | None:
    try:
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        return None
    return round(kb / 2**20, 1)


def run(args) -> dict[str, Any]:
    """The four steps (module docstring); returns the row (also added to the row store)."""
    config = rc.build_config(None if args.config else args.preset, args.config, args.dtype)
    label = args.preset or _config_label(Path(args.config).expanduser().resolve())
    work = Path(args.work_dir).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, pruned = work / "checkpoint", work / "pruned"
    started = time.perf_counter()
    written = [pruned, *(work / f"{s}{x}" for s in ("prune", "test") for x in (".json", ".config.yaml", ".stats.json"))]
    try:
        gen = ensure_checkpoint(checkpoint, args, config)
        if gen["generated"]:
            written.append(checkpoint)
        prune = run_measured(prune_args(checkpoint, pruned, work / "prune.json", args.nsamples, args.extra),
                             work / "prune.stats.json")
        pres = json.loads((work / "prune.json").read_text(encoding="utf-8"))
        pres["pruned_gb"] = _folder_bytes(pruned, "*.safetensors") / 1e9
        test = run_measured(test_args(pruned, work / "test.json", args.ppl_windows, args.dtype), work / "test.stats.json")
        tres = json.loads((work / "test.json").read_text(encoding="utf-8"))
        reload = run_reload(pruned)
        row = build_row(label, args, config, gen, prune, test, (pres, tres), reload, checkpoint)
        row = with_limit(row, run_limit(checkpoint, pruned, args.nsamples, execution_dtype(args.extra)), pruned)
        row["end_to_end_minutes"] = (time.perf_counter() - started) / 60  # all four steps
        C.RowStore(args.out).add(row)
    finally:
        if not args.keep:
            _remove(written, work)
    return row


def add_limit(args) -> dict[str, Any]:
    """``--limit-only``: step 5 alone, on the folders a ``--keep`` run with the same arguments left in
    ``--work-dir``; that run's row (same key) gets the figures. Nothing is generated, pruned or removed."""
    label = args.preset or _config_label(Path(args.config).expanduser().resolve())
    work = Path(args.work_dir).expanduser()
    store, key = C.RowStore(args.out), row_key(label, args)
    row = store.get(key)
    if row is None:
        raise SystemExit(f"--limit-only: {args.out} has no row {key!r}: run once with --keep and these arguments")
    if not (work / "pruned" / "config.json").is_file() or not (work / "checkpoint" / "config.json").is_file():
        raise SystemExit(f"--limit-only: {work} does not hold checkpoint/ and pruned/ (run with --keep)")
    row = with_limit(row, run_limit(work / "checkpoint", work / "pruned", args.nsamples, execution_dtype(args.extra)),
                     work / "pruned")
    row["limit_run"] = C.run_info()  # the limit measured later than the prune: its own machine state
    store.add(row)
    return row


def _remove(paths: list[Path], work: Path) -> None:
    """Remove what this run wrote (nothing else), then ``work`` if that left it empty."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()


def summary(row: dict[str, Any]) -> str:
    io = row["proc_io"]
    return "\n".join([
        f"{row['model']}: {row['params'] / 1e9:.2f} B params, checkpoint {row['checkpoint_gb']:.2f} GB ({row['dtype']}), "
        f"pruned {row['pruned_gb']:.2f} GB, decoder params removed {100 * row['decoder_params_removed']:.1f} %",
        f"generate: {C.fmt(row['generate_seconds'], '.0f')} s, peak RSS {C.fmt(row['generate_peak_rss_mb'], '.0f')} MB",
        f"prune: {row['total_minutes']:.2f} min wall, {C.fmt(row['seconds_per_layer'], '.1f')} s/layer, "
        f"peak RSS {row['peak_rss_mb']:.0f} MB ({row['peak_rss_mb'] / 1e3 / row['checkpoint_gb']:.2f} x checkpoint), "
        f"calibration {row['calib_samples']} x {row['calib_seqlen']}",
        f"  checkpoint tensors read {row['read_bytes'] / 1e9:.2f} GB (layer loads {row['read_seconds']:.1f} s), shard writes "
        f"{row['write_bytes'] / 1e9:.2f} GB in {row['write_seconds']:.1f} s; block layer: read "
        f"{io.get('read_bytes', 0) / 1e9:.2f} GB, write {io.get('write_bytes', 0) / 1e9:.2f} GB",
        f"test: ppl {row['ppl']:.1f} on {row['ppl_windows']} windows ({row['ppl_tokens']} tokens), "
        f"{row['test_wall_seconds']:.0f} s, peak RSS {row['test_peak_rss_mb']:.0f} MB",
        f"reload ({row.get('reload_how', 'from_pretrained')} + one forward): "
        f"{'finite logits' if row.get('reload_ok') else 'FAILED ' + row.get('reload_error', 'logits not finite')}",
        limit_line(row),
    ])


def limit_line(row: dict[str, Any]) -> str:
    if not row.get("limit_s"):
        return f"limit: not measured ({row.get('limit_error', 'no figures')})"
    phases = ", ".join(f"{k} {v:.1f}" for k, v in row.get("phases", {}).items())
    return (f"limit: layer 0 dense {row['dense_forward_s']:.1f} s + pruned {row['pruned_forward_s']:.1f} s = "
            f"{row['limit_s']:.1f} s ({row['limit_dtype']}); ours {row['ours_over_limit']:.2f}x the limit"
            + (f"; seconds per phase: {phases}" if phases else ""))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="full7b.py", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--preset", choices=sorted(rc.PRESETS), help="the model (default llama-7b; --quick: llama-7b-mini)")
    which.add_argument("--config", help="a config.json (or its folder) of your own model instead")
    p.add_argument("--dtype", default="bfloat16", choices=rc.DTYPES)
    p.add_argument("--seed", type=int, default=0, help="of the random weights")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows of 128 tokens (default 128; --quick 16)")
    p.add_argument("--ppl-windows", type=int, default=4, help="perplexity windows of the test step")
    p.add_argument("--work-dir", default="/tmp/rcpu-full7b", help="checkpoint and pruned folder (~2.5x the checkpoint)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint and the pruned folder (a rerun reuses the checkpoint)")
    p.add_argument("--extra-prune-args", default="", help="more cli.py prune arguments, one shell-quoted string")
    p.add_argument("--limit-only", action="store_true",
                   help="only measure the two-forward limit on what an earlier --keep run (same arguments) left, "
                        "and add it to that run's row")
    p.add_argument("--quick", action="store_true", help="llama-7b-mini, 16 windows: checks the script in about a minute")
    p.add_argument("--out", default=None, help="row store (default results/scale.json; --quick results/scale_quick.json)")
    p.add_argument("--worker-cli", help=argparse.SUPPRESS)
    p.add_argument("--worker-reload", help=argparse.SUPPRESS)
    p.add_argument("--worker-limit", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--limit-dtype", help=argparse.SUPPRESS)
    p.add_argument("cli_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.preset = args.preset or (None if args.config else "llama-7b-mini" if args.quick else "llama-7b")
    args.nsamples = args.nsamples or (16 if args.quick else 128)
    args.out = args.out or str(C.RESULTS_DIR / ("scale_quick.json" if args.quick else "scale.json"))
    args.extra = shlex.split(args.extra_prune_args)
    args.cli_args = args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker_cli:
        return worker_cli(Path(args.worker_cli), args.cli_args)
    if args.worker_reload:
        print(json.dumps(worker_reload(Path(args.worker_reload))))
        return 0
    if args.worker_limit:
        print(json.dumps(worker_limit(*map(Path, args.worker_limit), args.nsamples, args.limit_dtype)))
        return 0
    if args.limit_only:
        print(limit_line(add_limit(args)))
        return 0
    row = run(args)
    print(summary(row))
    print(f"row {row['key']!r} written to {args.out}")
    return 0 if row.get("reload_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
