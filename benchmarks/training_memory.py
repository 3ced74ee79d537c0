"""Check `unetgen.memory.estimate_training_memory` against the measured peak of real training steps.

    python -m benchmarks.training_memory                 # every case below, CPU, fresh process each
    python -m benchmarks.training_memory --cases 2d 3d   # some of them
    python -m benchmarks.training_memory --device cuda   # torch.cuda.max_memory_allocated instead of RSS

Each case runs in a fresh process: build the model, the batch and an Adam optimizer, note the
resident memory (CPU) or the allocated memory (CUDA), reset the peak (Linux: /proc/self/clear_refs),
run `--steps` training steps (zero_grad(set_to_none), forward, cross-entropy on every head,
backward, Adam step), then read the peak (VmHWM). Measured = peak - memory before the first step:
what the step needs beyond the parameters and the batch, which is what the estimate counts.
Reported: estimate / measured per case (the goal: within 0.75 .. 1.25).

CPU: glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB),
after which tensors of up to that size come from the heap and their memory stays resident after
they are freed: the peak RSS then exceeds the peak of live tensors by up to ~2x, depending on
the order of allocations, not on what the step needs. The workers therefore run with a fixed
threshold (MALLOC_MMAP_THRESHOLD_=65536: every block above 64 KiB is mapped and returned on
free), so that RSS follows the live tensors; `--glibc-default` measures without it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from typing import Any

CASES: dict[str, tuple[dict[str, Any], tuple[int, ...], int]] = {
    # name: (config, spatial input, batch)
    "2d": ({"base_channels": 16}, (572, 572), 1),
    "2d-ckpt": ({"base_channels": 16, "checkpointing": True}, (572, 572), 1),
    "2d-batchnorm": ({"base_channels": 16, "norm": "batch"}, (572, 572), 2),
    "2d-batchnorm-ckpt": ({"base_channels": 16, "norm": "batch", "checkpointing": True}, (572, 572), 2),
    "2d-same-instance": ({"base_channels": 16, "padding": "same", "norm": "instance"}, (384, 384), 2),
    "2d-same-instance-ckpt": (
        {"base_channels": 16, "padding": "same", "norm": "instance", "checkpointing": True},
        (384, 384),
        2,
    ),
    "3d": ({"spatial_dims": 3, "depth": 3, "base_channels": 8}, (116, 116, 116), 1),
    "3d-ckpt": ({"spatial_dims": 3, "depth": 3, "base_channels": 8, "checkpointing": True}, (116, 116, 116), 1),
    "3d-same-instance": (
        {"spatial_dims": 3, "depth": 3, "base_channels": 8, "padding": "same", "norm": "instance"},
        (96, 96, 96),
        1,
    ),
    "3d-deep-supervision": (
        {
            "spatial_dims": 3,
            "depth": 3,
            "base_channels": 8,
            "padding": "same",
            "norm": "batch",
            "deep_supervision": [1, 2],
        },
        (96, 96, 96),
        2,
    ),
}


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def worker(name: str, steps: int, device: str) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from unetgen import build_unet
    from unetgen.memory import estimate_training_memory
    from unetgen.training import deep_supervision_targets

    config, shape, batch = CASES[name]
    torch.manual_seed(0)
    model = build_unet(config, device=device)
    cfg = model.config
    x = torch.randn(batch, cfg.in_channels, *shape, device=device)
    target = torch.randint(0, cfg.out_channels, (batch, *shape), device=device)
    targets = deep_supervision_targets(target, cfg, shape)
    targets = [t.contiguous() for t in targets]
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM, the peak resident size
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        outs = out if isinstance(out, list) else [out]
        loss = sum(F.cross_entropy(o, t) for o, t in zip(outs, targets, strict=True))
        loss.backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status("VmHWM")
    est = estimate_training_memory(cfg, shape, batch, optimizer="adam")
    return {
        "case": name,
        "input": "x".join(map(str, shape)),
        "batch": batch,
        "measured": peak - before,
        "estimate": est.total,
        "activations": est.activations,
        "parameters": est.parameters,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=2, help="training steps per process (the peak is over all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--glibc-default", action="store_true", help="keep glibc's dynamic mmap threshold")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.device)))
        return 0
    import torch

    env = dict(os.environ)
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    malloc = "glibc default" if args.glibc_default else "MALLOC_MMAP_THRESHOLD_=65536"
    print(f"# estimate_training_memory vs measured peak ({args.device}, {args.steps} steps, Adam, {malloc})")
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.processor()}"
    )
    print()
    print("| case | input | batch | parameters MiB | estimate MiB | measured MiB | estimate / measured |")
    print("|---|---|---|---:|---:|---:|---:|")
    ratios = []
    for name in args.cases:
        cmd = [sys.executable, "-m", "benchmarks.training_memory", "--worker", name]
        cmd += ["--steps", str(args.steps), "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            print(f"| {name} | failed: {proc.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        ratio = r["estimate"] / r["measured"]
        ratios.append(ratio)
        mib = 2**20
        print(
            f"| {name} | {r['input']} | {r['batch']} | {r['parameters'] / mib:.1f} | {r['estimate'] / mib:.0f} | "
            f"{r['measured'] / mib:.0f} | {ratio:.2f} |",
            flush=True,
        )
    if ratios:
        print(f"\nratio range {min(ratios):.2f} .. {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
