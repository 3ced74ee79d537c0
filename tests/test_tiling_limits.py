"""Tiling under hostile or careless input: planning is O(axes) for any image size, memory is
estimated and refused before anything is allocated, batch_size is an upper bound, the automatic
plan respects the joint minimum input (instance norm), every option is type-checked, the image is
checked after the cast to the model's dtype, and `output_type` gives logits, probabilities or labels."""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest
import torch
from conftest import config_dicts
from hypothesis import given
from hypothesis import strategies as st

from unetgen import UNetConfig, build_unet, load_config, plan_tiles, predict_tiled
from unetgen.analysis import shapes
from unetgen.predict.plan import DEFAULT_MEMORY_BUDGET, EvenStarts, check_memory, estimate_memory
from unetgen.predict.sources import check_image

TINY = UNetConfig(depth=2, base_channels=2, channel_multiplier=1, in_channels=2, init="torch")
SAME = TINY.model_copy(update={"padding": "same"})


pytestmark = pytest.mark.usefixtures("one_thread")


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("config", "shape", "options"),
    [
        (UNetConfig(), (10**9, 10**9), {}),
        (UNetConfig(), (10**9, 10**9), {"tile_size": 572}),
        (UNetConfig(), (10**9, 7), {"memory_budget": 1}),
        (SAME.model_copy(update={"spatial_dims": 3}), (10**9, 10**9, 10**9), {}),
        (SAME.model_copy(update={"spatial_dims": 3}), (10**9, 10**9, 10**9), {"tile_size": 64, "overlap": 0.5}),
        (UNetConfig(spatial_dims=1, depth=1, base_channels=4), (10**12,), {"batch_size": 10**6}),
    ],
)
def test_planning_is_O_axes_whatever_the_image_size(config: UNetConfig, shape: tuple, options: dict) -> None:
    plans = []
    peak = _peak_bytes(lambda: plans.append(plan_tiles(config, shape, **options)))
    assert peak < 1 << 20, f"planning {shape} allocated {peak} bytes"
    plan = plans[0]
    assert shapes.is_valid_input_shape(config, plan.tile_input)
    for axis, (size, starts) in enumerate(zip(shape, plan.starts, strict=True)):
        t_in, t_out = plan.tile_input[axis], plan.tile_output[axis]
        assert starts[0] == 0 and starts[-1] < size <= starts[-1] + t_out  # covered, lazily
        if len(starts) == 1:
            continue
        if config.padding == "valid":
            assert (starts[1] - starts[0]) % shapes.axis_rule(config, axis).period == 0
        else:
            assert starts[-1] == size - t_in
        middle = len(starts) // 2
        assert 0 < starts[middle + 1] - starts[middle] <= t_out
    assert plan.num_tiles == math.prod(len(s) for s in plan.starts)


@given(st.integers(1, 10**30), st.integers(1, 200))
def test_even_starts_are_exact_and_evenly_spread(last: int, count: int) -> None:
    starts = EvenStarts(last, count)
    want = [0] if count == 1 else [(2 * k * last + count - 1) // (2 * (count - 1)) for k in range(count)]
    assert list(starts) == want and len(starts) == count
    assert starts[-1] == (last if count > 1 else 0) and list(starts[::-1]) == want[::-1]
    assert all(abs((b - a) * (count - 1) - last) <= count for a, b in itertools.pairwise(want))
    with pytest.raises(IndexError):
        starts[count]


def test_memory_is_estimated_and_refused_before_anything_is_allocated(monkeypatch) -> None:
    # every map of this network needs inputs of 2.4e9 pixels per axis: a 50x50 image needs one such tile
    huge = UNetConfig(depth=8, strides=8, kernel_size=15, convs_per_block=8, base_channels=1, channel_multiplier=1)
    assert min(shapes.min_input_shape(huge)) > 10**9
    model = build_unet(huge.model_copy(update={"init": "torch"}))
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    real_empty, real_zeros = torch.empty, torch.zeros

    def bounded(real):
        def allocate(*size, **kwargs):
            dims = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
            assert math.prod(dims) < 10**7, f"allocated {dims} before refusing"
            return real(*size, **kwargs)

        return allocate

    monkeypatch.setattr(torch, "empty", bounded(real_empty))
    monkeypatch.setattr(torch, "zeros", bounded(real_zeros))
    with pytest.raises(ValueError, match=r"predicting needs about .* GiB .* more than memory_limit=17179869184 bytes"):
        predict_tiled(model, torch.zeros(1, 50, 50), progress=False)
    assert not calls
    monkeypatch.undo()

    # a small network: the limit is a parameter; the result the prediction allocates counts too
    tiny = build_unet(TINY)
    image = torch.zeros(2, 40, 40)
    with pytest.raises(ValueError, match=r"more than memory_limit=1000 bytes"):
        predict_tiled(tiny, image, memory_limit=1000, progress=False)
    assert predict_tiled(tiny, image, memory_limit=10**9, progress=False).shape == (2, 40, 40)
    plan = plan_tiles(TINY, (3000, 3000), tile_size=60)
    assert estimate_memory(TINY, plan, allocate_result=False).result == 0
    assert estimate_memory(TINY, plan).result == 2 * 3000 * 3000 * 4  # float32 logits, 2 channels
    assert estimate_memory(TINY, plan, output_type="labels").result == 3000 * 3000  # uint8 labels
    assert check_memory(TINY, plan) == estimate_memory(TINY, plan).total
    with pytest.raises(ValueError, match=r"tiles: \d+ KiB for a batch of 1 tiles of 60x60; result: 69 MiB"):
        check_memory(TINY, plan, memory_limit=2**26)
    for bad in (True, 0, -5, 1.5, "16G"):
        with pytest.raises(ValueError, match=r"memory_limit=.* must be a positive int"):
            predict_tiled(tiny, image, memory_limit=bad, progress=False)


def test_batch_size_is_an_upper_bound_not_a_target() -> None:
    one = plan_tiles(TINY, (300, 300))
    many = plan_tiles(TINY, (300, 300), batch_size=10**9)
    assert many.tile_input == one.tile_input and many.num_tiles == one.num_tiles == 1
    assert many.memory_bytes == one.memory_bytes <= DEFAULT_MEMORY_BUDGET
    paper = plan_tiles(UNetConfig(), (2048, 2048), batch_size=10**9)
    assert paper.memory_bytes <= DEFAULT_MEMORY_BUDGET
    assert paper.num_tiles <= plan_tiles(UNetConfig(), (2048, 2048)).num_tiles
    model = build_unet(TINY).eval()
    batches = []
    model.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    image = torch.randn(3, 2, 70, 45)
    got = predict_tiled(model, image, tile_size=60, batch_size=10**9, progress=False)
    assert batches == [3 * plan_tiles(TINY, (70, 45), tile_size=60).num_tiles]  # every tile at once, no more
    torch.testing.assert_close(got, predict_tiled(model, image, tile_size=60, progress=False), rtol=0, atol=1e-5)


@given(config_dicts(dims=(1, 2, 3), max_depth=3), st.data())
def test_auto_plan_respects_the_joint_minimum_input(raw: dict, data: st.DataObject) -> None:
    """Instance norm needs more than one element in every map: the plan's tile is a valid input
    of the whole network (shapes.min_input_shape), for any image and budget."""
    config = UNetConfig(**{**raw, "norm": "instance", "stem_stride": 1})  # stem_stride > 1: no tiling
    spatial = tuple(data.draw(st.integers(1, 400)) for _ in range(config.spatial_dims))
    options = data.draw(
        st.sampled_from([{}, {"memory_budget": 1}, {"memory_budget": 2**16}, {"tile_size": 1}, {"tile_size": 9}])
    )
    plan = plan_tiles(config, spatial, **options)
    assert shapes.is_valid_input_shape(config, plan.tile_input)
    assert all(t >= m for t, m in zip(plan.tile_input, shapes.min_input_shape(config), strict=True))
    for size, starts, t_out in zip(spatial, plan.starts, plan.tile_output, strict=True):
        assert starts[0] == 0 and size <= starts[-1] + t_out


def test_the_packaged_3d_example_predicts_a_volume() -> None:
    """examples/unet3d.yaml (same padding, instance norm), narrowed to run fast, on a 40x200x200
    volume cut down to 10x40x40, with budgets that force tiles: it used to ask for (8, 8, 8)."""
    config = load_config("examples/unet3d.yaml").model_copy(update={"base_channels": 2, "init": "torch"})
    model = build_unet(config).eval()
    assert shapes.min_input_shape(config) == (16, 16, 16)
    for options in ({}, {"memory_budget": 1}, {"tile_size": 8}):
        plan = plan_tiles(config, (40, 200, 200), **options)
        assert shapes.is_valid_input_shape(config, plan.tile_input)
    out = predict_tiled(model, torch.randn(1, 10, 40, 40), memory_budget=1, progress=False)
    assert out.shape == (3, 10, 40, 40) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("config", "options", "match"),
    [
        (TINY, {"batch_size": True}, r"batch_size=True must be a positive int"),
        (TINY, {"batch_size": 2.0}, r"batch_size=2.0 must be a positive int"),
        (TINY, {"batch_size": "2"}, r"batch_size='2' must be a positive int"),
        (TINY, {"batch_size": np.bool_(True)}, r"batch_size=np.True_ must be a positive int"),
        (TINY, {"tile_size": True}, r"tile_size=True must be a positive int or 2 positive ints"),
        (TINY, {"tile_size": "60"}, r"tile_size='60' must be"),
        (TINY, {"tile_size": (True, 60)}, r"tile_size=\(True, 60\) must be"),
        (TINY, {"tile_size": 60.0}, r"tile_size=60.0 must be"),
        (TINY, {"overlap": "0.5"}, r"overlap='0.5' applies to padding='same' only"),
        (SAME, {"overlap": "0.5"}, r"overlap='0.5' must be a number in \[0, 1\)"),
        (SAME, {"overlap": True}, r"overlap=True must be a number in \[0, 1\)"),
        (SAME, {"overlap": math.nan}, r"overlap=nan must be a number in \[0, 1\)"),
        (SAME, {"overlap": 1.0}, r"overlap=1.0 must be a number in \[0, 1\)"),
        (TINY, {"memory_budget": True}, r"memory_budget=True must be a positive int"),
        (TINY, {"memory_budget": 2.5e9}, r"memory_budget=2500000000.0 must be a positive int"),
        (TINY, {"output_type": "argmax"}, r"output_type='argmax' must be 'logits', 'probabilities' or 'labels'"),
        (TINY, {"blend": ["gaussian"]}, r"blend=\['gaussian'\] must be 'gaussian' or 'constant'"),
        (TINY, {"device": "nonsense"}, r"device='nonsense'"),
    ],
)
def test_option_types_are_checked(config: UNetConfig, options: dict, match: str) -> None:
    model = build_unet(config)
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    with pytest.raises(ValueError, match=match):
        predict_tiled(model, torch.zeros(2, 30, 30), progress=False, **options)
    assert not calls


def test_numpy_and_torch_integers_are_ints_everywhere() -> None:
    plain = plan_tiles(SAME, (70, 45), tile_size=(32, 16), batch_size=2, overlap=0.25, memory_budget=None)
    for tile, batch, overlap, shape in [
        (np.array([32, 16]), np.int64(2), np.float32(0.25), np.array([70, 45])),
        ((np.int32(32), np.uint16(16)), np.uint8(2), np.float64(0.25), torch.Size([70, 45])),
        (torch.tensor([32, 16]), torch.tensor(2), 0.25, (np.int64(70), torch.tensor(45))),
    ]:
        plan = plan_tiles(SAME, shape, tile_size=tile, batch_size=batch, overlap=overlap)
        assert plan == plain
        assert all(type(v) is int for v in (*plan.image_shape, *plan.tile_input, plan.batch_size))
    auto = plan_tiles(TINY, (500, 500), memory_budget=2**22)
    assert plan_tiles(TINY, np.array([500, 500]), memory_budget=np.int64(2**22)) == auto
    with pytest.raises(ValueError, match=r"dtype=torch.int32 must be a floating-point torch.dtype"):
        plan_tiles(TINY, (50, 50), dtype=torch.int32)
    with pytest.raises(ValueError, match=r"image_shape=\(True, 5\) must be 2 positive ints"):
        plan_tiles(TINY, (True, 5))


def test_values_are_checked_after_the_cast_and_complex_is_refused() -> None:
    big = torch.full((2, 30, 30), 1e300, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"contains NaN or infinite values once cast to the model's torch.float32"):
        predict_tiled(build_unet(TINY), big, progress=False)
    assert predict_tiled(build_unet(TINY, dtype=torch.float64), big, progress=False).dtype == torch.float64
    with pytest.raises(ValueError, match=r"infinite values once cast to the model's torch.float16"):
        check_image(TINY, torch.full((2, 30, 30), 70_000, dtype=torch.int32), torch.float16)
    check_image(TINY, torch.full((2, 30, 30), 60_000, dtype=torch.int32), torch.float16)
    for dtype in (torch.complex64, torch.complex128):
        with pytest.raises(ValueError, match=r"is complex .* pass its real part, magnitude or phase"):
            predict_tiled(build_unet(TINY), torch.zeros(2, 30, 30, dtype=dtype), progress=False)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("out_channels", [1, 3, 300])
def test_output_types(padding: str, out_channels: int) -> None:
    config = TINY.model_copy(update={"padding": padding, "out_channels": out_channels})
    torch.manual_seed(0)
    model = build_unet(config).eval()
    image = torch.randn(2, 2, 21, 19)
    options = dict(tile_size=12 if padding == "same" else 60, overlap=0.5 if padding == "same" else None)
    logits = predict_tiled(model, image, progress=False, **options)
    probs = predict_tiled(model, image, output_type="probabilities", progress=False, **options)
    labels = predict_tiled(model, image, output_type="labels", progress=False, **options)
    assert probs.shape == logits.shape == (2, out_channels, 21, 19) and labels.shape == (2, 21, 19)
    assert labels.dtype == (torch.uint8 if out_channels <= 256 else torch.uint16)
    if out_channels == 1:
        want = probs > 0.5
        if padding == "valid":  # tiles do not overlap: exactly the transform of the logits
            torch.testing.assert_close(probs, logits.sigmoid(), rtol=0, atol=1e-6)
            assert torch.equal(want, logits > 0)
    else:
        torch.testing.assert_close(probs.sum(1), torch.ones(2, 21, 19), rtol=0, atol=1e-5)
        want = probs.argmax(1, keepdim=True)
        if padding == "valid":
            torch.testing.assert_close(probs, logits.softmax(1), rtol=0, atol=1e-6)
            assert torch.equal(want, logits.argmax(1, keepdim=True))
    assert torch.equal(labels.long(), want[:, 0].long())
    one = predict_tiled(model, image[0], output_type="labels", progress=False, **options)
    assert one.shape == (21, 19) and torch.equal(one, labels[0])
