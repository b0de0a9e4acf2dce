"""medclassify's corruptions against the ``medmnistc`` package they re-implement, on real test images.

For each corruption of a dataset's MedMNIST-C table and each chosen severity: how much each
implementation changes the images (mean absolute change in 8-bit levels) and how far apart the two
results are. Deterministic corruptions should agree to about one level; random ones (noise, motion
blur directions) draw other numbers, so only their mean change should agree. Prints JSON.

medmnistc is not a medclassify dependency (it pins medmnist 3.0.1 and scikit-image 0.23.2 and needs
ImageMagick), so run this in an environment of its own::

    apt-get install libmagickwand-6.q16-6
    python -m venv /tmp/mcvenv && /tmp/mcvenv/bin/pip install -e . medmnistc
    /tmp/mcvenv/bin/python bench/medmnistc_parity.py --data ../shared/data/organamnist.npz --dataset organamnist

The images are upsampled to 224 px first (MedMNIST-C's parameters are in pixels of a 224 px image).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

from medclassify.data.corruptions import corrupt, corruption_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an official MedMNIST .npz file")
    parser.add_argument("--dataset", required=True, help="its MedMNIST flag, e.g. bloodmnist")
    parser.add_argument("--images", type=int, default=40, help="test images to compare")
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 3, 5])
    args = parser.parse_args()

    np.fromstring = lambda data, dtype: np.frombuffer(data, dtype)  # medmnistc's motion blur under NumPy 2
    from medmnistc.corruptions.registry import CORRUPTIONS_DS

    with np.load(args.data) as data:
        small = data["test_images"][: args.images]
    images = np.stack(
        [np.asarray(Image.fromarray(im).resize((224, 224), Image.BICUBIC).convert("RGB")) for im in small]
    )
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    results = []
    for corruption in corruption_set(args.dataset, 3, "medmnistc")[1]:
        reference = CORRUPTIONS_DS[args.dataset][corruption.name]
        reference.rng = np.random.default_rng(0)  # what medmnistc's dataset builder sets for impulse noise
        for severity in args.severities:
            ours = corrupt(batch, corruption, severity, torch.Generator().manual_seed(0))
            ours = ours.permute(0, 2, 3, 1).numpy().astype(int)
            theirs = np.stack(
                [np.asarray(reference.apply(Image.fromarray(im), severity - 1))[..., :3] for im in images]
            ).astype(int)
            results.append(
                {
                    "corruption": corruption.name,
                    "severity": severity,
                    "mean_change_medclassify": round(float(np.abs(ours - images).mean()), 3),
                    "mean_change_medmnistc": round(float(np.abs(theirs - images).mean()), 3),
                    "mean_abs_difference": round(float(np.abs(ours - theirs).mean()), 3),
                }
            )
    print(json.dumps({"dataset": args.dataset, "images": len(images), "size": 224, "results": results}, indent=1))


if __name__ == "__main__":
    main()
