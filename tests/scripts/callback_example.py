"""README section "Use the callback in your own training" (tests/test_lightning_fit.py runs it on a tiny model)."""

import lightning as L

from rcpu_lightning.data import CalibrationConfig
from rcpu_lightning.lightning import CausalLMModule, LogProgress, RCPUDataModule, RCPUPruningCallback
from rcpu_lightning.pruning import PruningConfig


def run(model="smollm2-135m", data_dir=None, save_dir="outputs/pruned", export_dir="outputs/pruned-finetuned",
        max_steps=100, calibration=CalibrationConfig(nsamples=128, seqlen=128), ppl_max_windows=200,
        **data_options):
    module = CausalLMModule(model, lr=1e-5)  # hub id, local folder, .gguf file or a transformers model
    data = RCPUDataModule(data_dir=data_dir, calibration=calibration,  # WikiText-2 windows
                          ppl_max_windows=ppl_max_windows,  # test: the first 200 of 2,382 windows; None: all
                          **data_options)
    pruning = RCPUPruningCallback(PruningConfig(method="rcpu", ratio=0.2, head_rounding="nearest"),
                                  save_dir=save_dir,      # the model right after pruning, before fine-tuning
                                  export_dir=export_dir)  # the model at the end of fit: pruned and fine-tuned
    trainer = L.Trainer(max_steps=max_steps, callbacks=[pruning, LogProgress()],  # progress: log lines, loss
                        logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=data)   # prunes before the optimizers exist, fine-tunes, exports
    trainer.test(module, datamodule=data)  # WikiText-2 test perplexity of the pruned, fine-tuned model
    return module, module.eval_results     # eval_results: {"ppl": ..., "tokens": ...}
