"""The memory estimate of a prediction (`estimate_tile_memory`, `estimate_memory`, the CLI's line):
what it is made of and how it moves. That it bounds the measured peak RSS of whole runs is shown
by benchmarks/predict_memory.py (docs/large-images.md), not here: RSS depends on the machine and
the load, and a timed or RSS test would flake."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unetgen import UNetConfig, build_unet, save_unet
from unetgen.analysis import costs
from unetgen.analysis.memory import estimate_tile_memory, tile_memory
from unetgen.cli import main
from unetgen.predict.allocator import fix_mmap_threshold, resident_bytes
from unetgen.predict.plan import RUNTIME_BYTES, estimate_memory, plan_tiles

TINY = UNetConfig(spatial_dims=2, depth=2, base_channels=4, out_channels=2, dropout={"rate": 0})
TINY3D = UNetConfig(spatial_dims=3, depth=1, base_channels=4, out_channels=2, dropout={"rate": 0})


def test_the_tile_estimate_grows_with_the_tile_and_the_batch() -> None:
    sizes = [68, 132, 260, 516, 1028]
    estimates = [estimate_tile_memory(TINY, (s, s)) for s in sizes]
    assert estimates == sorted(estimates) and len(set(estimates)) == len(estimates)
    for s in sizes[:3]:
        one, two, four = (estimate_tile_memory(TINY, (s, s), b) for b in (1, 2, 4))
        assert one < two < four
    parts = tile_memory(TINY, (260, 260))
    assert parts.input == 260 * 260 * 4 and parts.output == 2 * 220 * 220 * 4
    assert parts.input + parts.output < parts.peak < parts.total == estimate_tile_memory(TINY, (260, 260))
    # channels-last convs need no blocked copies; float64 doubles every tensor
    assert estimate_tile_memory(TINY, (260, 260), channels_last=True) < parts.total
    assert tile_memory(TINY, (260, 260), dtype=torch.float64).peak == 2 * parts.peak


def test_a_one_channel_3d_conv_counts_torchs_im2col_buffer() -> None:
    """torch runs a 3D conv of one input channel on a small map natively: a column of 27 taps per
    output voxel (measured: 310 MiB for 1 -> 4 channels at 140^3)."""
    parts = tile_memory(TINY3D, (60, 60, 60), threads=1)
    assert parts.peak >= 27 * 58**3 * 4  # the first conv's columns
    with pytest.raises(ValueError, match="threads"):
        tile_memory(TINY3D, (60, 60, 60), threads=0)


def test_the_run_estimate_has_its_parts() -> None:
    plan = plan_tiles(TINY, (900, 700), tile_size=132)
    base = estimate_memory(TINY, plan, allocate_result=False)
    assert base.result == 0 and base.runtime == RUNTIME_BYTES and base.weights == 0
    assert base.tiles == estimate_tile_memory(TINY, plan.tile_input, plan.batch_size, threads=torch.get_num_threads())
    assert base.total >= base.tiles + base.runtime
    # the result in memory, in the output type's dtype
    logits = estimate_memory(TINY, plan)
    labels = estimate_memory(TINY, plan, output_type="labels")
    assert logits.result == 2 * 900 * 700 * 4 and labels.result == 900 * 700
    assert logits.total >= base.total + logits.result - base.blocks and labels.total > base.total
    # input chunks decoded per tile, zarr's encoded chunks, the weights of a dry run
    assert estimate_memory(TINY, plan, allocate_result=False, read_bytes=10**9).total >= 10**9 + base.runtime
    encoded = estimate_memory(TINY, plan, allocate_result=False, encoded_output=True)
    assert encoded.blocks > base.blocks and encoded.total >= base.total
    dry = estimate_memory(TINY, plan, allocate_result=False, weights_loaded=False)
    assert dry.weights == costs.count_parameters(TINY) * 4 and dry.total == base.total + dry.weights
    # more images, larger images: more memory; a batch of tiles: more than one tile
    assert estimate_memory(TINY, plan, images=3).total > logits.total
    big = plan_tiles(TINY, (1800, 1400), tile_size=132)
    assert estimate_memory(TINY, big).total > logits.total
    batched = plan_tiles(TINY, (900, 700), tile_size=132, batch_size=4)
    assert estimate_memory(TINY, batched, allocate_result=False).total > base.total
    # larger blocks hold larger buffers
    blocks = estimate_memory(TINY, plan, allocate_result=False, output_type="labels", block_shape=400)
    assert blocks.blocks > estimate_memory(TINY, plan, allocate_result=False, output_type="labels").blocks
    for part in ("tiles", "result", "runtime"):
        assert part in logits.summary()


def test_the_cli_prints_baseline_and_estimate_for_both_branches(tmp_path, capsys) -> None:
    """`--dry-run` prints the estimated peak of the process for .npy and .zarr outputs alike:
    what it holds now plus what the prediction adds, with the parts."""
    pytest.importorskip("zarr")
    torch.manual_seed(0)
    ckpt = save_unet(build_unet(TINY).eval(), tmp_path / "model.safetensors")
    np.save(tmp_path / "image.npy", np.zeros((1, 300, 260), np.float32))
    for output in ("out.npy", "out.zarr"):
        argv = ["predict", str(ckpt), "--input", str(tmp_path / "image.npy"), "--output", str(tmp_path / output)]
        assert main([*argv, "--dry-run", "--output-type", "labels"]) == 0
        err = capsys.readouterr().err
        [line] = [x for x in err.splitlines() if x.startswith("memory: ~")]
        assert "at the peak: " in line and "this process holds now + ~" in line and "tiles " in line
        assert "(--memory-limit)" in line
        assert not (tmp_path / output).exists()
    assert 0 < resident_bytes() < 1 << 40
    assert fix_mmap_threshold() in (True, False)  # glibc: set (idempotent); elsewhere a no-op


def test_the_estimate_refuses_above_the_limit_before_allocating() -> None:
    from unetgen.predict.plan import check_memory

    plan = plan_tiles(TINY, (5000, 5000), tile_size=1028)
    need = estimate_memory(TINY, plan).total
    assert check_memory(TINY, plan, memory_limit=need) == need
    with pytest.raises(ValueError, match=r"predicting needs about .* more than memory_limit="):
        check_memory(TINY, plan, memory_limit=need - 1)
    assert need > math.prod(plan.image_shape) * 2 * 4  # at least the float32 logits it allocates
