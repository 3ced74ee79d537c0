"""Benchmark tiled prediction (`unetgen.predict_tiled`): throughput, halo overhead and peak memory.

    python -m benchmarks.tiling                                  # 2048x2048, paper network, CPU (slow)
    python -m benchmarks.tiling --size 512 --config '{"base_channels": 8}' --tiles auto 284 572
    python -m benchmarks.tiling --device cuda --batch-size 4     # tiles on a GPU, image in CPU memory

For each plan (the automatic one and fixed tile sizes) a fresh process builds the network (random
paper init, eval mode) and a random image, then times `--repeats` full predictions. Reported:
output pixels per second (best run), the plan's input pixels computed per output pixel, its
memory estimate, and the peak memory of the first (cold) run above what the process held just
before it (CPU: peak RSS from getrusage minus the RSS before; CUDA: max_memory_allocated minus
memory_allocated before). The result tensor (out_channels x image) is included in the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from typing import Any

import torch

from unetgen import build_unet, plan_tiles, predict_tiled


def _rss_bytes() -> int:
    """Current resident memory of this process (Linux), or 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """One plan in this process: warm up, time, measure memory."""
    torch.manual_seed(0)
    if case["threads"]:
        torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    model = build_unet(case["config"], device=device).eval()
    dims = model.config.spatial_dims
    image = torch.rand(model.config.in_channels, *(case["size"],) * dims)
    tile = case["tile"]
    options = dict(tile_size=tile, batch_size=case["batch_size"])
    plan = plan_tiles(model.config, image.shape[1:], **options)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times = []
    for _ in range(case["repeats"]):  # the first run is cold: it also gives the peak memory
        t0 = time.perf_counter()
        predict_tiled(model, image, **options, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if len(times) == 1:
            peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()
    return {
        "tile": "auto" if tile is None else tile,
        "tiles": plan.num_tiles,
        "tile_input": plan.tile_input,
        "tile_output": plan.tile_output,
        "ratio": plan.computed_ratio,
        "estimate": plan.memory_bytes,
        "peak": peak - base,
        "seconds": min(times),
        "pixels_per_s": image[0].numel() / min(times),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    def mib(n: int) -> str:
        return f"{n / 2**20:,.0f}"

    lines = [
        "| tile size | tiles | input -> output tile | computed / output px | est. MiB | peak MiB | s | Mpx/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tiles = f"{'x'.join(map(str, r['tile_input']))} -> {'x'.join(map(str, r['tile_output']))}"
        lines.append(
            f"| {r['tile']} | {r['tiles']} | {tiles} | {r['ratio']:.2f} | {mib(r['estimate'])} | {mib(r['peak'])} "
            f"| {r['seconds']:.3g} | {r['pixels_per_s'] / 1e6:.3g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tiling", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels (default 2048)")
    parser.add_argument("--config", default="{}", help="JSON updates to the paper config, e.g. '{\"depth\": 3}'")
    parser.add_argument("--tiles", nargs="+", default=["auto", "572", "1212"], help="'auto' and/or tile sizes")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="timed predictions per plan (best is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    rows = []
    for tile in args.tiles:
        case = {
            "config": json.loads(args.config),
            "size": args.size,
            "tile": None if tile == "auto" else int(tile),
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "threads": args.threads,
            "device": args.device,
        }
        cmd = [sys.executable, "-m", "benchmarks.tiling", "--case", json.dumps(case)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.splitlines()[-1]))
        print(f"tile {tile}: {rows[-1]['seconds']:.3g} s", file=sys.stderr, flush=True)
    command = shlex.join(["python", "-m", "benchmarks.tiling", *(argv if argv is not None else sys.argv[1:])])
    print(f"`{command}`\n")
    print(f"{args.size}x{args.size} image, config updates {args.config}, device {args.device}, batch {args.batch_size}")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads or torch.get_num_threads()} threads\n"
    )
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
