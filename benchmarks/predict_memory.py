"""The printed memory estimate of `unetgen predict` against the measured peak RSS of whole runs.
Not a test: numbers (docs/large-images.md, "Memory estimate against measured peak").

    python -m benchmarks.predict_memory                       # the standard cases, one at a time
    python -m benchmarks.predict_memory --cases 2d-ooc-labels --allocators fixed glibc arena2 trim
    python -m benchmarks.predict_memory --cases issue-8192    # the 8192^2 labels run of issue 20

Each case writes its input (a .npy for the in-memory branch, a chunked .zarr for the out-of-core
branch) and a small checkpoint, then runs the real CLI (`unetgen.cli.main`, `--no-progress`) in a
fresh child process with one torch thread (OMP_NUM_THREADS=1) and reads the child's peak RSS from
the kernel (`os.wait4`'s rusage: ru_maxrss, the whole process from interpreter start to exit).
The estimate is the CLI's own line: "memory: ~E at the peak: B this process holds now + ~P for
the prediction" (B measured when the line is printed, P estimated). Reported: E, the peak,
E / peak (the goal: between 1 and 1.25), B and P, and the wall seconds of the run.

`--allocators`: `fixed` is the CLI as shipped (glibc's mmap threshold fixed at 1 MiB by
`unetgen.predict.allocator.fix_mmap_threshold`); `glibc` leaves glibc's dynamic threshold (the
child replaces the fix by a no-op); `arena2` and `trim` are `glibc` with MALLOC_ARENA_MAX=2 or
MALLOC_TRIM_THRESHOLD_=1048576 in the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NET2D = {"spatial_dims": 2, "depth": 2, "base_channels": 4, "out_channels": 2, "dropout": {"rate": 0}}
NET3D = {"spatial_dims": 3, "depth": 2, "base_channels": 4, "out_channels": 2, "dropout": {"rate": 0}}
NET2D_8 = {"spatial_dims": 2, "depth": 3, "base_channels": 8, "out_channels": 3, "dropout": {"rate": 0}}
SAME2D = {**NET2D_8, "padding": "same", "norm": {"type": "batch"}}

CASES: dict[str, dict[str, Any]] = {
    "2d-mem-labels": dict(net=NET2D, size=3072, branch="memory", output_type="labels"),
    "2d-mem-probs": dict(net=NET2D, size=3072, branch="memory", output_type="probabilities"),
    "2d-ooc-labels": dict(net=NET2D, size=3072, branch="ooc", output_type="labels"),
    "2d-ooc-probs": dict(net=NET2D, size=3072, branch="ooc", output_type="probabilities"),
    "3d-mem-labels": dict(net=NET3D, size=160, branch="memory", output_type="labels"),
    "3d-mem-probs": dict(net=NET3D, size=160, branch="memory", output_type="probabilities"),
    "3d-ooc-labels": dict(net=NET3D, size=160, branch="ooc", output_type="labels"),
    "3d-ooc-probs": dict(net=NET3D, size=160, branch="ooc", output_type="probabilities"),
    "2d-same-ooc-probs": dict(net=SAME2D, size=2048, branch="ooc", output_type="probabilities"),
    "2d-tiles-mem-logits": dict(net=NET2D_8, size=2048, branch="memory", output_type="logits", tile=572),
    "2d-mem-probs-tta": dict(net=NET2D_8, size=2048, branch="memory", output_type="probabilities", tta=True),
    "3d-ooc-labels-tta": dict(net=NET3D, size=128, branch="ooc", output_type="labels", tta=True),
    "issue-8192": dict(net=NET2D_8, size=8192, branch="ooc", output_type="labels"),
}
DEFAULT = [c for c in CASES if c != "issue-8192"]
ALLOCATORS = {
    "fixed": {},
    "glibc": {},
    "arena2": {"MALLOC_ARENA_MAX": "2"},
    "trim": {"MALLOC_TRIM_THRESHOLD_": "1048576"},
}
_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _bytes(text: str) -> int:
    value, unit = text.split()
    return int(float(value) * _UNITS[unit])


def estimate_line(stderr: str) -> tuple[int, int, int]:
    """(estimated peak, baseline, prediction) from the CLI's "memory: ~E at the peak: B ... + ~P" line."""
    m = re.search(r"memory: ~([\d.]+ \w+) at the peak: ([\d.]+ \w+) this process holds now \+ ~([\d.]+ \w+)", stderr)
    if m is None:
        raise ValueError(f"no memory line in:\n{stderr[-2000:]}")
    return _bytes(m.group(1)), _bytes(m.group(2)), _bytes(m.group(3))


def _write_inputs(case: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """The checkpoint and the input image of `case` (random, written in slabs)."""
    import torch
    import zarr

    from unetgen import UNetConfig, build_unet, save_unet

    torch.manual_seed(0)
    model = build_unet(UNetConfig(**case["net"])).eval()
    ckpt = save_unet(model, folder / "model.safetensors")
    dims, size = case["net"]["spatial_dims"], case["size"]
    shape = (1,) + (size,) * dims
    rng = np.random.default_rng(0)
    if case["branch"] == "memory":
        path = folder / "image.npy"
        image = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    else:
        path = folder / "image.zarr"
        chunk = 256 if dims == 2 else 64
        image = zarr.create_array(path, shape=shape, chunks=(1,) + (chunk,) * dims, dtype="f4")
    step = 512 if dims == 2 else 16
    for r in range(0, size, step):
        part = image[:, r : r + step]
        image[:, r : r + step] = rng.standard_normal(part.shape, dtype=np.float32)
    if isinstance(image, np.memmap):
        image.flush()
    del image
    return Path(ckpt), path


def child(spec: dict[str, Any]) -> None:
    """Run the CLI in this process (the child), optionally without the allocator fix."""
    if spec["allocator"] != "fixed":
        import unetgen.predict.allocator as allocator

        allocator.fix_mmap_threshold = lambda threshold=0: False
    from unetgen.cli import main

    sys.exit(main(spec["argv"]))


def run_case(name: str, allocator: str, folder: Path, dry_run: bool = False) -> dict[str, Any]:
    case = CASES[name]
    ckpt, image = folder / "model.safetensors", next(folder.glob("image.*"))
    out = folder / ("out.npy" if case["branch"] == "memory" else "out.zarr")
    argv = ["predict", str(ckpt), "--input", str(image), "--output", str(out), "--no-progress"]
    argv += ["--output-type", case["output_type"]]
    if case.get("tta"):
        argv += ["--tta", "flip"]
    if case.get("tile"):
        argv += ["--tile-size", str(case["tile"])]
    if case["branch"] == "ooc":
        argv += ["--restart"]
    if dry_run:
        argv += ["--dry-run"]
    env = dict(os.environ, OMP_NUM_THREADS="1", **ALLOCATORS[allocator])
    spec = json.dumps({"argv": argv, "allocator": allocator})
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.predict_memory", "_child", spec],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        err.seek(0)
        stderr = err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{name} ({allocator}) failed:\n{stderr[-3000:]}")
    estimate, baseline, prediction = estimate_line(stderr)
    peak = usage.ru_maxrss * 1024
    plan = next((line for line in stderr.splitlines() if line.startswith("plan: ")), "")
    return dict(
        case=name,
        allocator=allocator,
        dry_run=dry_run,
        estimate_mib=estimate / 2**20,
        baseline_mib=baseline / 2**20,
        prediction_mib=prediction / 2**20,
        peak_mib=peak / 2**20,
        ratio=estimate / peak,
        seconds=seconds,
        plan=plan.removeprefix("plan: "),
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_child":
        child(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=DEFAULT)
    parser.add_argument("--allocators", nargs="+", choices=list(ALLOCATORS), default=["fixed"])
    parser.add_argument("--dry-run", action="store_true", help="also run each case with --dry-run first")
    parser.add_argument("--dir", default=None, help="where inputs and outputs are written (default: the temp dir)")
    args = parser.parse_args()
    rows = []
    for name in args.cases:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            _write_inputs(CASES[name], Path(tmp))
            if args.dry_run:
                rows.append(run_case(name, "fixed", Path(tmp), dry_run=True))
                print(json.dumps(rows[-1]), flush=True)
            for allocator in args.allocators:
                rows.append(run_case(name, allocator, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    print("\none torch thread; estimate = baseline measured by the CLI + the prediction's estimate")
    print("| case | allocator | plan | estimate MiB | peak RSS MiB | estimate / peak | baseline MiB | s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        kind = "dry run" if r["dry_run"] else r["allocator"]
        print(
            f"| {r['case']} | {kind} | {r['plan']} | {r['estimate_mib']:,.0f} | "
            f"{r['peak_mib']:,.0f} | {r['ratio']:.2f} | {r['baseline_mib']:,.0f} | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
