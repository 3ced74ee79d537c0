"""Held-out scores of the 3D model `unetgen train examples/training/nuclei3d.yaml` wrote, against
Otsu's threshold (the classical baseline), on the columns the training held out.

    unetgen train examples/training/nuclei3d.yaml --output nuclei3d.safetensors
    python examples/evaluate_nuclei3d.py nuclei3d.safetensors [--prediction labels.npy]

Data: examples/data/nuclei3d_image.tif and nuclei3d_labels.tif (see examples/data/README.md), or
any other zyx stack and labels given with --image, --labels, --blur and --held-out (the real-data
runs: examples/training/embryo3d.yaml, where a whole embryo is held out - `--held-out all` - and
examples/training/cells3d_nuclei.yaml; see docs/training.md).
The training held out the last 30 % of the x axis (18 of 57 columns); the scores are foreground
IoU and object F1 at IoU 0.5 (`unetgen.train.metrics`) on those columns. Otsu's threshold is taken
over the whole raw stack (as a user would), on the raw values and after a Gaussian blur of 1 pixel
(0.5 along z). The model predicts the raw stack with the preprocessing stored in its checkpoint
(`predict_tiled` applies `model.preprocessing`); `--prediction` scores a labels file written by
`unetgen predict CHECKPOINT --input examples/data/nuclei3d_image.tif --output-type labels` too.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage

from unetgen import load_unet, predict_tiled
from unetgen.train.metrics import object_scores

DATA = Path(__file__).parent / "data"
HELD_OUT = "x:0.3"  # examples/training/nuclei3d.yaml: data.validation


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of the histogram that maximises the between-class variance."""
    hist, edges = np.histogram(values, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(float)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    return float(edges[int(np.argmax(w0 * w1 * (mu0 - mu1) ** 2)) + 1])


def scores(foreground: np.ndarray, labels: np.ndarray) -> str:
    truth = labels > 0
    iou = (foreground & truth).sum() / (foreground | truth).sum()
    return f"{iou:.3f} | {object_scores(foreground, labels)['object_f1']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the .safetensors unetgen train wrote")
    parser.add_argument("--prediction", default=None, help="a labels .npy from unetgen predict --output-type labels")
    parser.add_argument("--image", default=str(DATA / "nuclei3d_image.tif"), help="the raw zyx stack")
    parser.add_argument("--labels", default=str(DATA / "nuclei3d_labels.tif"), help="its instance labels")
    parser.add_argument("--blur", default="0.5,1,1", help="the Gaussian sigma (z,y,x voxels) before Otsu")
    parser.add_argument(
        "--held-out",
        default=HELD_OUT,
        help="what the training held out: AXIS:FRACTION (the far "
        "end of that axis, as data.validation type region) or `all` (a file held out whole)",
    )
    args = parser.parse_args()
    raw = tifffile.imread(args.image)
    labels = tifffile.imread(args.labels).astype(np.int64)
    sigma = tuple(float(v) for v in args.blur.split(","))
    if args.held_out == "all":
        held: tuple = (...,)
        print(f"held out: the whole stack {raw.shape}")
    else:
        name, fraction = args.held_out.split(":")
        axis = "zyx".index(name)
        cut = raw.shape[axis] - math.ceil(float(fraction) * raw.shape[axis])
        held = (slice(None),) * axis + (slice(cut, None),)
        print(f"held out: {name} >= {cut} ({raw.shape[axis] - cut} of {raw.shape[axis]})")
    print("| method | foreground IoU | object F1 (IoU 0.5) |\n|---|---:|---:|")
    t = otsu(raw)
    print(f"| Otsu ({t:.0f}) | {scores((raw > t)[held], labels[held])} |")
    blurred = ndimage.gaussian_filter(raw.astype(np.float32), sigma)
    t = otsu(blurred)
    print(f"| Otsu after a Gaussian blur {sigma} | {scores((blurred > t)[held], labels[held])} |")
    model = load_unet(args.checkpoint)
    with torch.no_grad():  # predict_tiled applies the preprocessing stored in the checkpoint
        fg = predict_tiled(model, raw, progress=False, output_type="labels").numpy() == 1
    print(f"| unetgen train, predict_tiled (stored preprocessing) | {scores(fg[held], labels[held])} |")
    if args.prediction:
        predicted = np.load(args.prediction)
        print(f"| unetgen predict {Path(args.prediction).name} | {scores((predicted == 1)[held], labels[held])} |")


if __name__ == "__main__":
    main()
