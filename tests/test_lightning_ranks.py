"""``on_rank_zero``: rank 0 works, every rank gets its result or raises its error (simulated ranks:
a broadcast that hands rank 0's value to the others)."""

import types

import pytest

from rcpu_lightning.lightning.ranks import on_rank_zero


def _ranks(world_size=2):
    sent = {}

    def broadcast(obj, src=0):
        sent.setdefault("value", obj)  # rank 0 broadcasts first; the others receive its object
        return sent["value"]

    strategy = types.SimpleNamespace(broadcast=broadcast)
    return [types.SimpleNamespace(is_global_zero=rank == 0, strategy=strategy) for rank in range(world_size)]


def test_every_rank_gets_rank_zeros_result_and_only_rank_zero_works():
    calls = []
    results = [on_rank_zero(t, lambda: calls.append(1) or "written") for t in _ranks()]
    assert results == ["written", "written"] and calls == [1]


def test_every_rank_raises_rank_zeros_error_with_its_type_and_message():
    def refuse():
        raise FileExistsError("out/x exists")

    for trainer in _ranks():
        with pytest.raises(FileExistsError, match="^out/x exists$"):
            on_rank_zero(trainer, refuse)


def test_with_failure_every_rank_raises_one_runtime_error_naming_the_original():
    class LocalError(Exception):  # a class that would not pickle: only its name travels
        pass

    def fail():
        raise LocalError("disk full")

    for trainer in _ranks():
        with pytest.raises(RuntimeError, match=r"^writing pruning.save_dir out failed on rank 0: LocalError: disk full$"):
            on_rank_zero(trainer, fail, catch=(Exception,), failure="writing pruning.save_dir out failed on rank 0")
