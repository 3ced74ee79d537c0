"""Benchmark workloads, declared as data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Workload:
    name: str
    input_shape: tuple[int, ...]  # (N, C, *spatial)
    out_channels: int = 2
    depth: int = 4
    base: int = 64
    padding: Literal["valid", "same"] = "valid"
    batch_norm: bool = False
    kind: Literal["model", "shapes"] = "model"
    quick_shape: tuple[int, ...] = ()  # input shape for --quick (which also uses base 4)
    description: str = ""

    @property
    def dims(self) -> int:
        return len(self.input_shape) - 2

    @property
    def in_channels(self) -> int:
        return self.input_shape[1]

    def unetgen_config(self) -> dict[str, Any]:
        """This workload as a `unetgen.build_unet` config."""
        return {
            "spatial_dims": self.dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "depth": self.depth,
            "base_channels": self.base,
            "padding": self.padding,
            "norm": "batch" if self.batch_norm else "none",
            "dropout": {"rate": 0.0},
        }

    def quick(self) -> Workload:
        """A tiny version of this workload for smoke runs."""
        return dataclasses.replace(self, input_shape=self.quick_shape or self.input_shape, base=4)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            "paper",
            (1, 1, 572, 572),
            quick_shape=(1, 1, 188, 188),
            description="Ronneberger 2015 Fig. 1: 2D, valid padding, depth 4, base 64, no norm",
        ),
        Workload(
            "paper-bn",
            (1, 1, 572, 572),
            batch_norm=True,
            quick_shape=(1, 1, 188, 188),
            description="as paper, with batch norm",
        ),
        Workload(
            "same2d",
            (2, 3, 256, 256),
            base=32,
            padding="same",
            batch_norm=True,
            quick_shape=(2, 3, 64, 64),
            description="2D, same padding, depth 4, base 32, batch norm",
        ),
        Workload(
            "3d",
            (1, 1, 64, 64, 64),
            depth=3,
            base=16,
            padding="same",
            batch_norm=True,
            quick_shape=(1, 1, 32, 32, 32),
            description="3D, same padding, depth 3, base 16, batch norm",
        ),
        Workload(
            "shapes",
            (1, 1, 572, 572),
            kind="shapes",
            description="unetgen shape arithmetic on the paper config, per call",
        ),
    ]
}
