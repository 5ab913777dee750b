"""A user's own LightningModule, plugged into cli.py through ``model.class_path`` (tests/test_cli.py).

It knows nothing of pruning: the pruning callback finds the Llama inside it, the DataModule reads its
``tokenizer``; ``predict_step`` only runs the LM forward (the callback records what enters decoder layer 0).
"""

import lightning as L
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class PlainLM(L.LightningModule):
    def __init__(self, path: str, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = AutoModelForCausalLM.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = self.net(input_ids=batch, labels=batch, use_cache=False).loss
        self.losses.append(float(loss.detach()))
        return loss

    def validation_step(self, batch, batch_idx):
        return self.net(input_ids=batch, labels=batch, use_cache=False).loss

    test_step = validation_step

    def predict_step(self, batch, batch_idx):
        self.net(input_ids=batch, use_cache=False)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class LoggingLM(PlainLM):
    """PlainLM whose ``test_step`` logs its own metric (no ``eval_results``: nothing of this package's)."""

    def test_step(self, batch, batch_idx):
        loss = self.net(input_ids=batch, labels=batch, use_cache=False).loss
        self.log("test/my_loss", loss)
        self.log("test/tokens_seen", float(batch.numel()), reduce_fx="sum")
        return loss
