"""Make a saved folder with per-layer shapes loadable by any Hugging Face tool.

:func:`add_remote_code` copies :mod:`~rcpu_lightning.export.modeling_pruned` (torch + transformers
only) into the folder and adds ``auto_map`` and ``pruned_layers`` to its ``config.json``, so that
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` builds the shapes. Folders
that plain ``from_pretrained`` reloads (uniform shapes) get neither and stay plain checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import write_json_atomic
from . import modeling_pruned

if TYPE_CHECKING:  # the pruning package imports this module
    from ..pruning.plan import PruningPlan

MODELING_FILE = Path(modeling_pruned.__file__).name  # modeling_pruned.py
AUTO_MAP_KEY = "auto_map"


def pruned_layers(plan: "PruningPlan") -> list[dict]:
    """The ``pruned_layers`` entry of config.json: each layer's head counts, MLP width and biases."""
    return [{"num_heads": lp.num_heads, "num_kv_heads": lp.num_kv_heads,
             "intermediate_size": lp.intermediate_size, "biases": list(lp.biases)} for lp in plan.layers]


def add_remote_code(folder: str | os.PathLike, plan: "PruningPlan", plain: bool) -> None:
    """Give ``folder`` (written by ``save_pretrained``) the modeling file and config keys, unless
    ``plain`` (plain ``from_pretrained`` reloads it); a plain folder loses stale ones."""
    folder = Path(folder)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    if plain:
        if AUTO_MAP_KEY in config or modeling_pruned.LAYERS_KEY in config:
            config.pop(AUTO_MAP_KEY, None), config.pop(modeling_pruned.LAYERS_KEY, None)
            write_json_atomic(config_file, config)
        return
    base = (config.get("architectures") or ["LlamaForCausalLM"])[0]
    config[AUTO_MAP_KEY] = {"AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.Pruned{base}"}
    config[modeling_pruned.LAYERS_KEY] = pruned_layers(plan)
    shutil.copyfile(modeling_pruned.__file__, folder / MODELING_FILE)
    write_json_atomic(config_file, config)
