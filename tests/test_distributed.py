"""Distributed training: DDP on 2 CPU processes (gloo) matches one process on the concatenated
batch; every parameter receives a gradient (no `find_unused_parameters`); SyncBatchNorm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import config_dicts
from ddp_worker import loss_fn, train, worker
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from unetgen import UNetConfig, build_unet, load_unet, save_unet
from unetgen.export import example_input

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

DDP_CONFIGS = {
    # no batch statistics, so DDP must reproduce the single-process gradients exactly
    "group": UNetConfig(
        depth=2,
        base_channels=2,
        norm={"type": "group", "num_groups": 2},
        block="residual",
        deep_supervision=(1,),
        checkpointing=True,
        dropout={"rate": 0},
    ),
    # batch norm only has to train (its statistics are per process)
    "batch": UNetConfig(depth=2, base_channels=2, norm="batch", merge="attention", deep_supervision=(1,)),
}


def test_ddp_matches_single_process(tmp_path: Path) -> None:
    world = 2
    texts = {name: cfg.model_dump_json() for name, cfg in DDP_CONFIGS.items()}
    mp.spawn(worker, args=(world, f"file://{tmp_path / 'store'}", texts, str(tmp_path)), nprocs=world, join=True)
    ranks = {name: [load_file(tmp_path / f"{name}.rank{r}.safetensors") for r in range(world)] for name in texts}

    reference = train(build_unet(DDP_CONFIGS["group"], seed=0), rank=0, world=1)
    for rank, got in enumerate(ranks["group"]):
        assert got.keys() == reference.keys()
        for key, want in reference.items():
            torch.testing.assert_close(got[key], want, rtol=1e-5, atol=1e-6, msg=f"rank {rank}: {key}")

    first, second = ranks["batch"]
    assert first.keys() == second.keys()
    for key in first:
        assert torch.isfinite(first[key]).all(), key
        if key.startswith("final."):  # DDP keeps the replicas identical
            torch.testing.assert_close(second[key], first[key], rtol=0, atol=0, msg=key)


@st.composite
def training_configs(draw: st.DrawFn) -> UNetConfig:
    data = draw(config_dicts(dims=(1, 2), max_depth=3))  # 3D adds cost, not code paths
    data["merge"] = draw(st.sampled_from([data["merge"], "attention"]))
    levels = list(range(1, data["depth"]))
    data["deep_supervision"] = draw(st.lists(st.sampled_from(levels), unique=True)) if levels else []
    data["checkpointing"] = draw(st.booleans())
    data["dropout"] = {"rate": draw(st.sampled_from([0.0, 0.2])), "placement": "all"}
    return UNetConfig.model_validate(data)


@given(training_configs())
def test_every_parameter_gets_a_gradient(config: UNetConfig) -> None:
    """What DDP with `find_unused_parameters=False` needs: in training mode, a loss over all
    outputs (main and deep-supervision heads) reaches every parameter."""
    model = build_unet(config, seed=0).train()
    loss_fn(model(example_input(model, batch=2))).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"unused parameters: {missing}"


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_sync_batchnorm_conversion(dims: int, tmp_path: Path) -> None:
    config = UNetConfig(spatial_dims=dims, depth=2, base_channels=2, norm="batch", merge="attention")
    model = build_unet(config, seed=0).eval()
    before = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(build_unet(config, seed=0)).eval()
    assert before > 0
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == before
    assert not any(type(m).__name__.startswith("BatchNorm") for m in synced.modules())
    assert {k: v.shape for k, v in synced.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    x = example_input(model)
    with torch.no_grad():  # eval mode uses the running statistics, which CPU SyncBatchNorm supports
        torch.testing.assert_close(synced(x), model(x), rtol=0, atol=0)
    loaded = load_unet(save_unet(synced, tmp_path / "synced.safetensors"))  # checkpoints stay plain BatchNorm
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch runs SyncBatchNorm training only on GPU")
def test_sync_batchnorm_training_step_on_cuda(tmp_path: Path) -> None:
    import torch.distributed as dist

    config = UNetConfig(depth=2, base_channels=4, norm="batch", deep_supervision=(1,))
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(build_unet(config, seed=0, device="cuda"))
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            loss = loss_fn(ddp(example_input(model, batch=2)))
            loss.backward()
            opt.step()
        assert torch.isfinite(loss)
        assert all(p.grad is not None for p in model.parameters())
    finally:
        dist.destroy_process_group()
