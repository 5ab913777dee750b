"""Prune + evaluate the tiny model through ``cli.py prune`` under a given strategy (DDP test driver).

Usage: python tests/scripts/ddp_prune.py CONFIG.yaml [extra cli.py args...]

Plain ``ddp`` re-launches ``sys.argv`` for the other ranks, so this script must be runnable as is
(it is, unlike pytest). It only forwards to the CLI; the test reads the saved checkpoint and the
results JSON that rank 0 writes.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from rcpu_lightning.lightning.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["prune", "-c", sys.argv[1], *sys.argv[2:]])
