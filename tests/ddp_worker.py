"""The per-process body of the DDP test (its own module so that spawned processes import little)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel

from unetgen import UNetConfig, build_unet
from unetgen.export import example_input

STEPS = 2
GLOBAL_BATCH = 4
LR = 0.1


def batches(model: torch.nn.Module) -> list[torch.Tensor]:
    """The global batch of each step, the same in every process."""
    gen = torch.Generator().manual_seed(1234)
    shape = example_input(model, batch=GLOBAL_BATCH).shape
    return [torch.randn(shape, generator=gen) for _ in range(STEPS)]


def loss_fn(outputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Mean over the local batch of every output (main and auxiliary): with equal local batches,
    DDP's gradient average equals the gradient of this loss over the concatenated batch."""
    outs = outputs if isinstance(outputs, list) else [outputs]
    return sum(o.square().mean() for o in outs)


def train(model: torch.nn.Module, rank: int, world: int) -> dict[str, torch.Tensor]:
    """`STEPS` SGD steps on this rank's slice of each global batch; returns every step's grads and
    the final parameters, keyed `step{i}.grad.<name>` and `final.<name>`."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    record = {}
    for step, x in enumerate(batches(getattr(model, "module", model))):
        opt.zero_grad()
        loss_fn(model(x.chunk(world)[rank])).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, f"no gradient for {name}"
            record[f"step{step}.grad.{name.removeprefix('module.')}"] = p.grad.detach().clone()
        opt.step()
    for name, p in model.named_parameters():
        record[f"final.{name.removeprefix('module.')}"] = p.detach().clone()
    return record


def worker(rank: int, world: int, init_method: str, configs: dict[str, str], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        for name, text in configs.items():
            model = build_unet(UNetConfig.model_validate_json(text), seed=0)
            ddp = DistributedDataParallel(model, find_unused_parameters=False)
            save_file(train(ddp, rank, world), str(Path(out) / f"{name}.rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()
