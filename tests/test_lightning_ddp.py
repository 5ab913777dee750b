"""DDP on CPU (gloo, 2 processes, strategy "ddp"): pruning and perplexity equal the single-process run.

Plain ``ddp`` re-executes ``sys.argv`` for rank 1, so the DDP run goes through
``tests/scripts/ddp_prune.py`` in a subprocess; the single-process reference runs in-process.
The tiny WikiText test split has 9 perplexity windows: an odd number over 2 ranks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from conftest import rounding_bound  # noqa: E402
from tiny_setup import save_tiny_llama, tiny_config, write_tiny_wikitext  # noqa: E402

from rcpu_lightning.lightning.cli import main  # noqa: E402

SCRIPT = Path(__file__).parent / "scripts" / "ddp_prune.py"

pytestmark = pytest.mark.ddp  # two gloo processes each (slow too: see conftest)


def test_ddp_prune_equals_single_process(tmp_path, monkeypatch):
    model = save_tiny_llama(tmp_path / "model")
    data = write_tiny_wikitext(tmp_path / "data")
    zero_shot = {"data__tasks": ["piqa"], "data__task_limit": 7, "data__task_batch_size": 2}  # 7 items: odd
    single = tiny_config(tmp_path / "single.yaml", model, data, tmp_path / "single", **zero_shot)
    ddp = tiny_config(tmp_path / "ddp.yaml", model, data, tmp_path / "ddp", **zero_shot)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(ddp), "--trainer.strategy", "ddp", "--trainer.devices", "2",
         "--trainer.accelerator", "cpu"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    monkeypatch.setattr(sys, "argv", ["cli.py"])
    main(["prune", "-c", str(single)])

    res_ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    res_one = json.loads((tmp_path / "single" / "results.json").read_text())
    assert res_ddp["world_size"] == 2 and res_one["world_size"] == 1
    assert res_ddp["ppl_windows"] == 9 and res_ddp["tokens"] == res_one["tokens"] == 9 * 15
    assert res_ddp["calibration"]["nsamples"] == res_one["calibration"]["nsamples"] == 16
    assert res_ddp["ppl"] == pytest.approx(res_one["ppl"], rel=1e-6)
    assert res_ddp["tasks"]["piqa"]["n"] == res_one["tasks"]["piqa"]["n"] == 7
    assert res_ddp["tasks"]["piqa"]["acc"] == res_one["tasks"]["piqa"]["acc"]
    assert res_ddp["tasks"]["piqa"]["acc_norm"] == res_one["tasks"]["piqa"]["acc_norm"]

    w_ddp = load_file(tmp_path / "ddp" / "pruned" / "model.safetensors")
    w_one = load_file(tmp_path / "single" / "pruned" / "model.safetensors")
    assert w_ddp.keys() == w_one.keys()
    # each rank sums float32 products of its own batches: the statistics differ from one process's by
    # round-off of 16 × 16 tokens, amplified by the compensations' condition number (≈ 5e2 for these tiny
    # random layers): the bound of the sampler test below
    tol = rounding_bound(16 * 16, 1.0, torch.float32, condition=5e2)
    for name in w_one:
        torch.testing.assert_close(w_ddp[name], w_one[name], atol=tol, rtol=0, msg=name)
    plan_ddp = json.loads((tmp_path / "ddp" / "pruned" / "pruning_plan.json").read_text())
    plan_one = json.loads((tmp_path / "single" / "pruned" / "pruning_plan.json").read_text())
    assert plan_ddp["layers"] == plan_one["layers"]


def test_fewer_calibration_samples_than_processes_fail_on_every_rank_before_any_work(tmp_path):
    model = save_tiny_llama(tmp_path / "model")
    data = write_tiny_wikitext(tmp_path / "data")
    cfg = tiny_config(tmp_path / "one.yaml", model, data, tmp_path / "out",
                      data__calibration={"nsamples": 1, "seqlen": 16, "batch_size": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(cfg), "--trainer.strategy", "ddp", "--trainer.devices", "2",
         "--trainer.accelerator", "cpu"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    message = "1 calibration samples for 2 processes: 1 process(es) would get no calibration batch"
    assert proc.returncode == 2 and proc.stderr.count(message) == 2, proc.stderr[-3000:]  # one line per rank
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


CONFIGURE_MODEL_SCRIPT = Path(__file__).parent / "scripts" / "ddp_configure_model.py"


def test_ddp_prunes_a_model_built_in_configure_model_once_before_wrapping_then_steps_and_rewraps(tmp_path):
    """Issue #15: the LM exists only after configure_model; it is pruned once per schedule step on every rank,
    before DDP wraps it and the optimizer is built (first step), and DDP is rebuilt over the new parameters
    with the optimizer kept (second step); both ranks end with the same weights, and the first step's
    decisions equal one process pruning on all calibration batches."""
    from ddp_configure_model import CONFIG, SCHEDULE, calibration_batches, tiny_llama

    from rcpu_lightning.pruning import capture_layer_inputs, prune_model

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(CONFIGURE_MODEL_SCRIPT), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for seen in ranks:
        assert seen["world_size"] == 2 and seen["configure_model_calls"] == 1, seen
        assert seen["prune_calls"] == 2 and seen["steps"] == [0, 1] and seen["global_step"] == 8, seen
        assert seen["heads_at_optimizers"] == 4, seen  # the optimizer was built over the pruned model
        assert all(v["ddp"] and v["ddp_params"] and v["optimizer_params"] for v in seen["probe"].values()), seen
        assert seen["probe"]["fit_start"]["heads"] == [4, 4] and seen["probe"]["epoch1"]["heads"] == [2, 2]

    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert saved[0]["state"].keys() == saved[1]["state"].keys()
    for name, value in saved[0]["state"].items():  # exact: DDP replicas must hold the same bits (each rank
        # runs the same code on the all-reduced statistics; gradients are averaged the same way)
        torch.testing.assert_close(saved[1]["state"][name], value, rtol=0, atol=0, msg=name)

    reference = tiny_llama()
    first = prune_model(reference, capture_layer_inputs(reference, calibration_batches()),
                        dataclasses.replace(CONFIG, ratio=SCHEDULE[0]), progress=False)
    assert saved[0]["first_plan"]["layers"] == first.plan.to_dict()["layers"]


SAMPLER_SCRIPT = Path(__file__).parent / "scripts" / "ddp_sampler.py"


@pytest.mark.parametrize("mode", ["predict", "fit"])
def test_a_padding_distributed_sampler_calibrates_as_one_process(tmp_path, mode):
    # 15 samples on 2 ranks: torch's DistributedSampler (drop_last=False) repeats one to make 16; the
    # repeat is left out, so the statistics are those of the 15 samples one process sees
    from ddp_sampler import run

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(SAMPLER_SCRIPT), mode, str(tmp_path), "2"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    (tmp_path / "one").mkdir()
    run(mode, tmp_path / "one", devices=1)
    one = torch.load(tmp_path / "one" / "rank0.pt", weights_only=False)
    assert one["nsamples"] == ranks[0]["nsamples"] == ranks[1]["nsamples"] == 15
    # The same 15 samples in other batches, summed in another order: the statistics differ by float32
    # round-off of 240 tokens' products, which the compensations amplify by their condition number (≈ 5e2
    # for these tiny random layers): rounding_bound ~1e-2 on weights ≤ 1; observed ~4e-7; counting the
    # repeated sample twice moves the weights by ~1.
    tol = rounding_bound(15 * 16, 1.0, torch.float32, condition=5e2)
    for name, value in one["state"].items():
        torch.testing.assert_close(ranks[0]["state"][name], value, atol=tol, rtol=0, msg=name)
