"""The overhead per step of `unetgen train`'s loop over a hand-written loop on the same pieces.

    python -m benchmarks.train_overhead [--rounds 5] [--steps 40] [--cases example tiny]

Both train the same model on the shipped nuclei image with the same pieces: `PatchSampler` with
the paper's `elastic_deform`, `weighted_cross_entropy` with `border_weight_map`, Adam; the hand
loop is `examples/train_nuclei.py`'s (sampler.batch, forward, loss, zero_grad, backward, step,
loss.item()). The engine runs `unetgen.train.train` with no validation and one checkpoint at the
end. The time per step is the difference between a run of 2N steps and one of N steps, divided by
N, so that the setup (reading the data, the weight map, the model, the final checkpoint) cancels
out; rounds alternate the two loops (A, B, A, B, ...) so that the machine's drift hits both alike,
and the median of the rounds is reported, in CPU seconds of the process (one torch thread; the
machine is shared, so CPU time is steadier than wall time) and in wall seconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetgen import build_unet
from unetgen.train import train
from unetgen.training import (
    PatchSampler,
    border_weight_map,
    elastic_deform,
    separate_touching,
    weighted_cross_entropy,
)

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "example (depth 3, base 8, 188 -> 100, batch 2)": ({"depth": 3, "base_channels": 8, "dropout": 0}, 188, 2),
    "tiny (depth 2, base 4, 64 -> 24, batch 2)": ({"depth": 2, "base_channels": 4, "dropout": 0}, 64, 2),
}


def _data() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(ROOT / "examples" / "data" / "nuclei_dsb2018.npz")
    raw, labels = data["image"].astype(np.float32), data["labels"].astype(np.int64)
    return (raw - raw.mean()) / (raw.std() + 1e-6), labels


def hand(config: dict[str, Any], patch: int, batch: int, steps: int) -> None:
    image, labels = _data()
    separated = separate_touching(labels)
    weights = border_weight_map(separated, w0=10.0, sigma=5.0)
    model = build_unet(config, seed=0).train()
    sampler = PatchSampler(
        model.config, image, separated > 0, weights, patch_size=patch, seed=0, augment=elastic_deform
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        x, y, w = sampler.batch(batch)
        loss = weighted_cross_entropy(model(x), y, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()


def engine(config: dict[str, Any], patch: int, batch: int, steps: int, folder: Path, run: int) -> None:
    image, labels = _data()
    np.save(folder / "image.npy", image)
    np.save(folder / "labels.npy", labels)
    doc = {
        "data": {"images": str(folder / "image.npy"), "masks": str(folder / "labels.npy"), "validation": "none"},
        "model": config,
        "preprocessing": {"normalize": []},  # normalised above, as the hand loop's input
        "patches": {"size": patch, "batch": batch},
        "augmentation": {"flips": False, "rot90": False, "intensity": None, "elastic": {"sigma": 10, "points": 3}},
        "targets": {"type": "instances", "weight_map": {"w0": 10, "sigma": 5}},
        "steps": steps,
        "save_every": steps,
    }
    train(doc, folder / f"run{run}.safetensors", progress=False, plot=False)


def timed(fn: Any, *args: Any) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn(*args)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="N: runs of N and 2N steps")
    parser.add_argument("--cases", nargs="+", choices=("example", "tiny"), default=["example", "tiny"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.steps
    print("| case | hand loop ms/step (CPU) | unetgen train ms/step (CPU) | ratio (CPU) | ratio (wall) |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        folder, run = Path(tmp), 0
        for name, (config, patch, batch) in CASES.items():
            if name.split()[0] not in args.cases:
                continue
            hand(config, patch, batch, 2)  # warm-up: imports, first allocations
            engine(config, patch, batch, 2, folder, run := run + 1)
            per: dict[str, list[tuple[float, float]]] = {"hand": [], "engine": []}
            for _ in range(args.rounds):
                for kind in ("hand", "engine"):
                    if kind == "hand":
                        short, long = timed(hand, config, patch, batch, n), timed(hand, config, patch, batch, 2 * n)
                    else:
                        short = timed(engine, config, patch, batch, n, folder, run := run + 1)
                        long = timed(engine, config, patch, batch, 2 * n, folder, run := run + 1)
                    per[kind].append(((long[0] - short[0]) / n, (long[1] - short[1]) / n))
            h_cpu = statistics.median(c for c, _ in per["hand"])
            e_cpu = statistics.median(c for c, _ in per["engine"])
            h_wall = statistics.median(w for _, w in per["hand"])
            e_wall = statistics.median(w for _, w in per["engine"])
            print(f"| {name} | {1000 * h_cpu:.1f} | {1000 * e_cpu:.1f} | {e_cpu / h_cpu:.3f} | {e_wall / h_wall:.3f} |")


if __name__ == "__main__":
    main()
