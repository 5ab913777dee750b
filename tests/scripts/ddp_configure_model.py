"""A LightningModule that builds its LM in ``configure_model``, pruned by a two-step schedule under DDP.

Usage: python tests/scripts/ddp_configure_model.py OUT_DIR [strategy] [devices]

Plain ``ddp`` re-launches ``sys.argv`` for the other ranks, so this script must be runnable as is.
Every rank writes ``OUT_DIR/rank<r>.json`` (what it saw: configure_model calls, engine calls, the shapes
the optimizer was built over, whether DDP wraps the pruned parameters after each step) and
``OUT_DIR/rank<r>.pt`` (its final weights and the plan after the first step); tests/test_lightning_ddp.py
reads them.
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import rcpu_lightning.lightning.callback as callback_module  # noqa: E402
from rcpu_lightning.lightning import PruningPlanMixin, RCPUPruningCallback, TensorRows  # noqa: E402
from rcpu_lightning.pruning import PruningConfig  # noqa: E402

SCHEDULE = {0: 0.2, 1: 0.6}  # 6 heads / 48 channels -> 4 / 39 before training, 2 / 20 from epoch 1
CONFIG = PruningConfig(ratio=0.2, head_rounding="nearest")


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model


def rows(n: int, seed: int) -> torch.Tensor:
    starts = torch.randint(0, 64, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (starts + torch.arange(16)) % 64


def calibration_batches() -> list:
    return list(rows(16, seed=1).split(4))  # 4 batches: 2 per rank (batch i goes to rank i % 2)


class LazyLM(PruningPlanMixin):
    def __init__(self):
        super().__init__()
        self.net = None
        self.configure_model_calls = 0
        self.heads_at_optimizers = None

    def configure_model(self):
        self.configure_model_calls += 1
        if self.net is None:
            self.net = tiny_llama()

    def training_step(self, batch, batch_idx):
        return self.net(input_ids=batch, labels=batch, use_cache=False).loss

    def configure_optimizers(self):
        attn = self.net.model.layers[0].self_attn
        self.heads_at_optimizers = attn.q_proj.out_features // attn.head_dim
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Probe(L.Callback):
    """After the pruning callback: does DDP wrap exactly the module's (pruned) parameters, and the optimizer too?"""

    def __init__(self):
        self.seen = {}
        self.first_plan = None

    def _check(self, key, trainer, pl_module):
        wrapper = trainer.strategy.model
        ids = {id(p) for p in pl_module.parameters()}
        self.seen[key] = {
            "ddp": isinstance(wrapper, torch.nn.parallel.DistributedDataParallel) and wrapper.module is pl_module,
            "ddp_params": {id(p) for p in wrapper.parameters()} == ids,
            "optimizer_params": {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]} == ids,
            "heads": [layer.self_attn.q_proj.out_features // 8 for layer in pl_module.net.model.layers],
        }

    def on_fit_start(self, trainer, pl_module):
        self._check("fit_start", trainer, pl_module)
        self.first_plan = pl_module.pruning_plan

    def on_train_epoch_start(self, trainer, pl_module):
        self._check(f"epoch{trainer.current_epoch}", trainer, pl_module)


def main(out: Path, strategy: str = "ddp", devices: int = 2) -> None:
    calls = {"prune": 0}
    real_prune = callback_module.prune_model

    def counting_prune(*args, **kwargs):
        calls["prune"] += 1
        return real_prune(*args, **kwargs)

    callback_module.prune_model = counting_prune
    probe = Probe()
    pruning = RCPUPruningCallback(CONFIG, schedule=SCHEDULE, calibration_dataloader=calibration_batches, progress=False)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[pruning, probe])
    module = LazyLM()
    trainer.fit(module, train_dataloaders=DataLoader(TensorRows(rows(32, seed=0)), batch_size=4))
    rank = trainer.global_rank
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world_size": trainer.world_size, "configure_model_calls": module.configure_model_calls,
        "prune_calls": calls["prune"], "heads_at_optimizers": module.heads_at_optimizers, "probe": probe.seen,
        "steps": [s["epoch"] for s in pruning.steps], "global_step": trainer.global_step,
    }))
    torch.save({"state": module.state_dict(), "first_plan": probe.first_plan}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(sys.argv[2:3] or []), *[int(a) for a in sys.argv[3:4]])
