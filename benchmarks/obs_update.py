"""The greedy OBS step of ``selection: compensated_error`` and ``allocation: compensated_error``
(``error_selection._remove``) against its previous form, which wrote ``H⁻¹ -= H⁻¹[:, K] X`` and so built
a [d, d] temporary every step. Same process, the two alternating, median of ``--repeats`` runs of
``--steps`` steps on a random SPD ``H⁻¹``::

    .venv/bin/python benchmarks/obs_update.py                 # LLaMA-7B down_proj: d 11008, 43 columns a step
    .venv/bin/python benchmarks/obs_update.py --columns 9     # the selection's steps at 20 %

Prints the median seconds per step of each, their ratio, and the largest difference of the results.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rcpu_lightning.pruning.error_selection import _remove


def previous_remove(w: torch.Tensor, hinv: torch.Tensor, cols: torch.Tensor) -> None:
    """The update as it was before the in-place form (kept here as the baseline only)."""
    x = torch.linalg.solve(hinv[cols][:, cols], hinv[cols, :])
    w -= w[:, cols] @ x
    hinv -= hinv[:, cols] @ x
    w[:, cols] = 0
    hinv[cols, :] = 0
    hinv[:, cols] = 0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=11008, help="d_in (H⁻¹ is d_in × d_in)")
    p.add_argument("--out-dim", type=int, default=4096)
    p.add_argument("--columns", type=int, default=43, help="columns removed per step")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    m = torch.randn(a.dim, a.dim, dtype=torch.float64, generator=g) / a.dim**0.5
    hinv0 = m @ m.T + torch.eye(a.dim, dtype=torch.float64)  # [d, d] SPD
    w0 = torch.randn(a.out_dim, a.dim, dtype=torch.float64, generator=g)  # [d_out, d]
    impls = {"previous": previous_remove, "in_place": _remove}
    seconds, results = {k: [] for k in impls}, {}
    for rep in range(a.repeats):
        for name in (list(impls) if rep % 2 == 0 else list(reversed(impls))):
            w, hinv = w0.clone(), hinv0.clone()
            t0 = time.perf_counter()
            for s in range(a.steps):
                impls[name](w, hinv, torch.arange(s * a.columns, (s + 1) * a.columns))
            seconds[name].append((time.perf_counter() - t0) / a.steps)
            results[name] = (w, hinv)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    diff = max(float((x - y).abs().max()) for x, y in zip(results["previous"], results["in_place"]))
    print(f"d {a.dim}, {a.columns} columns a step, {a.threads} threads: previous {med['previous']:.3f} s/step, "
          f"in place {med['in_place']:.3f} s/step, ratio {med['previous'] / med['in_place']:.2f}; "
          f"max abs difference {diff:.1e}")


if __name__ == "__main__":
    main()
