"""Deploying a pruned model outside this project: GGUF files for llama.cpp / ollama
(:mod:`~rcpu_lightning.export.gguf`) and self-contained Hugging Face folders for per-layer shapes
(:mod:`~rcpu_lightning.export.remote_code`)."""

from .gguf import GGUF_DTYPES, export_gguf, read_gguf

__all__ = ["GGUF_DTYPES", "export_gguf", "read_gguf"]
