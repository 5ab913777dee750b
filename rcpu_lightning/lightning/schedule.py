"""Gradual-pruning schedules as pure functions: check, describe, which ratio is due, each step's settings.

A schedule is ``{epoch: ratio}`` (the cumulative fraction of the *dense* model's heads and channels
removed from that epoch on), a function ``epoch -> ratio``, or None (``{0: config.ratio}``: one-shot).
:class:`~rcpu_lightning.lightning.RCPUPruningCallback` keeps the state (the epochs handled, the plan).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Optional, Union

from torch import nn

from ..models.adapter import decoder_layers, layer_parts
from ..pruning.config import PruningConfig, check_ratio
from ..pruning.plan import PruningPlan
from ..pruning.selection import feasible_count, head_layout

#: epoch -> cumulative fraction of the dense model's heads and channels removed from that epoch on,
#: or a function of the epoch returning that fraction.
Schedule = Union[dict[int, float], Callable[[int], float], None]


def check_ratio_value(value: Any, name: str) -> Optional[float]:
    """``value`` as a float in [0, 1) (None stays None); anything else is a ValueError naming ``name``."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
        value = float(value)  # e.g. a numpy scalar a schedule function returned
    return check_ratio(name, value)


def check_schedule(schedule: Schedule, config: PruningConfig) -> Schedule:
    """The schedule with sorted int epochs and float ratios; a one-line ValueError for anything else."""
    if schedule is None:
        return None
    if config.attn_ratio is not None or config.mlp_ratio is not None:
        raise ValueError("a schedule sets the ratio of heads and channels at each step: leave config.attn_ratio "
                         "and config.mlp_ratio unset (or use no schedule)")
    if callable(schedule):
        if config.structure != "uniform":
            raise ValueError(f"a schedule function prunes in several steps, which needs structure='uniform', "
                             f"not {config.structure!r}")
        return schedule
    if not isinstance(schedule, dict) or not schedule:
        raise ValueError(f"schedule={schedule!r} is invalid; allowed: a non-empty {{epoch: ratio}} mapping, a "
                         "function epoch -> ratio, or null")
    checked: dict[int, float] = {}
    for epoch, ratio in schedule.items():
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"schedule epoch {epoch!r} is invalid; allowed: an int >= 0")
        checked[epoch] = check_ratio_value(ratio, f"schedule[{epoch}]")
        if checked[epoch] is None:
            raise ValueError(f"schedule[{epoch}] is null; allowed: a number in [0, 1)")
    checked = dict(sorted(checked.items()))
    values = list(checked.values())
    if any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f"schedule={checked} decreases; its ratios are cumulative (of the dense model) and may "
                         "not go down")
    if len(checked) > 1 and config.structure != "uniform":
        raise ValueError(f"a schedule of {len(checked)} steps needs structure='uniform', not {config.structure!r} "
                         "(the adaptive structure decides per-layer counts for one global ratio)")
    return checked


def describe_schedule(schedule: Schedule) -> Any:
    """Plain data for records and checkpoints: the mapping, a function's name, or None."""
    if schedule is None or isinstance(schedule, dict):
        return None if schedule is None else {int(k): v for k, v in schedule.items()}
    return getattr(schedule, "__qualname__", repr(schedule))


def prunes_once(schedule: Schedule) -> bool:
    """Whether the schedule is a single step before training (what the predict loop can do)."""
    return schedule is None or (not callable(schedule) and set(schedule) == {0})


def due_ratio(schedule: Schedule, config: PruningConfig, last_epoch: int, epoch: int) -> Optional[float]:
    """The cumulative ratio due at ``epoch`` (None: no step), given the entries handled up to ``last_epoch``."""
    if schedule is None:
        return config.ratio if last_epoch < 0 <= epoch else None
    if callable(schedule):
        value = check_ratio_value(schedule(epoch), f"schedule({epoch})")
        return value or None
    due = [e for e in schedule if last_epoch < e <= epoch]
    return schedule[max(due)] if due else None


def largest_step_config(config: PruningConfig, schedule: Schedule) -> PruningConfig:
    """The settings checked against the model before any work: the largest ratio the schedule reaches."""
    if callable(schedule):  # not known in advance: the architecture only, each step checks its ratio
        return dataclasses.replace(config, ratio=0.0)
    if isinstance(schedule, dict):
        return dataclasses.replace(config, ratio=max(schedule.values()))
    return config


def first_step_config(config: PruningConfig, schedule: Schedule) -> PruningConfig:
    """The settings of the first step (the predict loop's only one)."""
    if schedule is None:
        return config
    ratio = schedule[min(schedule)] if isinstance(schedule, dict) else config.ratio
    return dataclasses.replace(config, ratio=ratio)


def step_config(config: PruningConfig, schedule: Schedule, lm: nn.Module, target: float,
                plan: Optional[PruningPlan]) -> Optional[PruningConfig]:
    """The engine's settings for a step to ``target`` (a cumulative ratio of the dense model); None
    when the model has that much removed already. On an unpruned model (``plan`` None) that is
    ``config`` at that ratio; on a model pruned before, ``attn_ratio``/``mlp_ratio`` of the *current*
    shapes that remove exactly (dense count at ``target``) - (already removed)."""
    if plan is None:
        return config if schedule is None else dataclasses.replace(config, ratio=target)
    dense = plan.dense
    heads_target, channels_target = (config.head_ratio, config.channel_ratio) if schedule is None else (target, target)
    unit = head_layout(dense["num_attention_heads"], dense["num_key_value_heads"], config.gqa_mode).unit_size
    want_heads = feasible_count(heads_target, dense["num_attention_heads"], unit, config.head_rounding)
    want_channels = feasible_count(channels_target, dense["intermediate_size"], 1, "floor")
    shapes = {(p.num_heads, p.intermediate_size) for p in map(layer_parts, decoder_layers(lm))}
    if len(shapes) != 1:
        raise ValueError("gradual pruning needs the same shapes in every decoder layer (uniform structure); "
                         f"the model has {sorted(shapes)} (heads, channels)")
    heads, channels = shapes.pop()
    need_heads = max(0, want_heads - (dense["num_attention_heads"] - heads))
    need_channels = max(0, want_channels - (dense["intermediate_size"] - channels))
    if need_heads == 0 and need_channels == 0:
        return None
    if need_heads >= heads or need_channels >= channels:
        raise ValueError(f"ratio {target:g} would remove every attention head or MLP channel of a layer")
    step = dataclasses.replace(config, ratio=target, attn_ratio=need_heads / heads, mlp_ratio=need_channels / channels)
    # the per-step ratios give exactly the counts wanted (feasible_count's epsilon sees to it; tested)
    if (feasible_count(step.attn_ratio, heads, unit, config.head_rounding), feasible_count(
            step.mlp_ratio, channels, 1, "floor")) != (need_heads, need_channels):
        raise RuntimeError(f"per-step ratios {step.attn_ratio!r}/{step.mlp_ratio!r} do not give "
                           f"{need_heads} heads / {need_channels} channels")
    return step
