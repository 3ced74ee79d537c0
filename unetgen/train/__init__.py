"""`unetgen train`: from images and masks to a trained model, built from `unetgen.training`'s
pieces and the memory planner (see docs/training.md). `train` runs a `TrainingConfig`
(`unetgen.config.training`); `Outputs` names the files a run writes."""

from .engine import STATE_FORMAT, Outputs, TrainingResult, read_state, train

__all__ = ["STATE_FORMAT", "Outputs", "TrainingResult", "read_state", "train"]
