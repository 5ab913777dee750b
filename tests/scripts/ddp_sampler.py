"""Calibrate and prune the tiny model on 15 samples, under DDP with a user's padding ``DistributedSampler``.

Usage: python tests/scripts/ddp_sampler.py MODE OUT_DIR [devices]

MODE ``predict``: ``trainer.predict`` on a DataModule whose ``predict_dataloader`` carries torch's
``DistributedSampler`` (shuffled, ``drop_last=False``: 15 samples on 2 ranks become 16, one repeated).
MODE ``fit``: the callback's ``calibration_dataloader`` returns such a loader; ``fit`` prunes before
training and trains no batch. With ``devices`` 1 the loaders are plain (the single-process reference).
Plain ``ddp`` re-launches ``sys.argv`` for the other ranks, so this script must be runnable as is.
Every rank writes ``OUT_DIR/rank<r>.pt``: its pruned weights and the calibration sample count.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from conftest import make_tiny_llama  # noqa: E402
from rcpu_lightning.lightning import CausalLMModule, RCPUPruningCallback, TensorRows  # noqa: E402
from rcpu_lightning.pruning import PruningConfig  # noqa: E402

SAMPLES = 15  # odd: torch's DistributedSampler pads it to 16 on 2 ranks


def rows() -> torch.Tensor:
    return torch.randint(0, 64, (SAMPLES, 16), generator=torch.Generator().manual_seed(3))  # [15, 16]


def loader(distributed: bool) -> DataLoader:
    data = TensorRows(rows())
    sampler = DistributedSampler(data, shuffle=True, seed=0) if distributed else None  # pads: drop_last=False
    return DataLoader(data, batch_size=3, sampler=sampler)


class Calibration(L.LightningDataModule):
    def __init__(self, distributed: bool) -> None:
        super().__init__()
        self.distributed = distributed

    def predict_dataloader(self) -> DataLoader:
        return loader(self.distributed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorRows(rows()), batch_size=3)


def run(mode: str, out: Path, devices: int) -> None:
    distributed = devices > 1
    module = CausalLMModule(make_tiny_llama(num_heads=6, num_kv_heads=2))
    config = PruningConfig(ratio=0.34, head_rounding="nearest")
    calibration = (lambda: loader(distributed)) if mode == "fit" else None
    callback = RCPUPruningCallback(config, calibration_dataloader=calibration, progress=False)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if distributed else "auto",
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=out, callbacks=[callback],
                        max_epochs=1, limit_train_batches=0, limit_val_batches=0)
    if mode == "predict":
        trainer.predict(module, datamodule=Calibration(distributed), return_predictions=False)
    else:
        trainer.fit(module, datamodule=Calibration(distributed))
    state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    torch.save({"state": state, "nsamples": callback.steps[-1]["calibration"]["nsamples"]},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    run(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 2)
