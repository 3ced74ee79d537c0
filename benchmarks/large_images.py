"""Benchmark out-of-core and distributed prediction (docs/large-images.md). Not a test: numbers.

    python -m benchmarks.large_images rss                      # peak RSS vs image size (1024..8192)
    python -m benchmarks.large_images rss --sizes 8192 --out-channels 16 --limit-gib 2   # 4 GiB output, 2 GiB cap
    python -m benchmarks.large_images dask                     # paper network: in memory vs Dask 1, 2 workers
    python -m benchmarks.large_images kill-worker              # a check: SIGKILL a Dask worker mid-run

`rss`: for each size a fresh process predicts a size x size image into a zarr output on disk
with a small valid-padding network (out-of-core: the image is computed tile window by tile
window from a formula, as an array-like, so that no input file is needed), and reports the
peak RSS (getrusage) and its growth over the RSS just before the prediction (after a warm-up
prediction that loads the kernels and starts zarr's threads). `--in-memory` adds the same
prediction with `predict_tiled` on a tensor, for comparison. `--limit-gib` caps the process's
address space (RLIMIT_AS) before anything is imported.

`dask`: the paper's network (random init) on a size x size zarr image: `predict_tiled` in memory
(1 and 2 torch threads), then `predict_distributed` on a LocalCluster of 1 and 2 worker
processes with one thread each, each timed after a warm-up run on the same cluster (worker
imports and the model load are not timed). Reports output Mpx/s (wall clock) and the CPU
seconds of all processes (client and workers): on a shared machine the wall clock measures the
share of the cores we got, the CPU seconds the work done.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Pattern:
    """A (1, size, size) float32 image computed window by window: an array-like that is never
    whole in memory (and needs no disk)."""

    def __init__(self, size: int) -> None:
        self.shape, self.dtype = (1, size, size), np.dtype(np.float32)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        _, rows, cols = index
        r, c = np.ogrid[rows, cols]
        return (np.sin(r * 0.05) * np.cos(c * 0.07) + 0.01 * ((r * 7 + c * 13) % 17)).astype(np.float32)[None]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_case(case: dict[str, Any]) -> dict[str, Any]:
    """One size in this process."""
    if case["limit_gib"]:
        cap = int(case["limit_gib"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import torch

    from unetgen import UNetConfig, build_unet, plan_tiles, predict_tiled
    from unetgen.arrays import create_output

    torch.manual_seed(0)
    torch.set_num_threads(case["threads"])
    config = UNetConfig(
        spatial_dims=2, depth=2, base_channels=4, out_channels=case["out_channels"], dropout={"rate": 0}
    )
    model = build_unet(config).eval()
    size, tile = case["size"], case["tile"]
    options = dict(tile_size=tile, progress=False)
    tmp = Path(case["dir"])
    if case["in_memory"]:
        image = torch.empty(1, size, size)
        for r in range(0, size, 256):  # in strips: no image-sized temporaries before the measurement
            image[:, r : r + 256] = torch.from_numpy(Pattern(size)[(slice(None), slice(r, r + 256), slice(0, size))])
        predict_tiled(model, image[:, :300, :300], **options)  # warm-up
        before = _rss()
        start = time.perf_counter()
        result = predict_tiled(model, image, **options)
        seconds = time.perf_counter() - start
        out_bytes = result.numel() * result.element_size()
    else:
        warm = create_output(tmp / "warm.zarr", model, Pattern(300), tile_size=tile, overwrite=True)
        predict_tiled(model, Pattern(300), out=warm, **options)  # kernels, zarr's threads
        out = create_output(tmp / "out.zarr", model, Pattern(size), tile_size=tile, overwrite=True)
        before = _rss()
        start = time.perf_counter()
        predict_tiled(model, Pattern(size), out=out, **options)
        seconds = time.perf_counter() - start
        out_bytes = out.nbytes
    plan = plan_tiles(model, (size, size), tile_size=tile)
    return dict(
        size=size,
        mode="in memory" if case["in_memory"] else "zarr",
        tiles=plan.num_tiles,
        out_mib=out_bytes / 2**20,
        seconds=seconds,
        mpx_s=size * size / seconds / 1e6,
        before_mib=before / 2**20,
        peak_mib=_peak() / 2**20,
        growth_mib=(_peak() - before) / 2**20,
    )


def run_rss(args: argparse.Namespace) -> None:
    rows = []
    modes = [False, True] if args.in_memory else [False]
    for size in args.sizes:
        for in_memory in modes:
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                case = dict(
                    size=size, tile=args.tile, out_channels=args.out_channels, threads=args.threads,
                    in_memory=in_memory, limit_gib=args.limit_gib, dir=tmp,
                )  # fmt: skip
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.large_images", "_rss_case", json.dumps(case)],
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    print(f"size {size} ({'in memory' if in_memory else 'zarr'}) failed:\n{done.stderr[-1500:]}")
                    continue
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.out_channels} output channels of float32 logits, tile {args.tile}, {args.threads} thread(s)")
    if args.limit_gib:
        print(f"address space capped at {args.limit_gib} GiB (RLIMIT_AS)")
    print("| image | mode | tiles | output MiB | s | Mpx/s | RSS before MiB | peak RSS MiB | growth MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']}x{r['size']} | {r['mode']} | {r['tiles']} | {r['out_mib']:,.0f} | {r['seconds']:.1f} | "
            f"{r['mpx_s']:.2f} | {r['before_mib']:,.0f} | {r['peak_mib']:,.0f} | {r['growth_mib']:,.0f} |"
        )


def run_dask(args: argparse.Namespace) -> None:
    import torch
    import zarr
    from distributed import Client, LocalCluster

    from unetgen import UNetConfig, build_unet, plan_tiles, predict_tiled, save_unet
    from unetgen.distributed import predict_distributed

    torch.manual_seed(0)
    model = build_unet(UNetConfig()).eval()  # the paper's network
    size, tile = args.size, args.tile
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        checkpoint = save_unet(model, Path(tmp) / "paper.safetensors")
        image = zarr.create_array(Path(tmp) / "image.zarr", shape=(1, size, size), chunks=(1, 512, 512), dtype="f4")
        image[...] = Pattern(size)[(slice(None), slice(0, size), slice(0, size))]
        small = zarr.create_array(Path(tmp) / "small.zarr", shape=(1, 200, 200), chunks=(1, 200, 200), dtype="f4")
        small[...] = image[:, :200, :200]
        plan = plan_tiles(model, (size, size), tile_size=tile)
        print(f"paper network, {size}x{size}: {plan.summary()}", flush=True)
        tensor = torch.from_numpy(image[...])
        for threads in (1, 2):
            torch.set_num_threads(threads)
            predict_tiled(model, tensor[:, :200, :200], tile_size=tile, progress=False)
            start, cpu = time.perf_counter(), time.process_time()
            want = predict_tiled(model, tensor, tile_size=tile, progress=False)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            rows.append((f"predict_tiled in memory, {threads} torch thread(s)", seconds, cpu))
            print(rows[-1], flush=True)
        for workers in (1, 2):
            with (
                LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster,
                Client(cluster) as client,
            ):
                options = dict(client=client, tile_size=tile, progress=False)
                predict_distributed(checkpoint, small, Path(tmp) / f"warm{workers}.zarr", **options)
                out = Path(tmp) / f"out{workers}.zarr"
                start, cpu = time.perf_counter(), time.process_time() + sum(client.run(_cpu_seconds).values())
                result = predict_distributed(checkpoint, image, out, **options)
                seconds = time.perf_counter() - start
                cpu = time.process_time() + sum(client.run(_cpu_seconds).values()) - cpu
                rows.append((f"predict_distributed, {workers} worker process(es) x 1 thread", seconds, cpu))
                print(rows[-1], flush=True)
                diff = float(np.abs(result[...] - want.numpy()).max())
                print(f"  max |dask - in memory| = {diff:.2e}", flush=True)
    print(f"\npaper network (31M parameters), {size}x{size} image, tile {tile}, {os.cpu_count()} CPU cores")
    print("| run | wall s | Mpx/s | CPU s (all processes) |\n|---|---|---|---|")
    for name, seconds, cpu in rows:
        print(f"| {name} | {seconds:.1f} | {size * size / seconds / 1e6:.3f} | {cpu:.1f} |")


def run_kill_worker(args: argparse.Namespace) -> None:
    """Kill one of 2 worker processes (SIGKILL) after the first task: the run must finish, equal."""
    import signal

    import torch
    from distributed import Client, LocalCluster

    from unetgen import UNetConfig, build_unet, predict_tiled, save_unet
    from unetgen.distributed import predict_distributed

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_unet(UNetConfig(spatial_dims=2, depth=2, base_channels=4, out_channels=2)).eval()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        checkpoint = save_unet(model, Path(tmp) / "model.safetensors")
        image = np.random.default_rng(0).standard_normal((1, 600, 600)).astype(np.float32)
        np.save(Path(tmp) / "image.npy", image)
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as c:
            victim = min(c.run(os.getpid).values())
            killed: list[int] = []

            def kill(blocks: Any) -> None:
                if not killed:
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)

            options = dict(client=c, tile_size=96, callback=kill, progress=False)
            out = predict_distributed(checkpoint, Path(tmp) / "image.npy", Path(tmp) / "out.zarr", **options)
            record = out.attrs["unetgen_progress"]
        want = predict_tiled(model, torch.from_numpy(image), tile_size=96, progress=False)
        diff = float(np.abs(out[...] - want.numpy()).max())
    print(f"killed worker {victim}; {record['completed']}/{record['blocks']} blocks; max |dask - in memory| = {diff}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_rss_case":
        print(json.dumps(rss_case(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("rss", help="peak RSS against image size")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--out-channels", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--in-memory", action="store_true", help="also predict_tiled on a tensor, for comparison")
    p.add_argument("--limit-gib", type=float, default=None, help="RLIMIT_AS of each process, in GiB")
    p.add_argument("--dir", default=None, help="where the outputs are written (default: the temp dir)")
    p = sub.add_parser("dask", help="throughput: in memory vs Dask 1 and 2 workers, paper network")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--tile", type=int, default=572)
    p.add_argument("--dir", default=None)
    p = sub.add_parser("kill-worker", help="a check: SIGKILL one of 2 Dask workers mid-run; the run completes")
    p.add_argument("--dir", default=None)
    args = parser.parse_args()
    {"rss": run_rss, "dask": run_dask, "kill-worker": run_kill_worker}[args.what](args)


if __name__ == "__main__":
    main()
