"""benchmarks/scale.py and benchmarks/gpu_llama7b.py on tiny shapes (the real runs are benchmarks, not tests)."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from benchmarks import gpu_llama7b, scale  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_grad_mode():
    """The scripts' ``main`` turns autograd off for the process (a benchmark never trains): give it back."""
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


def _args(worker: str, source: Path, target: Path) -> Namespace:
    return Namespace(worker=worker, size="tiny", source=str(source), target=str(target), nsamples=8, threads=1,
                     arithmetic="fast", logits=True, dtype="float32")


def test_generated_checkpoint_is_a_plain_llama_of_the_declared_size(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = scale.make_checkpoint(tmp_path / "ckpt", "tiny")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == scale._params("tiny")
    assert len(list(folder.glob("*.safetensors"))) == scale.SIZES["tiny"][4] + 1  # a shard per layer + the rest
    assert abs(scale.checkpoint_mb(folder) * 2**20 - 4 * scale._params("tiny")) < 64 * 1024  # float32 + headers


def test_disk_and_memory_workers_prune_the_same_model(tmp_path):
    folder = scale.make_checkpoint(tmp_path / "ckpt", "tiny")
    disk = scale.worker(_args("disk", folder, tmp_path / "pruned"))
    memory = scale.worker(_args("memory", folder, tmp_path / "unused"))
    assert disk["decoder_params_removed"] == memory["decoder_params_removed"] > 0.1  # MLP only: 4 heads floor to 0
    diff = (torch.tensor(disk["logits"]) - torch.tensor(memory["logits"])).abs().max()
    assert diff < 1e-4 and disk["peak_rss_mb"] > 0
    assert (tmp_path / "pruned" / "pruning_plan.json").is_file()


def test_gpu_script_runs_on_cpu_at_tiny_size(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu_llama7b.main(["--device", "cpu", "--tiny", "--nsamples", "8", "--layers70b", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"device", "layers", "hidden", "seconds_per_layer", "peak_gpu_mb"} <= set(result)
    assert result["layers"] == 4 and result["llama70b_onload"]["layers"] == 2 and result["seconds_per_layer"] > 0
    from rcpu_lightning.pruning.progress import PHASES

    assert set(result["phases"]) == set(PHASES) and result["limit_s"] > 0
    assert result["ours_over_limit"] == pytest.approx(result["seconds_per_layer"] / result["limit_s"])
    assert result["llama70b_onload"]["limit_s"] is None  # its layers wait on the CPU: no layer-0 limit there


def test_layer7b_worker_measures_the_two_forward_limit_and_the_phases(tmp_path):
    folder = scale.make_checkpoint(tmp_path / "ckpt", "tiny")
    ours = scale.worker(_args("layer7b-ours", folder, tmp_path / "unused"))
    assert ours["dense_forward_s"] > 0 and ours["pruned_forward_s"] > 0
    assert ours["phases"]["statistics"] > 0 and ours["phases"]["forward"] > 0
    assert sum(ours["phases"].values()) * scale.SIZES["tiny"][4] <= ours["seconds"]  # parts of the whole prune
