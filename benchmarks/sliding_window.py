"""unetgen's `predict_tiled` against MONAI's `sliding_window_inference` (issue 20): same network,
image and plan, 2D and 3D, valid and same padding, test-time mirroring; time, error, memory.

    python -m benchmarks.sliding_window                       # small sizes: a few minutes on 2 cores
    python -m benchmarks.sliding_window --sizes issue --cases 2d-same 2d-valid   # the issue's 2D sizes
    python -m benchmarks.sliding_window --device cuda --amp bf16   # on a GPU: autocast time and error

One process, torch threads fixed (`--threads`, default 1), every candidate built once; rounds are
interleaved (round r runs every candidate once, in a rotated order), so drift of a shared machine
hits every candidate alike; `monai-AA` is a second, identical MONAI candidate: its ratio to
`monai` is the noise of the measurement. The first round is a warm-up and not counted.

The plan is unetgen's (`plan_tiles`): tile (input) size, overlap, batch size; with valid padding
the input tile is the size's tile plus the halo on both sides. MONAI gets:
- same padding: `roi_size` = the tile, the same `overlap`, `mode="gaussian"` with the same sigma
  (1/8 of the tile), `sw_batch_size` = the batch size;
- valid padding (a window's output is smaller than the window): the image mirror-padded by the
  halo once (NumPy's reflect, unetgen's context), `roi_size` = the input tile, windows stepping
  as unetgen's output tiles (`overlap` per axis), a predictor that pads the network's output
  back to the window with zeros and a `roi_weight_map` that is 1 on the output tile and 0 on the
  halo, then the halo cropped off. This is as close to unetgen's plan as MONAI gets: the same
  windows, except the last one per axis, which MONAI shifts to end at the border, off the
  network's pooling grid, so MONAI cannot give the exact result there; its error is in the table.

Candidates: `unetgen` (`predict_tiled` as shipped: the fast path), `unetgen-eager`
(`optimize=False`), `monai` / `monai-AA` (the eager model), `monai-fast` (MONAI running unetgen's
`optimize_for_inference` copy: separates the fast path from the tiling), and with `--tta`
`unetgen-tta` (`tta="flip"`) and `monai-tta` (a predictor that averages the flipped windows'
logits; MONAI has no mirroring of its own in `sliding_window_inference`).

Columns: median (min) seconds per prediction over the timed rounds; the ratio of medians to
`monai`; the largest absolute difference of the logits to one forward pass of the whole image
(mirror-padded by the halo and up to a valid size, as unetgen's docs define the exact result;
for `-tta` rows the whole-image average over the same flips); peak memory: the rise of the
process's peak RSS (VmHWM, reset through /proc/self/clear_refs after `malloc_trim`) during one
prediction, the result included (median over rounds), not tracemalloc, which does not see
torch's allocations.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unetgen import build_unet, optimize_for_inference, plan_tiles, predict_tiled
from unetgen.analysis import shapes

SIZES = {  # case -> (config updates, image side, tile size, batch size); valid padding: tile + 2 halo
    "tiny": {  # a smoke run: seconds
        "2d": ({"depth": 3, "base_channels": 4}, 160, 96, 2),
        "3d": ({"spatial_dims": 3, "depth": 2, "base_channels": 2}, 36, 24, 2),
    },
    "small": {
        "2d": ({"depth": 4, "base_channels": 8}, 384, 128, 4),
        "3d": ({"spatial_dims": 3, "depth": 2, "base_channels": 8}, 64, 40, 2),
    },
    "issue": {  # the 2D measurement; 3D at a size one thread predicts in tens of seconds
        "2d": ({"depth": 4, "base_channels": 16}, 1024, 256, 4),
        "3d": ({"spatial_dims": 3, "depth": 3, "base_channels": 16}, 96, 64, 2),
    },
}
OVERLAP = 0.25


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def _peak_of(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """fn(), its seconds and the rise of peak RSS during it (bytes; 0 where /proc is missing)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap pages back to the system first
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
    except OSError:
        before = None
    t0 = time.perf_counter()
    out = fn()
    if out.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = 0 if before is None else (_status_kib("VmHWM") - before) * 1024
    return out, seconds, peak


def _flips(dims: int) -> list[tuple[int, ...]]:
    return [c for k in range(dims + 1) for c in itertools.combinations(range(2, 2 + dims), k)]


def _whole_image(model: torch.nn.Module, image: torch.Tensor, tta: bool) -> torch.Tensor:
    """Logits of one forward pass over the whole image, mirror-padded by the halo and up to a valid
    size (NumPy's reflect), cropped; with `tta` averaged over every flip of the padded image."""
    config, spatial = model.config, image.shape[1:]
    pads = [(0, 0)]
    for axis, size in enumerate(spatial):
        halo = shapes.axis_rule(config, axis).halo
        pads.append((halo, shapes.input_size_for_output(config, size, axis=axis) - size - halo))
    padded = torch.from_numpy(np.pad(image.cpu().numpy(), pads, mode="reflect"))[None].to(image.device)
    flips = _flips(len(spatial)) if tta else [()]
    total = None
    with torch.inference_mode():
        for dims in flips:
            y = model(padded.flip(dims)).flip(dims)
            total = y if total is None else total + y
    return (total / len(flips))[(0, slice(None), *(slice(0, s) for s in spatial))].float()


def _monai(model: torch.nn.Module, plan: Any, *, tta: bool, amp: str | None) -> Callable:
    """MONAI's `sliding_window_inference` with unetgen's plan (see the module docstring)."""
    from monai.inferers import sliding_window_inference

    dims, tile, halo = len(plan.tile_input), plan.tile_input, plan.halo
    valid = plan.padding == "valid"
    border = [h for h in reversed(halo) for _ in (0, 1)]  # F.pad lists the last axis first

    def net(w: torch.Tensor) -> torch.Tensor:
        with _autocast(amp, w.device):
            y = model(w).float()
        return F.pad(y, border) if valid else y  # back to the window's size: zeros where the halo was

    def predictor(w: torch.Tensor) -> torch.Tensor:
        if not tta:
            return net(w)
        flips = _flips(dims)
        return sum(net(w.flip(d)).flip(d) for d in flips) / len(flips)

    if valid:  # windows step as unetgen's tiles; only their centres (the output tiles) count
        steps = [plan.starts[a][1] - plan.starts[a][0] if len(plan.starts[a]) > 1 else tile[a] for a in range(dims)]
        overlap: Any = [1 - (step + 0.5) / t for step, t in zip(steps, tile, strict=True)]
        weight = torch.zeros(tile)
        weight[tuple(slice(h, t - h) for h, t in zip(halo, tile, strict=True))] = 1
        options = dict(mode="constant", roi_weight_map=weight)
    else:
        overlap, options = OVERLAP, dict(mode="gaussian", sigma_scale=0.125)
    image_pads = [(0, 0), *((h, h) for h in halo)]

    def run(image: torch.Tensor) -> torch.Tensor:
        x = image
        if valid:  # the context outside the image: mirrored, as unetgen (NumPy's reflect)
            x = torch.from_numpy(np.pad(image.cpu().numpy(), image_pads, mode="reflect")).to(image.device)
        with torch.inference_mode():
            out = sliding_window_inference(x[None], tile, plan.batch_size, predictor, overlap=overlap, **options)[0]
        if valid:
            out = out[(slice(None), *(slice(h, h + s) for h, s in zip(halo, image.shape[1:], strict=True)))]
        return out

    return run


def _autocast(amp: str | None, device: torch.device) -> Any:
    if amp is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


def _unetgen(model: torch.nn.Module, plan: Any, **options: Any) -> Callable:
    tile = plan.tile_input

    def run(image: torch.Tensor) -> torch.Tensor:
        overlap = {"overlap": OVERLAP} if plan.padding == "same" else {}
        return predict_tiled(
            model, image, tile_size=tile, batch_size=plan.batch_size, progress=False, **overlap, **options
        )

    return run


def run_case(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    dims_name, padding = name.split("-")
    updates, side, tile, batch = SIZES[args.sizes][dims_name]
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = {"norm": "batch", "padding": padding, **updates}
    model = build_unet(config, device=device)
    with torch.no_grad():  # batch-norm statistics that are not the identity, so folding changes numbers
        model.train()
        probe = [shapes.input_size_for_output(model.config, 8, axis=a) for a in range(model.config.spatial_dims)]
        for _ in range(2):
            model(torch.randn(2, 1, *probe, device=device) * 2 + 0.5)
    model.eval()
    dims = model.config.spatial_dims
    image = torch.rand(1, *(side,) * dims, device=device)
    overlap = {"overlap": OVERLAP} if padding == "same" else {}
    tile += 2 * shapes.axis_rule(model.config, 0).halo  # valid padding: output tiles of about `tile`
    plan = plan_tiles(model, image.shape[1:], tile_size=tile, batch_size=batch, **overlap)
    fast = optimize_for_inference(model)
    amp = {"amp": args.amp} if args.amp else {}
    candidates: dict[str, Callable] = {
        "monai": _monai(model, plan, tta=False, amp=args.amp),
        "monai-AA": _monai(model, plan, tta=False, amp=args.amp),
        "monai-fast": _monai(fast, plan, tta=False, amp=args.amp),
        "unetgen": _unetgen(model, plan, **amp),
        "unetgen-eager": _unetgen(model, plan, optimize=False, **amp),
    }
    if args.tta:
        candidates["monai-tta"] = _monai(model, plan, tta=True, amp=args.amp)
        candidates["unetgen-tta"] = _unetgen(model, plan, tta="flip", **amp)
    if args.candidates:
        candidates = {k: v for k, v in candidates.items() if k in args.candidates or k == "monai"}
    names = list(candidates)
    times: dict[str, list[float]] = {k: [] for k in names}
    peaks: dict[str, list[int]] = {k: [] for k in names}
    results: dict[str, torch.Tensor] = {}
    for r in range(args.rounds + 1):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            out, seconds, peak = _peak_of(lambda k=k: candidates[k](image))
            if r == 0:
                results[k] = out.float()
            else:
                times[k].append(seconds)
                peaks[k].append(peak)
            del out
        print(f"{name}: round {r} done", file=sys.stderr, flush=True)
    whole = _whole_image(model, image, tta=False)
    whole_tta = _whole_image(model, image, tta=True) if args.tta else None
    base = statistics.median(times["monai"])
    rows = []
    for k in names:
        want = whole_tta if k.endswith("-tta") else whole
        rows.append(
            dict(
                case=name,
                candidate=k,
                median=statistics.median(times[k]),
                min=min(times[k]),
                ratio=statistics.median(times[k]) / base,
                error=(results[k] - want).abs().max().item(),
                peak=statistics.median(peaks[k]),
            )
        )
    summary = f"{plan.summary()}; whole-image logits in [{whole.min().item():.3g}, {whole.max().item():.3g}]"
    print(f"{name}: {summary}", file=sys.stderr, flush=True)
    rows[0]["plan"] = summary
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | candidate | s median (min) | x monai | max abs diff to whole image | peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | `{r['candidate']}` | {r['median']:.3g} ({r['min']:.3g}) | {r['ratio']:.2f} "
            f"| {r['error']:.2g} | {r['peak'] / 2**20:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sliding_window", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", choices=tuple(SIZES), default="small", help="tiny (smoke), small (default), issue")
    parser.add_argument(
        "--cases", nargs="+", default=["2d-same", "2d-valid", "3d-same", "3d-valid"], help="e.g. 2d-same 3d-valid"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="leave out the mirroring candidates")
    parser.add_argument("--candidates", nargs="+", default=None, help="only these (monai is always run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="autocast (CUDA) for unetgen and monai")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for case in args.cases:
        rows += run_case(case, args)
    command = shlex.join(["python", "-m", "benchmarks.sliding_window", *(argv if argv is not None else sys.argv[1:])])
    print(f"`{command}`\n")
    import monai

    print(
        f"torch {torch.__version__}, MONAI {monai.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, {args.threads} thread(s), device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
        + f"; {args.rounds} timed rounds after a warm-up\n"
    )
    for r in rows:
        if "plan" in r:
            print(f"- {r['case']}: {r['plan']}")
    print()
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
