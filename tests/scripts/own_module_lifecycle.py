"""A user's own LightningModule (not CausalLMModule) through the whole life of a pruned model:
prune inside ``fit`` -> fine-tune -> stop -> resume from the checkpoint (no re-pruning) -> fine-tune more
-> export a Hugging Face folder. tests/test_lightning_fit.py runs it on a tiny Llama.

    python tests/scripts/own_module_lifecycle.py OUT_DIR
"""

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from rcpu_lightning.lightning import RCPUPruningCallback
from rcpu_lightning.pruning import PruningConfig, load_pruned


class MyLM(L.LightningModule):
    """The user's module: a Llama and a loss; it knows nothing of pruning."""

    def __init__(self, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        self.net = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96,
                                                num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                                                max_position_embeddings=64))

    def training_step(self, batch, batch_idx):
        return self.net(input_ids=batch, labels=batch, use_cache=False).loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def windows(n: int, seed: int) -> torch.Tensor:
    """Learnable rows of 16 tokens: each counts up from a random start (mod 64)."""
    starts = torch.randint(0, 64, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (starts + torch.arange(16)) % 64


def trainer(out: Path, epochs: int, **callback_args) -> L.Trainer:
    pruning = RCPUPruningCallback(PruningConfig(ratio=0.34, head_rounding="nearest"), progress=False,
                                  calibration_dataloader=lambda: list(windows(16, seed=1).split(4)), **callback_args)
    checkpoints = ModelCheckpoint(dirpath=out / "ckpt", save_last=True, save_top_k=0)
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=out, callbacks=[pruning, checkpoints])


def run(out: Path) -> dict:
    out = Path(out)
    loader = DataLoader(windows(64, seed=0), batch_size=8)
    first = MyLM()
    trainer(out, 1, save_dir=str(out / "pruned")).fit(first, train_dataloaders=loader)  # prunes, then epoch 0
    resumed = MyLM()  # dense again, as after a crash; the checkpoint's plan rebuilds the pruned shapes
    second = trainer(out, 2, save_dir=str(out / "pruned"), export_dir=str(out / "exported"))
    second.fit(resumed, train_dataloaders=loader, ckpt_path=out / "ckpt" / "last.ckpt")  # epoch 1, then export
    exported = load_pruned(out / "exported").eval()
    ids = windows(2, seed=5)
    with torch.no_grad():
        diff = (exported(input_ids=ids).logits - resumed.net.eval()(input_ids=ids).logits).abs().max()
    return {"params_first": sum(p.numel() for p in first.parameters()),
            "params_resumed": sum(p.numel() for p in resumed.parameters()),
            "steps": second.global_step, "prunes": len(second.callbacks[0].steps),
            "export_vs_module_max_abs_diff": float(diff), "exported": str(out / "exported")}


if __name__ == "__main__":
    print(run(Path(sys.argv[1])))
