"""The training loop of `unetgen train`, built from `unetgen.training`'s pieces (`PatchSampler`,
`border_weight_map`, `separate_touching`, `elastic_deform`, the losses) and the memory planner
(`plan_training`), which stay usable on their own.

Determinism: every random choice of step k follows from (seed, k) alone: patch i of step k is drawn
with ``numpy.random.default_rng([seed, k, i])`` (its image, position and augmentation), dropout
with ``torch.manual_seed`` of (seed, k, rank), and the learning rate is a function of k. So a run
resumed from its training state (weights, optimiser state, step, best metric, history) ends with
exactly the weights of an uninterrupted run, and under `torchrun` each process draws its own slice
of the same global batch (DDP averages the gradients: the same step as one process on the whole
batch, to float rounding, for losses that are means over pixels).

Outputs, for ``--output NAME.safetensors``: ``NAME.safetensors`` (the best checkpoint by the
validation metric; the last one without validation), ``NAME.last.safetensors``, ``NAME.state.pt``
(the training state, `torch.load(weights_only=True)`), ``NAME.log.csv`` and ``NAME.curves.png``
(with matplotlib). Every file is written through a temporary beside it and renamed; the
checkpoints keep the preprocessing spec, so that `unetgen predict` normalises raw files alike.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import atomic
from ..analysis import shapes
from ..analysis.memory import plan_training
from ..build import build_unet
from ..checkpoint import load_unet, save_unet
from ..config.io import ConfigError, load_config
from ..config.preprocessing import Preprocessing, check_channels
from ..config.training import (
    SGD,
    Adam,
    AdamW,
    Augmentation,
    Constant,
    CrossEntropy,
    Dice,
    DiceCrossEntropy,
    InstanceMasks,
    LoadedTraining,
    NoSplit,
    Poly,
    TrainingConfig,
    load_training,
)
from ..config.unet_config import UNetConfig
from ..predict.ownership import check_apart
from ..predict.run import predict_tiled
from ..reprs import short_path
from ..training import PatchSampler, deep_supervision_loss, elastic_deform, soft_dice_loss, weighted_cross_entropy
from .data import TrainingData, data_paths, load_data
from .metrics import class_scores, combine_objects, object_counts

__all__ = ["STATE_FORMAT", "Outputs", "TrainingResult", "train"]

STATE_FORMAT = "unetgen-train-state"
"""The `format` entry of a training-state file."""
STATE_VERSION = 1
MARK = "unetgen_train"
"""The checkpoint metadata key that marks a checkpoint as written by `unetgen train`."""
Note = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# outputs


@dataclass(frozen=True)
class Outputs:
    """The files of a run named by its output checkpoint ``NAME.safetensors``."""

    best: Path
    last: Path
    state: Path
    log: Path
    curves: Path

    @classmethod
    def of(cls, output: str | os.PathLike[str]) -> Outputs:
        p = Path(output)
        if p.suffix != ".safetensors" or p.name == ".safetensors":
            raise ValueError(f"the output {short_path(p)} must be a NAME.safetensors checkpoint path")
        stem = p.name[: -len(".safetensors")]
        return cls(
            p,
            p.with_name(f"{stem}.last.safetensors"),
            p.with_name(f"{stem}.state.pt"),
            p.with_name(f"{stem}.log.csv"),
            p.with_name(f"{stem}.curves.png"),
        )

    @property
    def all(self) -> tuple[Path, ...]:
        return (self.best, self.last, self.state, self.log, self.curves)


def read_state(path: Path) -> dict[str, Any] | None:
    """The training state at `path`, loaded with ``weights_only=True`` (no code runs), or None when
    the file is not one (not a torch file, or another format)."""
    try:
        with open(path, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, or one holding more than tensors and plain values
        return None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return None
    return state


def _check_outputs(paths: Outputs, inputs: list[Path], resume: bool, restart: bool) -> dict[str, Any] | None:
    """Refuse outputs that are, contain or sit inside an input, and existing files unetgen train did
    not write; the state to resume from (with `resume`)."""
    for out in paths.all:
        atomic.check_target(out, "the output")
        for source in inputs:
            check_apart(
                source,
                out,
                what="the output",
                source_what="the input",
                fix="give --output a path outside the training data and model",
            )
    state = read_state(paths.state) if paths.state.exists() else None
    if paths.state.exists() and state is None:
        raise ValueError(
            f"{short_path(paths.state)} exists and is not a unetgen training state; unetgen never replaces what it "
            "did not write: give --output another name"
        )
    ours = set(state.get("files", [])) if state is not None else set()
    for out in paths.all:
        if out != paths.state and out.exists() and out.name not in ours:
            raise ValueError(
                f"{short_path(out)} exists and was not written by this training run; unetgen never replaces what it "
                "did not write: give --output another name or move the file"
            )
    if resume:
        if state is None:
            raise ValueError(f"nothing to resume: {short_path(paths.state)} does not exist; run without --resume")
        return state
    if state is not None and not restart:
        raise ValueError(
            f"{short_path(paths.state)} holds a training run at step {state.get('step')}; pass --resume to continue "
            "it or --restart to start over (replacing its files)"
        )
    return None


# ---------------------------------------------------------------------------------------------
# model, preprocessing, patches


def _resolve_model(loaded: LoadedTraining) -> tuple[UNetConfig, dict[str, torch.Tensor] | None, Any, Path | None]:
    """(config, weights to start from, the checkpoint's preprocessing, the model file)."""
    source = loaded.config.model
    if isinstance(source, UNetConfig):
        return source, None, None, None
    suffix = Path(source).suffix.lower()
    if suffix == ".safetensors":
        path = loaded.resolve(source)
        if not path.is_file():
            raise loaded.problem(("model",), f"{short_path(path)}: no such checkpoint")
        net = load_unet(path)
        return net.config, net.state_dict(), net.preprocessing, path
    if suffix in (".yaml", ".yml", ".json"):
        path = loaded.resolve(source)
        if not path.is_file():
            raise loaded.problem(("model",), f"{short_path(path)}: no such config file")
        return load_config(path), None, None, path
    try:
        return load_config(source), None, None, None
    except ConfigError:
        raise loaded.problem(
            ("model",), f"{source!r} is not a config file (.yaml/.yml/.json), a checkpoint (.safetensors) nor a preset"
        ) from None


def _spec(loaded: LoadedTraining, stored: Preprocessing | None, model: UNetConfig) -> Preprocessing:
    cfg = loaded.config
    spec = cfg.spec
    if spec is None and stored is not None:
        spec = stored if cfg.data.axes is None else stored.model_copy(update={"axes": cfg.data.axes})
    spec = spec if spec is not None else cfg.default_spec()
    try:
        check_channels(spec, model.in_channels, model.out_channels)
    except ValueError as err:
        raise loaded.problem(("preprocessing",), str(err)) from None
    return spec


def _planner_optimizer(cfg: TrainingConfig) -> str:
    match cfg.optimizer:
        case SGD(momentum=m):
            return "momentum" if m > 0 else "sgd"
        case Adam():
            return "adam"
        case AdamW():
            return "adamw"
    raise AssertionError(cfg.optimizer)


def _patches(loaded: LoadedTraining, model: UNetConfig, data: TrainingData, note: Note) -> tuple[tuple[int, ...], int]:
    """(patch input size, batch): as given, or the memory planner's for `patches.memory`."""
    p, dims = loaded.config.patches, model.spatial_dims
    if p.size is not None:
        size = (p.size,) * dims if isinstance(p.size, int) else p.size
        if len(size) != dims:
            raise loaded.problem(
                ("patches", "size"), f"{list(size)} has {len(size)} sizes; the {dims}D model needs one or {dims}"
            )
        if not shapes.is_valid_input_shape(model, size):
            near = [shapes.nearest_valid_input_size(model, size, direction=d) for d in ("down", "up")]
            shown = " or ".join(dict.fromkeys("x".join(map(str, n)) for n in near))
            raise loaded.problem(
                ("patches", "size"),
                f"{'x'.join(map(str, size))} is not a valid input size of the model; the nearest valid: {shown} "
                "(unetgen sizes CONFIG lists them)",
            )
        return size, p.batch or 2
    smallest = tuple(min(s.target.shape[a] for s in data.train) for a in range(dims))
    try:
        plan = plan_training(
            model, p.memory, image_shape=smallest, batch_size=p.batch, optimizer=_planner_optimizer(loaded.config)
        )
    except ValueError as err:
        raise loaded.problem(("patches", "memory"), str(err)) from None
    note(f"plan: {plan.summary()}")
    return plan.patch_input, plan.batch_size


# ---------------------------------------------------------------------------------------------
# augmentation, loss, schedule


def _augment(aug: Augmentation, dims: int) -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """The augmentation of `aug` as `PatchSampler`'s ``augment(image, target, weights, rng)``."""
    if not aug.flips and not aug.rot90 and aug.intensity is None and aug.elastic is None:
        return None
    elastic = aug.elastic
    sigma: Any = None
    if elastic is not None:
        sigma = elastic.sigma
        if isinstance(sigma, tuple) and len(sigma) != dims:
            raise ValueError(
                f"augmentation.elastic.sigma={list(sigma)} has {len(sigma)} values; the {dims}D model needs one "
                f"or {dims} (one per spatial axis)"
            )

    def augment(
        x: np.ndarray, y: np.ndarray, w: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if aug.flips:
            for axis in range(dims):
                if rng.random() < 0.5:
                    x, y, w = np.flip(x, axis + 1), np.flip(y, axis), np.flip(w, axis)
        if aug.rot90 and dims >= 2 and y.shape[-1] == y.shape[-2]:
            k = int(rng.integers(4))
            x, y, w = np.rot90(x, k, (-2, -1)), np.rot90(y, k, (-2, -1)), np.rot90(w, k, (-2, -1))
        if elastic is not None and (elastic.probability >= 1 or rng.random() < elastic.probability):
            x, y, w = elastic_deform(
                np.ascontiguousarray(x), np.ascontiguousarray(y), np.ascontiguousarray(w), rng,
                sigma=sigma, points=elastic.points,
            )  # fmt: skip
        if aug.intensity is not None:
            a = rng.uniform(-aug.intensity.scale, aug.intensity.scale)
            b = rng.uniform(-aug.intensity.shift, aug.intensity.shift)
            x = x * np.float32(1 + a) + np.float32(b)
        return np.ascontiguousarray(x), np.ascontiguousarray(y), np.ascontiguousarray(w)

    return augment


def _head_loss(cfg: TrainingConfig) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    match cfg.loss:
        case CrossEntropy():
            return weighted_cross_entropy
        case Dice(include_background=bg, smooth=smooth):
            return lambda logits, t, w: soft_dice_loss(logits, t, smooth=smooth, include_background=bg)
        case DiceCrossEntropy(dice=a, cross_entropy=b, include_background=bg):
            return lambda logits, t, w: (
                a * soft_dice_loss(logits, t, include_background=bg) + b * (weighted_cross_entropy(logits, t, w))
            )
    raise AssertionError(cfg.loss)


def _lr_factor(cfg: TrainingConfig, step: int) -> float:
    """The learning rate of step `step` (1-based) over the optimiser's."""
    match cfg.schedule:
        case Constant():
            return 1.0
        case Poly(exponent=e):
            return (1 - (step - 1) / cfg.steps) ** e
    raise AssertionError(cfg.schedule)


def _optimizer(cfg: TrainingConfig, params: Any) -> torch.optim.Optimizer:
    match cfg.optimizer:
        case SGD(lr=lr, momentum=m, nesterov=n, weight_decay=wd):
            return torch.optim.SGD(params, lr=lr, momentum=m, nesterov=n and m > 0, weight_decay=wd)
        case Adam(lr=lr, weight_decay=wd):
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        case AdamW(lr=lr, weight_decay=wd):
            return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise AssertionError(cfg.optimizer)


def _torch_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


# ---------------------------------------------------------------------------------------------
# validation


def _metric_names(cfg: TrainingConfig, classes: int) -> list[str]:
    if isinstance(cfg.data.validation, NoSplit):
        return []
    names = ["iou", "dice"]
    if classes > 2:
        names += [f"{m}_{c}" for c in range(1, classes) for m in ("iou", "dice")]
    if isinstance(cfg.targets, InstanceMasks):
        names += ["object_f1", "separated"]
    return names


def _validate(
    net: nn.Module, data: TrainingData, patch: tuple[int, ...], device: torch.device, classes: int
) -> dict[str, float]:
    preds, truths, counts = [], [], []
    net.eval()
    with torch.no_grad():
        for s in data.validation:
            pred = predict_tiled(  # as `unetgen predict --output-type labels` labels it
                net,
                torch.from_numpy(s.image),
                tile_size=patch,
                progress=False,
                device=device,
                preprocessing=False,
                output_type="labels",
            )  # the images are normalised already
            pred = pred.cpu().numpy()
            index = [slice(None)] * pred.ndim
            if data.split_axis is not None:
                index[data.split_axis] = slice(s.offset, None)
            pred, truth = pred[tuple(index)], s.target[tuple(index)]
            preds.append(pred.ravel())
            truths.append(truth.ravel())
            if s.labels is not None:
                counts.append(object_counts(pred == 1, s.labels[tuple(index)]))
    net.train()
    scores = class_scores(np.concatenate(preds), np.concatenate(truths), classes)
    if counts:
        scores.update(combine_objects(counts))
    return scores


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class TrainingResult:
    """What a run wrote and reached."""

    outputs: Outputs
    steps: int
    patch: tuple[int, ...]
    batch: int
    best: float | None
    best_step: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    """The last validation's metrics (empty without validation)."""
    curves: bool = False
    """Whether the PNG of the curves was written (matplotlib installed)."""
    writer: bool = True
    """Whether this process wrote the files (process 0 under `torchrun`)."""


def _device(cfg: TrainingConfig, local_rank: int) -> torch.device:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this torch has no CUDA GPU available; use device: cpu")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    elif name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps': not available in this torch build; use device: cpu")
    return torch.device(name)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, 0
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _config_key(cfg: TrainingConfig) -> str:
    """The config as JSON without the fields a resumed run may change (steps, intervals)."""
    data = cfg.model_dump(mode="json", exclude={"steps", "validate_every", "save_every", "device"})
    return json.dumps(data, sort_keys=True)


def train(
    source: LoadedTraining | TrainingConfig | Any,
    output: str | os.PathLike[str],
    *,
    resume: bool = False,
    restart: bool = False,
    progress: bool = True,
    plot: bool = True,
    note: Note | None = None,
) -> TrainingResult:
    """Train the model of `source` (a `TrainingConfig`, a mapping, a training file or a
    `LoadedTraining`) and write the checkpoints, state, log and curves named after `output`
    (``NAME.safetensors``; see the module). `resume` continues the run whose state is there;
    `restart` replaces a previous run's files (never anything else); `plot=False` skips the PNG of
    the curves (the CSV log has them). Under `torchrun` (WORLD_SIZE >
    1) it trains with DDP, process 0 validating and writing. Bad input is a `ConfigError` (with the
    file position of the field), `CheckpointError` or `ValueError` naming the fix."""
    say: Note = note or (lambda _text: None)
    loaded = source if isinstance(source, LoadedTraining) else load_training(source)
    cfg = loaded.config
    paths = Outputs.of(output)
    rank, world, local_rank = _distributed()
    model_cfg, start_weights, stored_spec, model_file = _resolve_model(loaded)
    if model_cfg.out_channels < 2:
        raise loaded.problem(
            ("model",),
            f"unetgen train trains softmax outputs over classes: the model needs out_channels >= 2, not "
            f"{model_cfg.out_channels} (2 for background and foreground)",
        )
    inputs = data_paths(loaded) + ([model_file] if model_file is not None else [])
    if loaded.source != "<training>":
        inputs.append(Path(loaded.source))
    state = _check_outputs(paths, inputs, resume, restart)
    if state is not None and state.get("config") != _config_key(cfg):
        raise ValueError(
            f"{short_path(paths.state)} was written by a run with another configuration; resume with the same one "
            "(only steps, validate_every, save_every and device may change) or --restart"
        )
    spec = _spec(loaded, stored_spec, model_cfg)
    data = load_data(loaded, model_cfg, spec)
    spec = data.spec
    patch, batch = _patches(loaded, model_cfg, data, say)
    if state is not None:
        patch, batch = tuple(state["patch"]), int(state["batch"])
    _trim_validation(data, patch, model_cfg)
    if batch % world:
        raise ValueError(f"the batch of {batch} patches does not split among {world} processes; give patches.batch")
    device = _device(cfg, local_rank)
    dims = model_cfg.spatial_dims
    deep = bool(model_cfg.deep_supervision)
    weights = [s.weights for s in data.train]
    sampler = PatchSampler(
        model_cfg,
        [s.image for s in data.train],
        [s.target for s in data.train],
        None if all(w is None for w in weights) else [w if w is not None else np.ones_like(s.target, np.float32)
                                                      for w, s in zip(weights, data.train, strict=True)],
        patch_size=patch,
        target_size="input" if deep else "output",
        augment=_augment(cfg.augmentation, dims),
        seed=0,
        foreground=cfg.patches.foreground,
    )  # fmt: skip
    with_weights = sampler.weights[0] is not None
    model = build_unet(model_cfg, seed=cfg.seed)
    if start_weights is not None:
        model.load_state_dict(start_weights)
    model = model.to(device).train()
    opt = _optimizer(cfg, model.parameters())
    base_lr = [g["lr"] for g in opt.param_groups]
    head_loss = _head_loss(cfg)
    classes = model_cfg.out_channels
    metric_names = _metric_names(cfg, classes)
    target = cfg.best_metric if cfg.best_metric != "auto" else (
        "object_f1" if isinstance(cfg.targets, InstanceMasks) else "iou"
    )  # fmt: skip
    start, best, best_step, history = 0, None, None, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, best, best_step, history = int(state["step"]), state["best"], state["best_step"], list(state["history"])
    net: nn.Module = model
    owned_group = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            owned_group = True
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False
        )
    writer = rank == 0
    files = [p.name for p in paths.all]
    plots = _Plots(paths.curves, say) if writer and plot else None
    metrics: dict[str, float] = {}

    def save(step: int, validated: bool) -> None:
        meta = {MARK: {"step": step, "seed": cfg.seed, "metrics": metrics}}
        save_unet(model, paths.last, metadata=meta, preprocessing=spec, patch_size=patch)
        if isinstance(cfg.data.validation, NoSplit):
            save_unet(model, paths.best, metadata=meta, preprocessing=spec, patch_size=patch)
        _write_log(paths.log, history, metric_names)
        if validated and plots is not None:
            plots.draw(history, metric_names)
        _write_state(paths.state, {
            "format": STATE_FORMAT, "version": STATE_VERSION, "step": step, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "best": best, "best_step": best_step, "history": history,
            "config": _config_key(cfg), "patch": list(patch), "batch": batch, "files": files,
        })  # fmt: skip

    if writer and state is None:
        _write_state(paths.state, {
            "format": STATE_FORMAT, "version": STATE_VERSION, "step": 0, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "best": None, "best_step": None, "history": [],
            "config": _config_key(cfg), "patch": list(patch), "batch": batch, "files": files,
        })  # fmt: skip
    per_rank = batch // world
    lo = rank * per_rank
    bar = _bar(cfg.steps, start, progress and writer)
    began = time.perf_counter()
    try:
        for step in range(start + 1, cfg.steps + 1):
            factor = _lr_factor(cfg, step)
            for g, lr in zip(opt.param_groups, base_lr, strict=True):
                g["lr"] = lr * factor
            torch.manual_seed(_torch_seed(cfg.seed, step, rank))
            xs, ys, ws = [], [], []
            for i in range(lo, lo + per_rank):
                sampler.rng = np.random.default_rng([cfg.seed, step, i])
                x, y, w = sampler.sample()
                xs.append(x)
                ys.append(y)
                ws.append(w)
            x, y = torch.stack(xs).to(device), torch.stack(ys).to(device)
            w = torch.stack(ws).to(device) if with_weights else None
            out = net(x)
            if deep:
                loss = deep_supervision_loss(
                    out, y, model_cfg, patch, weight=w, loss=head_loss, level_weights=cfg.head_weights
                )
            else:
                loss = head_loss(out, y, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = loss.item()
            row: dict[str, Any] = {"step": step, "loss": value, "lr": base_lr[0] * factor,
                                   "seconds": round(time.perf_counter() - began, 3)}  # fmt: skip
            validated = bool(metric_names) and (step % cfg.validate_every == 0 or step == cfg.steps)
            if validated and writer:
                metrics = _validate(model, data, patch, device, classes)
                row.update({k: metrics[k] for k in metric_names})
                if best is None or metrics[target] > best:
                    best, best_step = metrics[target], step
                    meta = {MARK: {"step": step, "seed": cfg.seed, "metrics": metrics}}
                    save_unet(model, paths.best, metadata=meta, preprocessing=spec, patch_size=patch)
            history.append(row)
            if writer and (step % cfg.save_every == 0 or step == cfg.steps or validated):
                save(step, validated)
            if world > 1 and validated:
                import torch.distributed as dist

                dist.barrier()
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{value:.3f}"}
                if metrics:
                    post[target] = f"{metrics[target]:.3f}"
                bar.set_postfix(post)
    finally:
        if bar is not None:
            bar.close()
        if owned_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    if start >= cfg.steps and writer:
        say(f"the run in {short_path(paths.state)} has done its {cfg.steps} steps already")
    return TrainingResult(
        paths, cfg.steps, patch, batch, best, best_step, metrics, bool(plots and plots.wrote), writer=writer
    )


def _trim_validation(data: TrainingData, patch: tuple[int, ...], model: UNetConfig) -> None:
    """Keep about a patch of context in front of each validation region, starting at a multiple of
    the network's period along the axis (the product of its strides): a valid network's output
    depends on where the pooling grid starts, so only such a start predicts the region exactly as
    the whole image does."""
    if data.split_axis is None:
        return
    axis, context = data.split_axis, patch[data.split_axis]
    period = shapes.axis_rule(model, axis).period
    for s in data.validation:
        cut = s.offset
        start = max(0, cut - context) // period * period
        if start:
            index = [slice(None)] * s.target.ndim
            index[axis] = slice(start, None)
            s.image = s.image[(slice(None), *index)]
            s.target = s.target[tuple(index)]
            s.labels = s.labels[tuple(index)] if s.labels is not None else None
            s.offset = cut - start


def _bar(total: int, start: int, show: bool) -> Any:
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", desc="train", dynamic_ncols=True)


def _write_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({**state, "model": {k: v.detach().cpu() for k, v in state["model"].items()}}, buffer)
    atomic.write_bytes(path, buffer.getvalue())


def _write_log(path: Path, history: list[dict[str, Any]], metric_names: list[str]) -> None:
    text = io.StringIO()
    columns = ["step", "loss", "lr", "seconds", *metric_names]
    w = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic.write_bytes(path, text.getvalue().encode())


class _Plots:
    """The PNG of the training curves, through matplotlib when it is installed (one note otherwise)."""

    def __init__(self, path: Path, note: Note) -> None:
        self.path, self.note, self.wrote, self.missing = path, note, False, False

    def draw(self, history: list[dict[str, Any]], metric_names: list[str]) -> None:
        if self.missing:
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib.figure import Figure
        except ImportError:
            self.missing = True
            self.note("matplotlib is not installed: no curves PNG (pip install 'unetgen[plots]'); the CSV log has them")
            return
        fig = Figure(figsize=(9, 3.5))
        left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        steps = [r["step"] for r in history]
        losses = np.array([r["loss"] for r in history])
        left.plot(steps, losses, lw=0.5, alpha=0.4, label="loss")
        if len(losses) >= 10:
            k = max(1, len(losses) // 50)
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            left.plot(steps[k - 1 :], smooth, lw=1.5, label=f"mean of {k}")
        left.set_xlabel("step")
        left.set_yscale("log" if losses.min() > 0 else "linear")
        left.legend(fontsize=8)
        for name in metric_names:
            pts = [(r["step"], r[name]) for r in history if name in r]
            if pts and not name.split("_")[-1].isdigit():
                right.plot(*zip(*pts, strict=True), marker=".", label=name)
        right.set_xlabel("step")
        right.set_title("validation", fontsize=9)
        right.set_ylim(0, 1.02)
        right.legend(fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, metadata={"Software": "unetgen train"})
        atomic.write_bytes(self.path, buffer.getvalue())
        self.wrote = True
