"""Out-of-core pruning: a checkpoint larger than memory, one decoder layer at a time, disk to disk.

:func:`prune_checkpoint` reads a Hugging Face checkpoint folder (safetensors, sharded or not) and
writes the pruned checkpoint to another folder, holding at most one decoder layer (its dense and
pruned weights during the surgery) plus the calibration activations and statistics:

1. a *skeleton* of the model is built on the ``meta`` device (no weight allocated); only the token
   embeddings and the rotary embedding are materialised, to capture what enters decoder layer 0;
2. for each layer: its tensors are read from the shards onto the execution device
   (:class:`SafetensorsLayers`), the engine prunes it exactly as in memory (same code,
   :func:`~rcpu_lightning.pruning.prune_model`), the pruned layer is written to its own shard of the
   new checkpoint and dropped back to ``meta`` before the next layer is read;
3. the other tensors (embeddings, final norm, LM head) are copied one by one, then the index, the
   config, ``pruning_plan.json`` and the tokenizer files.

Everything is written into a hidden staging folder beside the target (``.NAME.tmp-<random>``), renamed
into place at the end (:func:`rcpu_lightning.files.atomic_dir`): a crash leaves no half checkpoint under
the target name. A run killed outright (SIGKILL, out of memory) cannot remove its staging folder, so
each staging folder holds an owner file (this machine, the process, the exact target) and the next run
to the same target removes the ones whose process is gone (:func:`remove_stale_staging`).
Distributed callers run it on every process with their share of the calibration batches and a
``reduce``; only the process with ``write=True`` writes.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..export.remote_code import add_remote_code
from ..files import OUTPUT_MARKERS, _staging, atomic_dir, check_output_path
from ..models.adapter import LAYERS_PATH, check_supported, decoder_layers, layer_prefix
from .malloc_tuning import fix_mmap_threshold
from .config import PruningConfig
from .engine import PruningReport, prune_model
from .inputs import LayerInputs, capture_layer_inputs
from .io import PLAN_FILE, plain_loadable, save_checkpoint_config, write_pruning_files
from .progress import ProgressFn
from .stats import Reduce

log = logging.getLogger(__name__)

__all__ = ["CheckpointSource", "SafetensorsLayers", "ShardWriter", "build_skeleton", "check_shard", "checkpoint_dtype",
           "prune_checkpoint", "prune_skeleton", "remove_stale_staging"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
#: Files of a checkpoint folder that :func:`prune_checkpoint` does not copy: rewritten (index, config), or
#: markers of who wrote the source folder (the pruned folder gets its own plan and report).
_REWRITTEN = (INDEX_FILE, "config.json", *OUTPUT_MARKERS)
#: Weight files of other formats (or other safetensors than the index names) that hub folders carry beside
#: the safetensors shards: PyTorch ``pytorch_model*.bin``, Meta's ``consolidated.*.pth``, TF, Flax, GGUF,
#: ONNX, and their ``*.index.json``. They hold the DENSE weights, so they are not copied beside the pruned
#: shards: a loader that prefers them would get the wrong shapes, and they double the folder's size.
_DENSE_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")


class CheckpointSource:
    """A Hugging Face checkpoint folder read tensor by tensor (safetensors only)."""

    def __init__(self, path: str | os.PathLike) -> None:
        from transformers import AutoConfig

        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{str(self.path)!r} is not a Hugging Face checkpoint folder (no config.json)")
        if (self.path / PLAN_FILE).is_file():
            raise ValueError(f"{str(self.path)!r} holds a pruned model ({PLAN_FILE}); prune the dense checkpoint")
        self.config = AutoConfig.from_pretrained(self.path)
        check_supported(self.config)
        self.files = self._weight_map()
        for file in sorted(set(self.files.values())):  # every shard, before the first layer is read
            names = check_shard(file)
            missing = [n for n, f in self.files.items() if f == file and n not in names]
            if missing:
                raise ValueError(f"{str(file)!r} lacks {len(missing)} tensor(s) the index puts there, "
                                 f"e.g. {missing[0]!r}")

    def _weight_map(self) -> dict[str, Path]:
        """tensor name -> the shard that holds it."""
        if (self.path / INDEX_FILE).is_file():
            weight_map = json.loads((self.path / INDEX_FILE).read_text())["weight_map"]
            return {name: self.path / file for name, file in weight_map.items()}
        if (self.path / SINGLE_FILE).is_file():
            return dict.fromkeys(check_shard(self.path / SINGLE_FILE), self.path / SINGLE_FILE)
        raise FileNotFoundError(
            f"{str(self.path)!r} has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}); out-of-core pruning "
            "reads safetensors only: re-save the model with save_pretrained(..., safe_serialization=True)")

    def tensors(self, names: Iterable[str], device: torch.device, dtype: torch.dtype | None) -> dict[str, Tensor]:
        """The named tensors, read shard by shard onto ``device`` (cast to ``dtype`` if given)."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            if name not in self.files:
                raise KeyError(f"tensor {name!r} is not in the checkpoint {str(self.path)!r}")
            by_file.setdefault(self.files[name], []).append(name)
        out = {}
        for file, wanted in by_file.items():
            with safe_open(file, framework="pt", device=str(device)) as fh:
                for name in wanted:
                    t = fh.get_tensor(name)
                    out[name] = t if dtype is None or not t.is_floating_point() else t.to(dtype)
        return out

    def layer_prefix(self, index: int) -> str:
        return layer_prefix(index)

    def other_names(self) -> list[str]:
        """Tensors that belong to no decoder layer (embeddings, final norm, LM head), in file order."""
        return [n for n in self.files if not n.startswith(LAYERS_PATH + ".")]

    def side_files(self) -> list[Path]:
        """Files copied unchanged into the pruned checkpoint (tokenizer, generation config, ...): the
        folder's top-level files less the weights in any format, their indexes, and what is rewritten."""
        return sorted(p for p in self.path.iterdir() if p.is_file() and not p.name.startswith(".")
                      and p.name not in _REWRITTEN and not _is_weight_file(p))


def _is_weight_file(path: Path) -> bool:
    return path.suffix in _DENSE_WEIGHT_SUFFIXES or path.name.endswith(".index.json")


def check_shard(file: Path) -> list[str]:
    """The tensor names of the safetensors file ``file``, after checking that its header is whole and that
    the file is exactly as long as the header says (a truncated download or copy fails here, naming the
    file, not when its tensors are read hours later). Layout: an 8-byte little-endian header length
    ``n``, ``n`` bytes of JSON (``name -> {dtype, shape, data_offsets: [begin, end]}``), then the data."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{str(file)!r} is not a complete safetensors file ({why}); download or save it again")

    if not file.is_file():
        raise FileNotFoundError(f"{str(file)!r}: the checkpoint's index names this shard, but it does not exist")
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, no header")
        n = int.from_bytes(head, "little")
        if 8 + n > size:
            raise bad(f"{size} bytes, shorter than its {n}-byte header")
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            raise bad("its header is not JSON") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"} if isinstance(header, dict) else None
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        raise bad("its header lists no valid data offsets") from None
    if size != 8 + n + end:
        raise bad(f"{size} bytes, its header describes {8 + n + end}")
    return sorted(tensors)  # the order safe_open lists them in


def build_skeleton(source: CheckpointSource, dtype: torch.dtype) -> nn.Module:
    """The model on the ``meta`` device, with its token and rotary embeddings materialised on CPU (what a
    forward needs to reach decoder layer 0); decoder layers, final norm and LM head hold no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(source.config, dtype=dtype)
    emb = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is emb) + ".weight"
    weight = source.tensors([name], torch.device("cpu"), dtype)[name]
    emb.weight = nn.Parameter(weight, requires_grad=False)
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is not None:  # buffers computed at construction: build it again, on CPU
        model.model.rotary_emb = type(rotary)(config=model.config)
    return model.eval()


class ShardWriter:
    """Writes a checkpoint as one safetensors shard per decoder layer, plus one per other tensor."""

    def __init__(self, folder: Path, source: CheckpointSource) -> None:
        self.folder = folder
        self.layers = int(source.config.num_hidden_layers)
        self.total = self.layers + len(source.other_names())
        self.weight_map: dict[str, str] = {}
        self.size = 0
        self._next = 1

    def write(self, tensors: dict[str, Tensor]) -> None:
        file = f"model-{self._next:05d}-of-{self.total:05d}.safetensors"
        self._next += 1
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, str(self.folder / file), metadata={"format": "pt"})
        self.weight_map.update(dict.fromkeys(tensors, file))
        self.size += sum(t.numel() * t.element_size() for t in tensors.values())

    def write_layer(self, index: int, layer: nn.Module) -> None:
        self.write({layer_prefix(index) + k: v for k, v in layer.state_dict().items()})

    def finish(self) -> None:
        if self._next != self.total + 1:
            raise RuntimeError(f"wrote {self._next - 1} of {self.total} shards")
        index = {"metadata": {"total_size": self.size}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


class SafetensorsLayers:
    """A :class:`~rcpu_lightning.pruning.layer_store.LayerStore` reading layers from a checkpoint and
    writing the pruned ones to a :class:`ShardWriter` (or nowhere, on processes that do not write).

    Each layer is read in ``execution_dtype`` (default ``dtype``) and written in ``dtype``."""

    def __init__(self, source: CheckpointSource, writer: ShardWriter | None, device: torch.device,
                 dtype: torch.dtype, execution_dtype: torch.dtype | None = None) -> None:
        self.source, self.writer, self.device, self.dtype = source, writer, device, dtype
        self.execution_dtype = execution_dtype or dtype

    def load(self, index: int, layer: nn.Module) -> None:
        prefix = self.source.layer_prefix(index)
        names = [prefix + k for k in layer.state_dict()]
        tensors = self.source.tensors(names, self.device, self.execution_dtype)
        layer.to(dtype=self.execution_dtype)  # still on meta: no memory
        layer.to_empty(device=self.device)
        with torch.no_grad():
            for key, value in layer.state_dict(keep_vars=True).items():
                value.copy_(tensors.pop(prefix + key))

    def unload(self, index: int, layer: nn.Module) -> None:
        layer.to("meta").to(dtype=self.dtype)

    def save(self, index: int, layer: nn.Module) -> None:
        if self.writer is not None:
            self.writer.write_layer(index, layer.to(dtype=self.dtype))
        self.unload(index, layer)


def prune_checkpoint(
    source: str | os.PathLike,
    target: str | os.PathLike,
    config: PruningConfig,
    batches: Iterable[Any],
    reduce: Reduce | None = None,
    progress: bool | ProgressFn | None = True,
    overwrite: bool = False,
    calibration: dict[str, Any] | None = None,
    dtype: torch.dtype | str | None = None,
    write: bool = True,
) -> PruningReport:
    """Prune the checkpoint folder ``source`` into ``target`` without ever holding the whole model.

    ``batches``: this process's calibration batches (``input_ids`` [B, T] or dicts, as for
    :func:`~rcpu_lightning.pruning.capture_layer_inputs`). Layers run on ``config.execution_device``
    (default CPU) in ``config.execution_dtype`` and are written in ``dtype`` (default for both: the
    checkpoint's). ``target`` must not exist or be empty
    unless ``overwrite``. ``write=False`` (the other processes of a distributed run) writes nothing.
    Returns the engine's report; the pruned model is only on disk (``load_pruned(target)``).
    """
    src = CheckpointSource(source)
    dtype = checkpoint_dtype(dtype, src.config)
    if write:
        check_output_path(target, overwrite, "target", "overwrite=True")
    model = build_skeleton(src, dtype)
    inputs = capture_layer_inputs(model, batches, offload=config.offload_inputs, dtype=config.execution_torch_dtype)
    return prune_skeleton(src, model, inputs, target, config, reduce, progress, overwrite, calibration, write)


def prune_skeleton(
    source: CheckpointSource, model: nn.Module, inputs: LayerInputs, target: str | os.PathLike, config: PruningConfig,
    reduce: Reduce | None = None, progress: bool | ProgressFn | None = True, overwrite: bool = False,
    calibration: dict[str, Any] | None = None, write: bool = True,
) -> PruningReport:
    """The pruning half of :func:`prune_checkpoint`, for callers that built the skeleton
    (:func:`build_skeleton`) and captured its layer-0 inputs themselves (the Lightning callback's predict
    loop does). ``inputs`` are released as the layers go.

    Fixes glibc's mmap threshold for the process (:mod:`.malloc_tuning`: otherwise freed layers stay in
    the heap and the peak grows with depth); ``MALLOC_MMAP_THRESHOLD_`` in the environment wins."""
    fix_mmap_threshold()
    dtype = model.get_input_embeddings().weight.dtype
    device = torch.device(config.execution_device or "cpu")
    if write:
        remove_stale_staging(target)
    with atomic_dir(target, overwrite, "target", "overwrite=True") if write else nullcontext() as staged:
        if write:
            _claim(staged, target)
        writer = ShardWriter(staged, source) if write else None
        store = SafetensorsLayers(source, writer, device, dtype, config.execution_torch_dtype)
        report = prune_model(model, inputs, config, reduce=reduce, progress=progress, overwrite_inputs=True,
                             calibration=calibration, store=store)
        if writer is not None:
            _finish(source, writer, model, report, dtype)
            (staged / _OWNER_FILE).unlink()  # not part of the checkpoint
    return report


#: Written into each staging folder of :func:`prune_skeleton`: who stages there, for which target.
_OWNER_FILE = ".rcpu-staging-owner.json"


def _claim(staged: Path, target: str | os.PathLike) -> None:
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "target": str(Path(target).expanduser().resolve())}
    (staged / _OWNER_FILE).write_text(json.dumps(owner) + "\n")


def remove_stale_staging(target: str | os.PathLike) -> list[Path]:
    """Remove what killed runs to ``target`` left: hidden siblings named as :func:`rcpu_lightning.files.atomic_dir`
    names its staging folders for ``target`` that hold this module's owner file for exactly ``target``,
    written by a process of this machine that no longer runs. Anything else (a live run's staging, a
    folder of another target or of another tool) stays. Returns the folders removed."""
    target = Path(target).expanduser().resolve()
    prefix = _staging(target, "tmp").name.rsplit("-", 1)[0] + "-"  # ".NAME.tmp-"
    removed = []
    for folder in sorted(target.parent.glob(glob.escape(prefix) + "*")) if target.parent.is_dir() else []:
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            owner = json.loads((folder / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(owner, dict) or owner.get("target") != str(target) or \
                owner.get("host") != socket.gethostname() or _running(owner.get("pid")):
            continue
        shutil.rmtree(folder)
        log.info("removed %s: the staging folder of an earlier run to %s that was killed", folder, target)
        removed.append(folder)
    return removed


def _running(pid: Any) -> bool:
    """Whether process ``pid`` of this machine still runs (True when that cannot be told: keep its folder)."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or no permission to ask
        return True
    return True


def _finish(src: CheckpointSource, writer: ShardWriter, model: nn.Module, report: PruningReport,
            dtype: torch.dtype) -> None:
    for name in src.other_names():  # one tensor at a time: the LM head of a 70B model is ~2 GB
        writer.write(src.tensors([name], torch.device("cpu"), dtype))
    writer.finish()
    model.config.dtype = dtype
    save_checkpoint_config(model.config, report.plan, writer.folder)
    add_remote_code(writer.folder, report.plan, plain_loadable(report.plan, model.config))
    write_pruning_files(writer.folder, report.plan, report.summary())  # as save_pruned: the one writer
    for file in src.side_files():
        shutil.copy2(file, writer.folder / file.name)
    log.info("pruned checkpoint written: %d shards, %.1f MB", writer.total, writer.size / 2**20)


def checkpoint_dtype(dtype: torch.dtype | str | None, config) -> torch.dtype:
    """``dtype`` if given, else the checkpoint config's dtype (float32 when it names none)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype or getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    if isinstance(name, torch.dtype):
        return name
    return getattr(torch, str(name).replace("torch.", ""))


def count_resident_layers(model: nn.Module) -> int:
    """Decoder layers whose weights are materialised (not on ``meta``): what out-of-core pruning bounds."""
    return sum(any(p.device.type != "meta" for p in layer.parameters()) for layer in decoder_layers(model))
