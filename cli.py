#!/usr/bin/env python
"""rcpu-lightning command line: LightningCLI with fit / validate / test / predict and ``prune``.

    python cli.py prune -c configs/smollm2-rcpu.yaml      # calibrate, prune, save, evaluate
    python cli.py test  -c configs/smollm2-rcpu.yaml --model.model outputs/smollm2/rcpu-rotation-20
    python cli.py prune --help

See configs/README.md and rcpu_lightning/lightning/cli.py.
"""

from rcpu_lightning.lightning.cli import main

if __name__ == "__main__":
    main()
