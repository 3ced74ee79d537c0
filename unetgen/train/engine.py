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
import math
import os
import stat
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
from ..analysis.memory import estimate_training_memory, parse_bytes, plan_training
from ..build import build_unet
from ..checkpoint import load_unet, save_unet
from ..config.io import ConfigError, load_config
from ..config.preprocessing import Preprocessing, check_channels
from ..config.training import (
    SGD,
    Adam,
    AdamW,
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
BATCH_COVERS = 0.05
"""When the memory planner would raise the batch (the whole image fits), it is kept to as many
patches as cover this fraction of the training pixels per step (nnU-Net's rule; at least 2)."""


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
    the file is not one (not a regular torch file, another format, or fields not as unetgen writes)."""
    return _read_state(path)[0]


def _read_state(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the state, or None and why not)."""
    if path.is_symlink():
        return None, "it is a symbolic link"
    if not path.is_file():
        return None, "it is not a regular file"
    try:
        with open(path, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, or one holding more than tensors and plain values
        return None, "it is not a torch file of tensors and plain values"
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return None, f"its format is not {STATE_FORMAT!r}"
    if (problem := _state_problem(state)) is not None:
        return None, problem
    return state, ""


def _is_int(value: object, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _state_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with a state file's fields (None when each has its type): a file that names
    the format but holds something else (forged, or written by another version) is not read."""
    number = (int, float)
    checks = {
        "version": state.get("version") == STATE_VERSION,
        "step": _is_int(state.get("step")),
        "model": isinstance(state.get("model"), dict)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()),
        "optimizer": isinstance(state.get("optimizer"), dict),
        "best": state.get("best") is None or isinstance(state.get("best"), number),
        "best_step": state.get("best_step") is None or _is_int(state.get("best_step")),
        "history": isinstance(state.get("history"), list)
        and all(isinstance(r, dict) and _is_int(r.get("step"), 1) for r in state["history"]),
        "config": isinstance(state.get("config"), str),
        "patch": isinstance(state.get("patch"), list) and all(_is_int(n, 1) for n in state["patch"]),
        "batch": _is_int(state.get("batch"), 1),
        "files": isinstance(state.get("files"), list) and all(isinstance(n, str) for n in state["files"]),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        return f"its fields {', '.join(bad)} are not as unetgen writes them"
    if [r["step"] for r in state["history"]] != list(range(1, state["step"] + 1)):
        return "its history does not hold one row per step"
    return None


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
    state, why = _read_state(paths.state) if os.path.lexists(paths.state) else (None, "")
    if why:
        raise ValueError(
            f"{short_path(paths.state)} exists and is not a unetgen training state ({why}); unetgen never replaces "
            "what it did not write: give --output another name"
        )
    ours = set(state["files"]) if state is not None else set()
    for out in paths.all:  # lexists: a symlink, even a dangling one, is not unetgen's to replace
        if out != paths.state and os.path.lexists(out) and (out.name not in ours or out.is_symlink()):
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
    if suffix in (".safetensors", ".yaml", ".yml", ".json"):
        path = loaded.resolve(source)
        what = "checkpoint" if suffix == ".safetensors" else "config file"
        if not os.path.lexists(path):
            raise loaded.problem(("model",), f"{short_path(path)}: no such {what}")
        if not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file (a FIFO, device, socket or broken link)"
            raise loaded.problem(("model",), f"{short_path(path)} is {kind}; give a {what}")
        if suffix != ".safetensors":
            return load_config(path), None, None, path
        net = load_unet(path)
        return net.config, net.state_dict(), net.preprocessing, path
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
            near = []
            for direction in ("down", "up"):
                try:
                    near.append(shapes.nearest_valid_input_size(model, size, direction=direction))
                except shapes.InputShapeError:  # none below (or above) on some axis
                    pass
            shown = " or ".join(dict.fromkeys("x".join(map(str, n)) for n in near)) or "none"
            raise loaded.problem(
                ("patches", "size"),
                f"{'x'.join(map(str, size))} is not a valid input size of the model; the nearest valid: {shown} "
                "(unetgen sizes CONFIG lists them)",
            )
        batch = p.batch or 2
        _check_memory(loaded, model, size, batch)
        return size, batch
    smallest = tuple(min(s.target.shape[a] for s in data.train) for a in range(dims))
    optimizer = _planner_optimizer(loaded.config)
    try:
        plan = plan_training(model, p.memory, image_shape=smallest, batch_size=p.batch, optimizer=optimizer)
        if p.batch is None and plan.batch_size > 2:  # the whole image fits: at most 5 % of the data per step
            voxels = sum(s.target.size for s in data.train)
            cap = max(2, int(BATCH_COVERS * voxels) // math.prod(plan.patch_output))
            if cap < plan.batch_size:
                plan = plan_training(model, p.memory, image_shape=smallest, batch_size=cap, optimizer=optimizer)
    except ValueError as err:
        raise loaded.problem(("patches", "memory"), str(err)) from None
    note(f"plan: {plan.summary()}")
    return plan.patch_input, plan.batch_size


def _bytes(n: int) -> str:
    """A number of bytes in words: GiB from 1 GiB on, else MiB, else bytes."""
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _check_memory(loaded: LoadedTraining, model: UNetConfig, size: tuple[int, ...], batch: int) -> None:
    """Refuse a given patch and batch whose training step needs more than `patches.memory` (the
    estimate of `estimate_training_memory`, before anything is allocated)."""
    cfg = loaded.config
    budget = parse_bytes(cfg.patches.memory)
    need = estimate_training_memory(model, size, batch, optimizer=_planner_optimizer(cfg))
    if need.parameters + need.total > budget:
        where = ("patches", "size") if "size" in cfg.patches.model_fields_set else ("patches",)
        raise loaded.problem(
            where,
            f"patches of {'x'.join(map(str, size))}, batch {batch}, need {_bytes(need.parameters + need.total)} per "
            f"training step (parameters included), more than patches.memory "
            f"{cfg.patches.memory}; give a smaller patches.size or batch (or none, for the largest that fits), or "
            "a larger patches.memory",
        )


# ---------------------------------------------------------------------------------------------
# augmentation, loss, schedule


def _augment(
    loaded: LoadedTraining, patch: tuple[int, ...]
) -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """The augmentation of `loaded`'s config as `PatchSampler`'s ``augment(image, target, weights,
    rng)`` for input patches of `patch`; its options checked against the patch."""
    aug, dims = loaded.config.augmentation, len(patch)
    if not aug.flips and not aug.rot90 and aug.intensity is None and aug.elastic is None:
        return None
    elastic = aug.elastic
    sigma: Any = None
    if elastic is not None:
        sigma = elastic.sigma
        if isinstance(sigma, tuple) and len(sigma) != dims:
            raise loaded.problem(
                ("augmentation", "elastic", "sigma"),
                f"{list(sigma)} has {len(sigma)} values; the {dims}D model needs one or {dims} (one per spatial axis)",
            )
        if elastic.points**dims > math.prod(patch):
            raise loaded.problem(
                ("augmentation", "elastic", "points"),
                f"a grid of {elastic.points} points per axis has more points than the patch "
                f"{'x'.join(map(str, patch))} has pixels; give fewer points or a larger patch",
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
        count = torch.cuda.device_count()
        if int(name.split(":")[1]) >= count:
            raise ValueError(
                f"device {name!r}: this machine has {count} CUDA GPU{'s' if count != 1 else ''} (cuda:0 to "
                f"cuda:{count - 1}); give one of them, cuda (the local rank's under torchrun) or cpu"
            )
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
    if resume and restart:
        raise ValueError("resume=True continues a run and restart=True starts it over: pass one of them")
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
    device = _device(cfg, local_rank)  # the checks that need no data before reading it
    try:
        parse_bytes(cfg.patches.memory)
    except ValueError as err:
        raise loaded.problem(("patches", "memory"), str(err)) from None
    spec = _spec(loaded, stored_spec, model_cfg)
    data = load_data(loaded, model_cfg, spec)
    spec = data.spec
    patch, batch = _patches(loaded, model_cfg, data, say)
    if state is not None:
        patch, batch = tuple(state["patch"]), int(state["batch"])
    _trim_validation(data, patch, model_cfg)
    if batch % world:
        raise ValueError(f"the batch of {batch} patches does not split among {world} processes; give patches.batch")
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
        augment=_augment(loaded, patch),
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
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:  # torch's words for tensors that do not fit
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise ValueError(
                f"{short_path(paths.state)} does not fit the model of this configuration ({first}); it was not "
                "written by this run: give --output another name, or --restart to replace it"
            ) from None
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
    log = _Log(paths.log, ["step", "loss", "lr", "seconds", *metric_names])

    def state_bytes(step: int) -> bytes:
        return _state_bytes({
            "format": STATE_FORMAT, "version": STATE_VERSION, "step": step, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "best": best, "best_step": best_step, "history": history[:step],
            "config": _config_key(cfg), "patch": list(patch), "batch": batch, "files": files,
        })  # fmt: skip

    # a new run writes nothing until its first step has gone through (a failure before leaves no
    # file); then, before any other file, the state at step 0 that claims the outputs as its own
    initial = state_bytes(0) if writer and state is None else None
    claimed = False

    def claim() -> None:
        nonlocal claimed
        if not claimed:
            if initial is not None:
                atomic.write_bytes(paths.state, initial)
            log.open(history[:start])  # the rows up to the saved state; any logged after it dropped
            claimed = True

    def save(step: int, validated: bool) -> None:
        claim()
        meta = {MARK: {"step": step, "seed": cfg.seed, "metrics": metrics}}
        save_unet(model, paths.last, metadata=meta, preprocessing=spec, patch_size=patch)
        if isinstance(cfg.data.validation, NoSplit):
            save_unet(model, paths.best, metadata=meta, preprocessing=spec, patch_size=patch)
        log.append(history[log.rows :])
        if validated and plots is not None:
            plots.draw(history, metric_names)
        atomic.write_bytes(paths.state, state_bytes(step))

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
                    claim()
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
        log.close()
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


def _state_bytes(state: dict[str, Any]) -> bytes:
    """The training state as `torch.save` writes it (tensors copied to the CPU: a snapshot)."""
    buffer = io.BytesIO()
    torch.save({**state, "model": {k: v.detach().cpu() for k, v in state["model"].items()}}, buffer)
    return buffer.getvalue()


class _Log:
    """The CSV log, ``NAME.log.csv``, written through the csv module: opened once, rows appended
    and flushed to disk at every save (before the state is written, so the log holds at least the
    rows of the saved state). `open` first makes the file hold exactly the rows up to the saved
    state: the header and the state's history, written through a temporary and renamed when the
    file holds anything else (a new run; rows logged after the last saved state by a run that was
    killed; a log that is missing), so that a resumed run's log reads as an uninterrupted run's.
    Floats are written as Python's repr: they read back bit for bit."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns, self.rows = path, columns, 0
        self.file: io.TextIOWrapper | None = None
        self.writer: csv.DictWriter[str] | None = None

    def _text(self, rows: list[dict[str, Any]]) -> str:
        text = io.StringIO()
        w = csv.DictWriter(text, self.columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return text.getvalue()

    def open(self, rows: list[dict[str, Any]]) -> None:
        want = self._text(rows).encode()
        if _read_own(self.path, len(want) + 1) != want:
            atomic.write_bytes(self.path, want)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        self.file = open(fd, "w", encoding="utf-8", newline="")  # closed by close()
        self.writer = csv.DictWriter(self.file, self.columns, extrasaction="ignore", lineterminator="\n")
        self.rows = len(rows)

    def append(self, rows: list[dict[str, Any]]) -> None:
        assert self.file is not None and self.writer is not None, "append before open"
        self.writer.writerows(rows)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.rows += len(rows)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = self.writer = None


def _read_own(path: Path, limit: int) -> bytes | None:
    """Up to `limit` bytes of the regular file at `path` (never through a symlink), None when
    there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(limit)


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
