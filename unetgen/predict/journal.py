"""The resume record of a prediction: which output blocks are complete, under a fingerprint of
the prediction's arguments (see `predict_tiled`'s "Resuming").

A record is read as hostile: its size is bounded by what a record of the plan's block count can
take before it is parsed, its bitmap is inflated with a bound (zlib's `max_length`) and must hold
exactly one bit per block; anything else (a list, a string, nesting 100,000 deep, a wrong type, a
bitmap of another length) is a ValueError that says to start over. Each run stamps the record with
a random run id and, before each later write, reads the record back: a record another run wrote
meanwhile stops this one (it would otherwise mark blocks complete that the other run reset)."""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import time
import zlib
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from ..reprs import short_path, short_repr, short_text
from .formats import open_regular_file
from .ownership import exclusive_temp

__all__ = ["Journal"]


def _bitmap_bytes(total: int) -> int:
    return -(-total // 8)


def _encoded_limit(total: int) -> int:
    """The most characters the base64 of a zlib-compressed bitmap of `total` blocks can take."""
    compressed = _bitmap_bytes(total) + _bitmap_bytes(total) // 1000 + 64  # zlib's worst case, with room
    return 4 * -(-compressed // 3)


class Journal:
    """Which blocks of an output are complete, under a fingerprint of the prediction's arguments:
    a JSON record in a zarr-like `attrs` mapping (key `unetgen_progress`) or a JSON file, written
    (atomically: zarr stores, and an exclusive temporary file renamed over the JSON file) at most
    every `interval` seconds and on `flush`. `reread` (default: read `where` again) gives the
    record as it is now, to check that no other run wrote it since this one did."""

    KEY = "unetgen_progress"
    INTERVAL = 1.0
    """Default seconds between writes of the record (blocks completed since are redone after a kill)."""
    MAX_BLOCKS = 1 << 29
    """Most blocks a record holds (a 64 MiB bitmap; a 10**12-pixel image in tiles of 116 has ~7.4e7)."""

    def __init__(
        self,
        where: MutableMapping[str, Any] | Path,
        fingerprint: str,
        total: int,
        *,
        resume: bool = True,
        interval: float | None = None,
        reread: Callable[[], Any] | None = None,
    ) -> None:
        if total > self.MAX_BLOCKS:
            raise ValueError(
                f"this prediction has {total:,} blocks; a progress record holds at most {self.MAX_BLOCKS:,} "
                "(one bit each): use larger blocks (block_shape=, CLI --block-size) or larger tiles"
            )
        self.where, self.fingerprint, self.total = where, fingerprint, total
        self.interval = self.INTERVAL if interval is None else interval
        self.reread = reread
        self.run = secrets.token_hex(8)
        self.done, self.count = bytearray(_bitmap_bytes(total)), 0
        record = self._load()
        if record is not None and resume:
            self.done, self.count = self._parse(record)
        elif record is not None and isinstance(where, Path) and not _looks_like_a_record(record):
            raise ValueError(
                f"journal {short_path(str(where))} exists and is not a unetgen progress record; unetgen does not "
                "overwrite it: give another journal path"
            )
        self.resumed = self.count
        """Blocks recorded complete when the journal was opened (a resumed run skips them)."""
        self.dirty, self.last, self.written = True, 0.0, False
        try:
            self.flush()  # before any compute: an unwritable record fails now
        except OSError as err:
            raise ValueError(f"{self._name()}: cannot write the progress record: {err.strerror or err}") from None

    def _name(self) -> str:
        return f"journal {short_path(str(self.where))}" if isinstance(self.where, Path) else "the output's attributes"

    def _load(self) -> Any:
        """The record as stored (any JSON value), None if there is none."""
        if not isinstance(self.where, Path):
            return self.where.get(self.KEY)
        if not os.path.lexists(self.where):
            return None
        limit = 2 * _encoded_limit(self.total) + 4096
        with open_regular_file(self.where, "journal") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ValueError(
                f"{self._name()} holds more than {limit:,} bytes, more than a progress record of {self.total:,} "
                "blocks can: not a unetgen progress record; give another journal path"
            )
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as err:
            raise ValueError(
                f"{self._name()}: not a unetgen progress record ({short_text(str(err) or type(err).__name__)}); "
                "give another journal path"
            ) from None

    def _forged(self, why: str) -> ValueError:
        return ValueError(
            f"{self._name()}: a damaged or forged progress record ({why}); pass resume=False (CLI: --restart) to "
            "start over"
        )

    def _parse(self, record: Any) -> tuple[bytearray, int]:
        """The bitmap and the count of complete blocks of a stored record, every field checked."""
        if not isinstance(record, Mapping):
            raise self._forged(f"a {type(record).__name__}, not a JSON object")
        if record.get("fingerprint") != self.fingerprint or record.get("blocks") != self.total:
            raise ValueError(
                f"{self._name()} holds a prediction made with other arguments (another model, plan, "
                "output type, image shape or preprocessing): pass resume=False (CLI: --restart) to overwrite it, "
                "or write to another output"
            )
        encoded = record.get("done")
        if not isinstance(encoded, str) or len(encoded) > _encoded_limit(self.total):
            raise self._forged(f"'done' is {short_repr(encoded)}, not the bitmap of {self.total:,} blocks")
        try:
            packed = base64.b64decode(encoded, validate=True)
            inflate = zlib.decompressobj()
            done = inflate.decompress(packed, _bitmap_bytes(self.total) + 1)  # never more than the bitmap
        except (binascii.Error, ValueError, zlib.error) as err:
            raise self._forged(f"'done' does not decode: {short_text(str(err))}") from None
        if len(done) != _bitmap_bytes(self.total) or not inflate.eof or inflate.unused_data:
            raise self._forged(f"'done' is not a bitmap of exactly {self.total:,} blocks")
        if self.total % 8 and done[-1] >> (self.total % 8):
            raise self._forged("'done' marks blocks beyond the last one")
        return bytearray(done), sum(bin(v).count("1") for v in done)

    def __contains__(self, b: int) -> bool:
        return bool(self.done[b >> 3] & (1 << (b & 7)))

    @property
    def completed(self) -> int:
        return self.count

    def mark(self, b: int) -> None:
        if b not in self:
            self.done[b >> 3] |= 1 << (b & 7)
            self.count += 1
        self.dirty = True
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def _check_owner(self) -> None:
        """The stored record is still the one this run wrote last: no other run took the output."""
        current = self.reread() if self.reread is not None else self._load()
        if isinstance(current, Mapping) and current.get("run") == self.run:
            return
        raise ValueError(
            f"{self._name()}: another run replaced this prediction's progress record while it ran (the output was "
            "recreated or written by a second run); this run stops without marking its blocks: check that one "
            "run at a time writes the output, then run again (with --restart / resume=False to start over)"
        )

    def flush(self) -> None:
        if not self.dirty:
            return
        if self.written:
            self._check_owner()
        record = {
            "fingerprint": self.fingerprint,
            "blocks": self.total,
            "completed": self.count,
            "done": base64.b64encode(zlib.compress(bytes(self.done))).decode(),
            "run": self.run,
        }
        if isinstance(self.where, Path):
            self._write_file(record)
        else:
            self.where[self.KEY] = record
        self.dirty, self.last, self.written = False, time.monotonic(), True

    def _write_file(self, record: dict[str, Any]) -> None:
        """Write the JSON file through an exclusive temporary beside it and a rename."""
        fd, tmp = exclusive_temp(self.where)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self.where)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _looks_like_a_record(record: Any) -> bool:
    return isinstance(record, Mapping) and {"fingerprint", "blocks", "done"} <= record.keys()
