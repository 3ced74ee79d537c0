"""The resume record of a prediction: which output blocks are complete, under a fingerprint of
the prediction's arguments (see `predict_tiled`'s "Resuming")."""

from __future__ import annotations

import base64
import json
import os
import time
import zlib
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

__all__ = ["Journal"]


class Journal:
    """Which blocks of an output are complete, under a fingerprint of the prediction's arguments:
    a JSON record in a zarr-like `attrs` mapping (key `unetgen_progress`) or a JSON file, written
    (atomically: zarr stores and `os.replace`) at most every `interval` seconds and on `flush`."""

    KEY = "unetgen_progress"
    INTERVAL = 1.0
    """Default seconds between writes of the record (blocks completed since are redone after a kill)."""

    def __init__(
        self,
        where: MutableMapping[str, Any] | Path,
        fingerprint: str,
        total: int,
        *,
        resume: bool = True,
        interval: float | None = None,
    ) -> None:
        self.where, self.fingerprint, self.total = where, fingerprint, total
        self.interval = self.INTERVAL if interval is None else interval
        self.done = bytearray(-(-total // 8))
        record = self._load()
        if record is not None and resume:
            if record.get("fingerprint") != fingerprint or record.get("blocks") != total:
                raise ValueError(
                    f"{self._name()} holds a prediction made with other arguments (another model, plan, "
                    "output type or image shape): pass resume=False (CLI: --restart) to overwrite it, "
                    "or write to another output"
                )
            self.done = bytearray(zlib.decompress(base64.b64decode(record["done"])))
        self.dirty, self.last = True, 0.0
        try:
            self.flush()  # before any compute: an unwritable record fails now
        except OSError as err:
            raise ValueError(f"{self._name()}: cannot write the progress record: {err}") from None

    def _name(self) -> str:
        return str(self.where) if isinstance(self.where, Path) else "the output's attributes"

    def _load(self) -> dict[str, Any] | None:
        if isinstance(self.where, Path):
            try:
                return json.loads(self.where.read_text())
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as err:
                raise ValueError(f"{self.where}: not a unetgen progress record: {err}") from None
        record = self.where.get(self.KEY)
        return dict(record) if isinstance(record, Mapping) else None

    def __contains__(self, b: int) -> bool:
        return bool(self.done[b >> 3] & (1 << (b & 7)))

    @property
    def completed(self) -> int:
        return sum(bin(v).count("1") for v in self.done)

    def mark(self, b: int) -> None:
        self.done[b >> 3] |= 1 << (b & 7)
        self.dirty = True
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if not self.dirty:
            return
        record = {
            "fingerprint": self.fingerprint,
            "blocks": self.total,
            "completed": self.completed,
            "done": base64.b64encode(zlib.compress(bytes(self.done))).decode(),
        }
        if isinstance(self.where, Path):
            tmp = self.where.with_name(f".{self.where.name}.tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.where)
        else:
            self.where[self.KEY] = record
        self.dirty, self.last = False, time.monotonic()
