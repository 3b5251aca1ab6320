"""A fixed CPU workload to time beside a benchmark, so that times from sessions on machines of
different speed can be compared as ratios.

Usage:
    uv run --frozen python benchmarks/reference_workload.py            # prints {"seconds": ...} as its last line
    uv run --frozen python benchmarks/reference_workload.py --steps 5  # shorter, for a smoke test

It has no targets of its own (``TARGETS`` is empty): its figure is a yardstick for the others.

The workload is the kind of work that dominates `pmg pipeline` on CPU (the zoo's UNet and VAE):
training steps of a small convolutional network on one fixed batch, from a fixed seed, with
torch's default thread count (what the pipeline uses). It runs in its own process so that a caller
that imports nothing heavy (benchmarks/pipeline.py) stays light; that caller times it before and
after the workload it measures, since this machine's speed drifts within a session too.

The LAST line printed is one JSON object: ``seconds`` (wall time of the steps, the warm-up step
excluded), ``steps`` and ``torch_threads``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from pmg.benchmark_targets import Targets, parse_args_with_check, print_result

TARGETS: Targets = {}


def reference_seconds(steps: int) -> float:
    """Wall seconds of ``steps`` AdamW steps of a 3-layer conv net on a (16, 4, 32, 32) batch."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
                          nn.Conv2d(64, 4, 3, padding=1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randn(16, 4, 32, 32, generator=generator)

    def step() -> None:
        loss = (model(batch) - batch).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # the first step allocates; it is not what we time
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    args = parse_args_with_check(parser, TARGETS)
    seconds = reference_seconds(args.steps)
    print_result({"seconds": round(seconds, 3), "steps": args.steps, "torch_threads": torch.get_num_threads()}, TARGETS,
                 args.check)


if __name__ == "__main__":
    main()
