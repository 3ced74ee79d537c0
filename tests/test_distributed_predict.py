"""Prediction on a Dask cluster: a LocalCluster of 2 workers (threads of this process, so that
it starts in a fraction of a second) gives the in-memory result, loads the model once per
process, and resumes after an interruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_large_images import _assert_same, same_configs
from test_tiling import local_configs

from unetgen import UNetConfig, build_unet, load_unet, predict_tiled, save_unet

zarr = pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")
from unetgen.predict import distributed as unet_dask  # noqa: E402
from unetgen.predict.arrays import create_output  # noqa: E402


@pytest.fixture(scope="module")
def client():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None, silence_logs=40
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()
    torch.set_num_threads(threads)


@settings(max_examples=6)
@given(st.one_of(local_configs(), same_configs()), st.data())
def test_two_workers_equal_in_memory(client, tmp_path_factory, config: UNetConfig, data: st.DataObject) -> None:
    tmp = tmp_path_factory.mktemp("dask")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    model = build_unet(config).eval()
    checkpoint = save_unet(model, tmp / "model.safetensors")
    model = load_unet(checkpoint)  # the weights as stored
    dims = config.spatial_dims
    limit = {1: 200, 2: 50, 3: 16}[dims]
    spatial = tuple(data.draw(st.integers(1, limit), label=f"size{a}") for a in range(dims))
    tile = data.draw(st.none() | st.integers(1, 60), label="tile_size")
    block = data.draw(st.none() | st.integers(8, 40), label="block_shape")
    output_type = data.draw(st.sampled_from(["logits", "probabilities", "labels"]), label="output_type")
    pixels = np.random.default_rng(0).standard_normal((config.in_channels, *spatial), dtype=np.float32)
    image = zarr.create_array(tmp / "image.zarr", shape=pixels.shape, chunks=(1, *(16,) * dims), dtype="float32")
    image[...] = pixels
    options = dict(tile_size=tile, output_type=output_type, block_shape=block)
    out = unet_dask.predict_distributed(
        checkpoint, tmp / "image.zarr", tmp / "out.zarr", client=client, **options, blocks_per_task=2, progress=False
    )
    _assert_same(out[...], model, torch.from_numpy(pixels), output_type, tile_size=tile)  # in memory
    assert out.attrs["unetgen_progress"]["completed"] == out.attrs["unetgen_progress"]["blocks"]


def test_model_loaded_once_per_worker_process_and_resume(client, tmp_path) -> None:
    torch.manual_seed(0)
    config = UNetConfig(spatial_dims=2, depth=2, base_channels=2, out_channels=2, dropout={"rate": 0})
    checkpoint = save_unet(build_unet(config), tmp_path / "model.safetensors")
    pixels = np.random.default_rng(1).standard_normal((1, 1, 150, 130), dtype=np.float32)
    image = zarr.create_array(tmp_path / "image.zarr", shape=pixels.shape, chunks=(1, 1, 64, 64), dtype="float32")
    image[...] = pixels
    options = dict(tile_size=64, client=client, progress=False)
    loads = unet_dask.loads
    whole = unet_dask.predict_distributed(checkpoint, image, tmp_path / "whole.zarr", **options)
    assert unet_dask.loads - loads == 1  # both workers are threads of this process: one load for all tasks
    tasks = []

    def stop(blocks):
        tasks.append(blocks)
        if len(tasks) == 3:
            raise KeyboardInterrupt  # as Ctrl-C would

    with pytest.raises(KeyboardInterrupt):
        unet_dask.predict_distributed(checkpoint, image, tmp_path / "out.zarr", **options, callback=stop)
    record = zarr.open_array(tmp_path / "out.zarr" / "0").attrs["unetgen_progress"]
    assert 3 <= record["completed"] < record["blocks"]
    tasks.clear()
    out = unet_dask.predict_distributed(checkpoint, image, tmp_path / "out.zarr", **options, callback=tasks.append)
    assert len(tasks) == record["blocks"] - record["completed"]  # only the blocks not recorded
    assert np.array_equal(out[...], whole[...])


def test_misaligned_chunks_are_refused(client, tmp_path) -> None:
    config = UNetConfig(spatial_dims=2, depth=1, base_channels=1, out_channels=1)
    model = build_unet(config)
    checkpoint = save_unet(model, tmp_path / "model.safetensors")
    image = np.zeros((1, 100, 100), np.float32)
    np.save(tmp_path / "image.npy", image)
    out = zarr.create_array(tmp_path / "out.zarr", shape=(1, 100, 100), chunks=(1, 30, 30), dtype="float32")
    with pytest.raises(ValueError, match=r"not on the chunk grid.*create_output"):
        unet_dask.predict_distributed(checkpoint, tmp_path / "image.npy", out, tile_size=40, client=client)
    aligned = create_output(tmp_path / "ok.zarr", model, image, tile_size=40)
    unet_dask.predict_distributed(checkpoint, tmp_path / "image.npy", aligned, tile_size=40, client=client)
    assert np.array_equal(aligned[...], predict_tiled(model, torch.from_numpy(image), tile_size=40).numpy())


def test_cli_with_a_scheduler_address(tmp_path, capsys) -> None:
    from unetgen.cli import main

    torch.manual_seed(0)
    model = build_unet(UNetConfig(spatial_dims=2, depth=1, base_channels=1, out_channels=2)).eval()
    checkpoint = save_unet(model, tmp_path / "model.safetensors")
    pixels = np.random.default_rng(0).standard_normal((1, 90, 80), dtype=np.float32)
    np.save(tmp_path / "image.npy", pixels)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", dashboard_address=None
    ) as cluster:
        argv = [
            "predict",
            str(checkpoint),
            "--input",
            str(tmp_path / "image.npy"),
            "--output",
            str(tmp_path / "o.zarr"),
        ]
        # a local run stopped part-way: the Dask run of the CLI resumes it, and says so
        out = create_output(tmp_path / "o.zarr", model, pixels, tile_size=48)
        tiles: list[object] = []

        def stop(n, tile):
            tiles.append(tile)
            if len(tiles) == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            predict_tiled(model, pixels, out=out, tile_size=48, callback=stop, progress=False)
        record = out.attrs["unetgen_progress"]
        assert main([*argv, "--tile-size", "48", "--scheduler", cluster.scheduler_address, "--no-progress"]) == 0
        assert main([*argv, "--scheduler", cluster.scheduler_address, "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert f"resuming: {record['completed']} of {record['blocks']} blocks done" in err and record["completed"] > 0
    assert "blocks complete" in err and "error: give --scheduler or --workers, not both" in err
    want = predict_tiled(model, torch.from_numpy(pixels), tile_size=48)
    assert np.array_equal(zarr.open_array(tmp_path / "o.zarr" / "0")[...], want.numpy())


def test_instances_on_a_cluster_equal_in_memory(client, tmp_path) -> None:
    """output_type="instances": the workers predict the class labels into the temporary beside
    the output, this process labels them block by block: the in-memory instances, ids and all."""
    torch.manual_seed(0)
    config = UNetConfig(spatial_dims=2, depth=2, base_channels=4, out_channels=2, dropout={"rate": 0})
    checkpoint = save_unet(build_unet(config), tmp_path / "model.safetensors")
    model = load_unet(checkpoint)
    pixels = np.random.default_rng(2).standard_normal((1, 70, 57), dtype=np.float32) * 3
    np.save(tmp_path / "image.npy", pixels)
    options = dict(tile_size=60, min_size=2)
    out = unet_dask.predict_distributed(
        checkpoint, tmp_path / "image.npy", tmp_path / "out.zarr", client=client, **options, output_type="instances",
        progress=False,
    )  # fmt: skip
    want = predict_tiled(model, torch.from_numpy(pixels), output_type="instances", **options, progress=False)
    assert out.dtype == np.uint32 and np.prod(out.cdata_shape) > 4
    np.testing.assert_array_equal(out[...], want.numpy())
    assert out.attrs["unetgen_instances"]["objects"] == int(want.long().max()) > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.npy", "model.safetensors", "out.zarr"]
