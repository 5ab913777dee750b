"""Model loading and the Llama-family architecture adapter."""

from .adapter import (
    LAYERS_PATH,
    SUPPORTED_MODEL_TYPES,
    LayerParts,
    check_supported,
    decoder_layers,
    decoder_parts,
    layer_parts,
    layer_prefix,
    model_device,
)
from .loading import (
    EMBEDDED_MODELS,
    check_model_spec,
    default_cache_dir,
    embedded_gguf_path,
    gguf_to_checkpoint,
    load_causal_lm,
    resolve_checkpoint,
)

__all__ = [
    "EMBEDDED_MODELS",
    "check_model_spec",
    "LAYERS_PATH",
    "SUPPORTED_MODEL_TYPES",
    "LayerParts",
    "check_supported",
    "decoder_layers",
    "decoder_parts",
    "default_cache_dir",
    "embedded_gguf_path",
    "gguf_to_checkpoint",
    "layer_parts",
    "layer_prefix",
    "load_causal_lm",
    "model_device",
    "resolve_checkpoint",
]
