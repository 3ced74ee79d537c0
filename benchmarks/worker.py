"""Code that runs inside the benchmark's child processes: one timing worker per candidate and one
fresh memory probe per candidate."""

from __future__ import annotations

import copy
import gc
import importlib
import resource
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch._dynamo  # see below
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.candidates import Candidate, Hook
from benchmarks.workloads import Workload

# torch._dynamo is imported up front (this module is preloaded by the harness's fork server):
# FlopCounterMode and torch.utils.checkpoint import it lazily, which would cost every fresh process
# over a second and show up in the first training step's peak memory of checkpointing candidates.


def load(ref: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def apply_hook(hook: Hook, model: nn.Module) -> nn.Module:
    ref, kwargs = (hook, {}) if isinstance(hook, str) else hook
    return load(ref)(model, **kwargs)


def build(cand: Candidate, w: Workload) -> nn.Module:
    torch.manual_seed(0)
    return load(f"{cand.module}:{cand.factory}")(w, **cand.kwargs)


def make_batch(w: Workload, out_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A random input and a random class-index target matching the model's output."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(w.input_shape, generator=gen)
    target = torch.randint(0, out_shape[1], (out_shape[0], *out_shape[2:]), generator=gen)
    return x, target


def train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), target)
    loss.backward()


def eval_step(model: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        model(x)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def serve(conn: Connection, cand: Candidate, w: Workload, threads: int | None) -> None:
    """Timing worker: build the candidate, report its facts, then time steps on request.

    Requests are ``(phase, n)``, answered with ``("ok", mean seconds of n steps)`` or
    ``("error", reason)``; ``None`` stops."""
    set_threads(threads)
    try:
        model = build(cand, w)
        x = torch.randn(w.input_shape)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out_shape = tuple(model.eval()(x).shape)
        info = {
            "params": sum(p.numel() for p in model.parameters()),
            "fwd_flops": counter.get_total_flops(),
            "out_shape": out_shape,
            "threads": torch.get_num_threads(),
        }
        x, target = make_batch(w, out_shape)
        both = "train" in cand.measure and "eval" in cand.measure
        train_model, eval_model = model, copy.deepcopy(model) if both else model
        steps: dict[str, Callable[[], None]] = {}
        if "train" in cand.measure:
            train_model = apply_hook(cand.train_hook, train_model) if cand.train_hook else train_model
            train_model.train()
            steps["train"] = lambda: train_step(train_model, x, target)
        if "eval" in cand.measure:
            eval_model.eval()
            eval_model = apply_hook(cand.eval_hook, eval_model) if cand.eval_hook else eval_model
            steps["eval"] = lambda: eval_step(eval_model, x)
    except Exception as exc:  # report any failure to build as a skip reason
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", info))
    while (request := conn.recv()) is not None:
        phase, n = request
        try:
            start = time.perf_counter()
            for _ in range(n):
                steps[phase]()
            conn.send(("ok", (time.perf_counter() - start) / n))
        except Exception as exc:
            conn.send(("error", f"{phase} step failed: {type(exc).__name__}: {exc}"))


def status_kib(field: str) -> int | None:
    """A ``VmRSS`` / ``VmHWM`` line of /proc/self/status, in KiB (None where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status_kib("VmHWM") is not None
    except OSError:
        return False


def probe_memory(
    conn: Connection, cand: Candidate, w: Workload, out_shape: tuple[int, ...], threads: int | None
) -> None:
    """Fresh process: the peak RSS of one training step above the RSS after building model and batch.

    Sends ``(bytes, method)``. Without a resettable VmHWM it falls back to ru_maxrss, which also
    covers the peak while building."""
    set_threads(threads)
    try:
        model = build(cand, w)
        if cand.train_hook:
            model = apply_hook(cand.train_hook, model)
        model.train()
        x, target = make_batch(w, out_shape)
        gc.collect()
        base = status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        resettable = reset_peak_rss()
        train_step(model, x, target)
        peak = status_kib("VmHWM") if resettable else None
        method = "VmHWM" if peak is not None else "ru_maxrss"
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        conn.send(((peak - base) * 1024, method))
    except Exception as exc:
        conn.send((None, f"{type(exc).__name__}: {exc}"))
