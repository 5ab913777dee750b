"""rcpu-lightning: RCPU structured pruning for Llama-family models, as a Lightning callback."""

__version__ = "0.1.0"
