"""cli.py with a pruning that pauses after each decoder layer (for the SIGTERM test): prints
``PRUNED LAYER i`` on stdout, then sleeps, so that a signal arrives in the middle of the pruning."""

import sys
import time

import rcpu_lightning.lightning.callback as callback
from rcpu_lightning.lightning.cli import main

_prune_model = callback.prune_model


def slow_prune_model(*args, progress=None, **kwargs):
    def report(event):
        print(f"PRUNED LAYER {event.index}", flush=True)
        time.sleep(60)  # the test's SIGTERM interrupts this
        if progress is not None:
            progress(event)

    return _prune_model(*args, progress=report, **kwargs)


callback.prune_model = slow_prune_model

if __name__ == "__main__":
    main(sys.argv[1:])
