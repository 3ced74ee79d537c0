"""Benchmark unetgen against a hand-written reference U-Net and optional peers.

    python -m benchmarks.run                      # every workload and candidate (slow: run on a quiet machine)
    python -m benchmarks.run --quick              # tiny smoke run
    python -m benchmarks.run --workloads paper --candidates unetgen monai --write-readme

Each candidate runs in its own long-lived worker process; rounds are interleaved (round r: A, B, C,
...), so slow drift of the machine hits every candidate alike. Times are per step; ratios are
medians over the reference's median; ``ref-AA`` is a second copy of the reference, so its ratio is
the noise. Peak memory is measured in a fresh process per candidate. Every process uses the same
number of torch threads: torch's default (all cores) unless ``--threads`` says otherwise.

The peers are optional; install them without their dependencies (dynamic_network_architectures
asks for timm, which would pull in torchvision and another torch):
``pip install --no-deps monai==1.6.1 dynamic_network_architectures==0.4.4``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from benchmarks.candidates import CANDIDATES, Candidate
from benchmarks.workloads import WORKLOADS, Workload

README = Path(__file__).with_name("README.md")
PHASES = ("train", "eval")
# Child processes fork from a server that has only imported torch, the worker code and the
# candidates' libraries (see `main`): a fresh, clean process each, without paying the imports.
CTX = mp.get_context("forkserver")


@dataclass
class Result:
    name: str
    cand: Candidate
    info: dict[str, Any] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    mem_bytes: int | None = None
    mem_method: str = ""
    skipped: str = ""


def start(target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    child.close()
    return proc, parent


def receive(conn: Connection) -> Any:
    """The child's answer, or an error status where the child died (crash, out of memory)."""
    try:
        return conn.recv()
    except EOFError:
        return ("error", "the worker process died")


def mm_seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    torch.mm(a, b)
    return time.perf_counter() - start


def time_workload(w: Workload, results: list[Result], args: argparse.Namespace) -> float:
    """Fill in `results`; return the median FLOP/s of an n x n fp32 torch.mm timed once per round."""
    from benchmarks import worker

    n = args.mm_size
    a, b = torch.randn(n, n), torch.randn(n, n)
    mm_times = [mm_seconds(a, b)]
    replicas = range(args.replicas)  # several processes per candidate: process-to-process spread pools in
    procs = {
        (r.name, k): start(worker.serve, r.cand, w, args.threads) for k in replicas for r in results if not r.skipped
    }
    live = []
    for r in results:
        if r.skipped:
            continue
        for k in replicas:
            proc, conn = procs[r.name, k]
            status, payload = receive(conn)
            if status == "ok":
                r.info = payload
            else:
                r.skipped = payload
                proc.join()
        if not r.skipped:
            live.append(r)

    def ask(r: Result, k: int, phase: str, steps: int) -> float:
        conn = procs[r.name, k][1]
        conn.send((phase, steps))
        status, payload = receive(conn)
        if status != "ok":
            r.skipped = payload
        return payload if status == "ok" else math.nan

    inner: dict[tuple[str, str], int] = {}
    for phase in PHASES:
        timed = [r for r in live if phase in r.cand.measure]
        for r in timed:  # repeat tiny steps so one round takes at least min_round_s
            warm = min(ask(r, k, phase, 1) for k in replicas for _ in range(max(args.warmup, 1)))
            inner[r.name, phase] = 1 if r.skipped else max(1, math.ceil(args.min_round_s / warm))
        for _ in range(args.rounds):
            mm_times.append(mm_seconds(a, b))
            for k in replicas:
                for r in timed:
                    if not r.skipped:
                        r.times[phase].append(ask(r, k, phase, inner[r.name, phase]))
    live = [r for r in live if not r.skipped]
    for proc, conn in procs.values():
        if proc.is_alive():
            conn.send(None)
            proc.join()

    # Peak memory: a fresh process per candidate. Probes run concurrently: each measures only itself.
    probes = {
        r.name: start(worker.probe_memory, r.cand, w, r.info["out_shape"], args.threads)
        for r in live
        if "memory" in r.cand.measure
    }
    for r in live:
        if r.name in probes:
            proc, conn = probes[r.name]
            answer = receive(conn)
            r.mem_bytes, r.mem_method = (None, answer[1]) if answer[0] == "error" else answer
            proc.join()
    return 2 * n**3 / statistics.median(mm_times[1:])


def fmt(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def model_table(w: Workload, results: list[Result], mm: float) -> str:
    ref = results[0]
    med = {(r.name, p): statistics.median(r.times[p]) if r.times[p] else math.nan for r in results for p in PHASES}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    rows = []
    for r in results:
        if r.skipped:
            continue
        flops = r.info["fwd_flops"]
        row = [f"`{r.name}`", "x".join(map(str, r.info["out_shape"][2:])), f"{r.info['params'] / 1e6:.2f} M"]
        row.append(fmt(flops / 1e9))
        for phase, factor in (("train", 3), ("eval", 1)):
            m = med[r.name, phase]
            best = min(r.times[phase]) if r.times[phase] else math.nan
            row.append(f"{fmt(m * 1e3)} ({fmt(best * 1e3)})")
            row.append(fmt(ratio(m, med[ref.name, phase])))
            row.append(fmt(100 * factor * flops / m / mm))
        mib = r.mem_bytes / 2**20 if r.mem_bytes is not None else None
        row += [fmt(mib), fmt(ratio(r.mem_bytes, ref.mem_bytes))]
        rows.append(row)
    headers = ["candidate", "output", "params", "fwd GFLOP"]
    headers += ["train ms median (min)", "train x ref", "train % mm"]
    headers += ["eval ms median (min)", "eval x ref", "eval % mm", "train peak MiB", "peak x ref"]
    lines = [f"### `{w.name}`: {w.description}", "", f"Input {'x'.join(map(str, w.input_shape))}, base {w.base}.", ""]
    lines += [md_table(headers, rows), ""]
    for r in results:
        if r.skipped:
            lines.append(f"- `{r.name}` skipped: {r.skipped}")
        elif r.cand.note:
            lines.append(f"- `{r.name}`: {r.cand.note}")
        if r.mem_bytes is None and r.mem_method and "memory" in r.cand.measure and not r.skipped:
            lines.append(f"- `{r.name}` memory probe failed: {r.mem_method}")
    methods = sorted({r.mem_method for r in results if r.mem_bytes is not None})
    threads = sorted({r.info["threads"] for r in results if r.info})
    memory = ", ".join(methods) or "-"
    lines.append(f"\nmm: {mm / 1e9:.1f} GFLOP/s; torch threads per worker: {threads}; peak memory via {memory}.\n")
    return "\n".join(lines)


def shapes_table(w: Workload, rounds: int) -> str:
    head = f"### `{w.name}`: {w.description}\n"
    try:
        import unetgen

        config_cls = getattr(unetgen, "UNetConfig", None)
        cfg = config_cls.model_validate(w.unetgen_config()) if config_cls else w.unetgen_config()
        calls: dict[str, Callable[[], object]] = {
            "valid_input_sizes(cfg, 10**6)": lambda: unetgen.valid_input_sizes(cfg, 10**6),
            "output_shape(cfg, (572, 572))": lambda: unetgen.output_shape(cfg, (572, 572)),
        }
        timers = {name: timeit.Timer(fn) for name, fn in calls.items()}
        numbers = {name: t.autorange()[0] for name, t in timers.items()}
    except Exception as exc:
        return f"{head}\n- skipped: {type(exc).__name__}: {exc}\n"
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, t in timers.items():
            times[name].append(t.timeit(numbers[name]) / numbers[name])
    rows = [
        [f"`{name}`", fmt(statistics.median(ts) * 1e6), fmt(min(ts) * 1e6), str(numbers[name])]
        for name, ts in times.items()
    ]
    return f"{head}\n{md_table(['call', 'µs median', 'µs min', 'calls per round'], rows)}\n"


def machine_info() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} CPUs; torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"Python {platform.python_version()}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    p.add_argument(
        "--replicas", type=int, default=1, help="worker processes per candidate, interleaved and pooled (default 1)"
    )
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 9; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; 1 with --quick)")
    p.add_argument("--min-round-s", type=float, help="repeat steps to fill a round (default 0.05 s; 0.01 with --quick)")
    p.add_argument("--threads", type=int, help="torch threads in every process (default: torch's, all cores)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: small inputs, base 4, 2 rounds, 1 thread")
    p.add_argument(
        "--write-readme", nargs="?", const=README, type=Path, metavar="PATH", help=f"write results (to {README})"
    )
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 9)
    args.min_round_s = args.min_round_s if args.min_round_s is not None else (0.01 if args.quick else 0.05)
    args.mm_size = 512 if args.quick else 2048
    # One thread keeps the smoke run quick on a shared machine, where a busy core stalls every
    # parallel region; real runs keep torch's default (all cores) unless told otherwise.
    args.threads = args.threads or (1 if args.quick else None)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # for the torch.mm yardstick
    command = shlex.join(["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)])
    names = ["reference"] + [n for n in args.candidates if n != "reference"]
    unusable, preload = {}, {"benchmarks.worker"}
    for name in names:
        for module in CANDIDATES[name].requires:
            try:
                importlib.import_module(module)
                preload.add(module)
            except Exception as exc:
                unusable[name] = f"cannot import {module}: {type(exc).__name__}: {exc}"
    CTX.set_forkserver_preload(sorted(preload))
    sections = []
    for name in args.workloads:
        w = WORKLOADS[name].quick() if args.quick else WORKLOADS[name]
        if w.kind == "shapes":
            section = shapes_table(w, args.rounds)
        else:
            results = [Result(n, CANDIDATES[n], skipped=unusable.get(n, "")) for n in names]
            mm = time_workload(w, results, args)
            section = model_table(w, results, mm)
        print(section, flush=True)
        sections.append(section)
    if args.write_readme:
        write_readme(args.write_readme, command, args, sections)
        print(f"wrote {args.write_readme}")


def write_readme(path: Path, command: str, args: argparse.Namespace, sections: list[str]) -> None:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    method = (__doc__ or "").split("\n\n", 2)[2].strip()
    quick = "\n**`--quick` smoke run: tiny inputs and base 4; the numbers mean nothing.**\n" if args.quick else ""
    text = f"""# Benchmarks

Generated by `benchmarks/run.py`; do not edit by hand.
{quick}
- command: `{command}`
- date: {date}
- machine: {machine_info()}
- rounds: {args.rounds} timed x {args.replicas} worker processes per candidate (pooled), {args.warmup} warm-up;
  torch threads per process: {torch.get_num_threads()}

## Method

{method}

Columns: a training step is zero_grad(set_to_none) + forward + cross-entropy + backward; eval is a
forward in eval mode under `torch.inference_mode()`. `ms median (min)` are per step over rounds;
`x ref` is the ratio of medians to `reference` (above 1 is slower or larger). `% mm` is achieved
FLOP/s (forward FLOPs from `FlopCounterMode`, training counted as 3x forward) as a percentage of
the median FLOP/s of a {args.mm_size}x{args.mm_size} fp32 `torch.mm`, timed once per round in
the same rounds (useful FLOPs: recomputation by checkpointing is not counted). `train peak MiB` is
the peak RSS of the first training step above the RSS after building the model and the batch, in a
fresh process; it includes that step's one-off costs (lazy imports, kernel code), a floor of about
30 MiB for small models.

## Results

""" + "\n".join(sections)
    path.write_text(text)


if __name__ == "__main__":
    main()
