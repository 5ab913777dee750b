"""Saving and loading pruned checkpoints.

``save_pruned`` writes a Hugging Face checkpoint plus ``pruning_plan.json``, atomically (staged in a
hidden sibling folder, then renamed into place; an existing non-empty folder is only replaced with
``overwrite=True``, see :mod:`rcpu_lightning.files`).

* Plain-loadable plans (every layer the same shapes, a config that validates, biases the config
  flags can express): ``config.json`` holds the pruned values and
  ``AutoModelForCausalLM.from_pretrained`` reloads the model.
* Other plans (AL-AM's per-layer shapes; e.g. 32 -> 26 heads with hidden 4096, which
  transformers-5 ``LlamaConfig`` rejects since ``hidden_size % num_attention_heads != 0``; an
  o_proj bias on Mistral/Qwen2): ``config.json`` holds the *dense* shape values, so it parses, and
  plain ``from_pretrained`` fails loudly on the size mismatch. Use :func:`load_pruned`, or
  ``from_pretrained(path, trust_remote_code=True)``: such folders carry ``modeling_pruned.py``, their
  per-layer shapes (``pruned_layers``) and ``auto_map`` (:mod:`rcpu_lightning.export.remote_code`).

``load_pruned`` rebuilds any plan: it builds the config with the dense (valid) values, lets
``from_pretrained`` instantiate a subclass whose ``__init__`` ends with
:func:`apply_plan_shapes`, so that all of ``from_pretrained`` (dtype, device_map, tied weights,
buffers) works on the pruned shapes, then restores the plain class and the uniform config values.

``save_hf_checkpoint`` is the folder the CLI and the Lightning callback write (``save_pruned`` +
tokenizer + ``pruning_report.json``); ``REPORT_KEYS`` maps that report's keys to a results record's.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from torch import nn

from ..export.remote_code import add_remote_code
from ..files import PLAN_FILE, REPORT_FILE, atomic_dir, write_json_atomic
from .config import PruningConfig
from .engine import PruningReport
from .plan import SHAPE_KEYS, BIAS_KEYS, PruningPlan
from .surgery import ATTN_PROJ, BIAS_FLAG_MODEL_TYPES, MLP_PROJ, apply_plan_shapes


def write_pruning_files(folder: str | os.PathLike, plan: PruningPlan | None = None,
                        report: dict[str, Any] | None = None) -> None:
    """The one writer of what a pruned model folder says about its pruning, each file atomically:
    ``pruning_plan.json`` (``plan``) and ``pruning_report.json`` (``report``: e.g.
    :meth:`~.engine.PruningReport.summary`, plus what the caller adds). ``None``: that file is not written."""
    if plan is not None:
        write_json_atomic(Path(folder) / PLAN_FILE, plan.to_dict(), indent=1)
    if report is not None:
        write_json_atomic(Path(folder) / REPORT_FILE, report, indent=1)


def _config_validates(config) -> bool:
    """Whether the config class accepts these values at construction (transformers-5 validators)."""
    try:
        type(config).from_dict(config.to_dict())
    except Exception:  # StrictDataclassClassValidationError is not a ValueError
        return False
    return True


def plain_loadable(plan: PruningPlan, config) -> bool:
    """Whether ``config`` (already holding the pruned values) reloads with plain ``from_pretrained``."""
    if plan.uniform_values() is None or not _config_validates(config):
        return False
    for names, flag in ((ATTN_PROJ, "attention_bias"), (MLP_PROJ, "mlp_bias")):
        expressible = bool(getattr(config, flag, False)) and plan.model_type in BIAS_FLAG_MODEL_TYPES
        if not expressible and any(n in names for lp in plan.layers for n in lp.added_biases):
            return False
    return True


@contextmanager
def _dense_config(config, plan: PruningPlan):
    """Temporarily put the plan's dense (valid) shape values into ``config``."""
    saved = {k: getattr(config, k) for k in SHAPE_KEYS + BIAS_KEYS if hasattr(config, k)}
    try:
        for key in saved:
            setattr(config, key, plan.dense[key])
        yield config
    finally:
        for key, value in saved.items():
            setattr(config, key, value)


def checkpoint_config(config, plan: PruningPlan):
    """The config values a saved checkpoint gets: the pruned ones when plain ``from_pretrained`` can
    reload them (:func:`plain_loadable`), else the dense ones (plain loading then fails loudly on the
    size mismatch, and :func:`load_pruned` rebuilds the shapes from the plan). A context manager."""
    return nullcontext() if plain_loadable(plan, config) else _dense_config(config, plan)


def save_checkpoint_config(config, plan: PruningPlan, folder: str | os.PathLike) -> None:
    """Write ``config.json`` of a pruned checkpoint: the values of :func:`checkpoint_config`, with
    ``head_dim`` written out whenever it is not ``hidden_size // num_attention_heads`` (transformers 4
    leaves it out of ``config.json`` when it equals a default config's, 128, and a loader then takes
    ``hidden_size // num_attention_heads``: a uniform prune of whole kv groups would not reload)."""
    with checkpoint_config(config, plan):
        config.save_pretrained(folder)
        _pin_head_dim(Path(folder) / "config.json", config)


def _pin_head_dim(file: Path, config) -> None:
    data = json.loads(file.read_text())
    head_dim = getattr(config, "head_dim", None)
    heads, hidden = data.get("num_attention_heads"), data.get("hidden_size")
    if "head_dim" not in data and head_dim and heads and hidden != int(head_dim) * int(heads):
        write_json_atomic(file, {**data, "head_dim": int(head_dim)})


def save_pruned(model: nn.Module, plan: PruningPlan, path: str | os.PathLike, overwrite: bool = False,
                report: dict[str, Any] | None = None, **save_kwargs: Any) -> Path:
    """Write ``model`` (pruned by ``plan``) as an HF checkpoint plus ``pruning_plan.json`` at ``path``
    (and ``pruning_report.json`` when a ``report`` is given, see :func:`write_pruning_files`).

    A folder of per-layer shapes also gets a modeling file (``AutoModelForCausalLM.from_pretrained(path,
    trust_remote_code=True)`` loads it; see :mod:`rcpu_lightning.export.remote_code`).
    Atomic; an existing non-empty ``path`` is refused unless ``overwrite=True`` (then it is replaced
    as a whole). ``save_kwargs`` go to ``save_pretrained``. Returns the path.
    """
    with atomic_dir(path, overwrite, "save_pruned path") as staged:
        with checkpoint_config(model.config, plan):
            model.save_pretrained(staged, **save_kwargs)
            _pin_head_dim(staged / "config.json", model.config)
        add_remote_code(staged, plan, plain_loadable(plan, model.config))  # per-layer shapes: trust_remote_code
        write_pruning_files(staged, plan, report)
    return Path(path)


def load_plan(path: str | os.PathLike) -> PruningPlan:
    """Read ``pruning_plan.json`` from a checkpoint folder."""
    file = Path(path) / PLAN_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} was not written by save_pruned")
    return PruningPlan.from_dict(json.loads(file.read_text()))


def load_pruned(path: str | os.PathLike, **from_pretrained_kwargs: Any) -> nn.Module:
    """Load a checkpoint written by :func:`save_pruned`, whatever its plan.

    ``from_pretrained_kwargs`` go to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``dtype``,
    ``device_map``). The returned model has the plain architecture class.
    """
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    plan = load_plan(path)
    config_dict = json.loads((Path(path) / "config.json").read_text())
    for key in SHAPE_KEYS + BIAS_KEYS:
        if key in config_dict or key == "head_dim":
            config_dict[key] = plan.dense[key]
    model_type = config_dict.pop("model_type", plan.model_type)
    config = AutoConfig.for_model(model_type, **config_dict)
    base = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        apply_plan_shapes(self, plan)

    shaped = type(base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__})
    model = shaped.from_pretrained(path, config=config, **from_pretrained_kwargs)
    model.__class__ = base
    return model


# -- a pruned model folder as the CLI and the Lightning callback write it --------------------------
OVERWRITE_FLAG = "overwrite=True (CLI: --pruning.overwrite true)"
#: The record of a model nobody pruned (results and output path placeholders).
DENSE_FIELDS = {"method": "dense", "ratio": 0.0}
#: Pruning facts ``pruning_report.json`` holds -> their key in a results record / callback summary.
REPORT_KEYS = {"params_before": "params_before", "params_after": "params_after",
               "decoder_params_removed": "decoder_params_removed", "model_params_removed": "model_params_removed",
               "layer_params_removed": "layer_params_removed", "seconds": "prune_seconds",
               "world_size": "prune_world_size"}
#: Facts of a summary written to ``pruning_report.json`` under the same key, and not read back.
REPORT_ONLY_KEYS = ("notes", "pruning_steps", "schedule")


def report_fields(summary: dict[str, Any] | None) -> dict[str, Any]:
    """A results summary under the keys of ``pruning_report.json``."""
    if not summary:
        return {}
    out = {k: summary[k] for k in REPORT_ONLY_KEYS if k in summary}
    out.update({report_key: summary[key] for report_key, key in REPORT_KEYS.items() if key in summary})
    return out


def summary_fields(report: dict[str, Any]) -> dict[str, Any]:
    """The facts of a ``pruning_report.json`` under the keys of a results record (the inverse of
    :func:`report_fields`, for the keys it reads back)."""
    return {key: report[report_key] for report_key, key in REPORT_KEYS.items() if report_key in report}


def written_by_run(folder: str | os.PathLike, run_id: str) -> bool:
    """Whether ``folder`` holds a ``pruning_report.json`` written by the run ``run_id``."""
    try:
        return json.loads((Path(folder).expanduser() / REPORT_FILE).read_text()).get("run_id") == run_id
    except (OSError, ValueError, AttributeError):
        return False


def output_fields(config: PruningConfig, nsamples: int | None, schedule: Any = None) -> dict[str, Any]:
    """Placeholder values of a pruning run's output paths (:data:`rcpu_lightning.files.OUTPUT_PATH_FIELDS`):
    the engine settings (``ratio``: where a ``{epoch: ratio}`` schedule ends) and the calibration size."""
    fields = {**config.to_dict(), "nsamples": nsamples}
    if isinstance(schedule, dict) and schedule:
        fields["ratio"] = schedule[max(schedule)]
    return fields


def save_hf_checkpoint(lm: nn.Module, plan: PruningReport | PruningPlan | dict | None, path: str | Path,
                       tokenizer: Any = None, overwrite: bool = False, extra: dict | None = None,
                       what: str = "pruning.save_dir") -> Path:
    """``save_pruned`` (``save_pretrained`` for a model without a plan) + tokenizer + ``pruning_report.json``
    into ``path``, atomically (see :func:`rcpu_lightning.files.atomic_dir`; an existing non-empty ``path``
    needs ``overwrite``). ``plan``: a :class:`PruningReport` (its summary is written too), a plan, or None."""
    summary: dict[str, Any] = {}
    if isinstance(plan, PruningReport):
        summary = plan.summary()
        plan = plan.plan
    if isinstance(plan, dict):
        plan = PruningPlan.from_dict(plan)
    elif plan is not None and not isinstance(plan, PruningPlan):
        raise TypeError(f"a pruning plan must be a dict (PruningPlan.to_dict()) or a PruningPlan, got {type(plan).__name__}")
    with atomic_dir(path, overwrite, what, OVERWRITE_FLAG) as staged:
        if plan is not None:
            save_pruned(lm, plan, staged, overwrite=True)
        else:
            lm.save_pretrained(staged)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(staged)
        write_pruning_files(staged, report={**summary, **(extra or {})})
    return Path(path)
