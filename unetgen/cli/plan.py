"""`unetgen plan`: the largest training patch (and batch) that fits a memory budget."""

from __future__ import annotations

import argparse

from .args import read_config, spatial


def cmd_plan(args: argparse.Namespace) -> int:
    """The largest training patch (and batch) whose step fits the memory: one line, or one `error:` line."""
    from ..analysis.memory import plan_training

    cfg = read_config(args.config)
    image = spatial(cfg, args.image, "--image")
    plan = plan_training(cfg, args.memory, image_shape=image, batch_size=args.batch, optimizer=args.optimizer)
    print(plan.summary())
    return 0
