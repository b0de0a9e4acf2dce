"""The tutorials' figures, made by real runs on real data and committed as optimised PNGs.

    python docs/tutorials/make_figures.py --data-dir ../shared/data --work /tmp/tutorial-figures

Needs the official BloodMNIST-28 and OrganAMNIST-28 files in --data-dir. Each step is a medclassify
command (the ones the tutorials show, on the data at hand); the figures it writes are copied into
docs/tutorials/img/ (PNG, at most 250 kB, quantised to a palette when larger) and docs/tutorials/img/
figures.json records for each the command that made it, the date and the machine, which the
tutorials' captions repeat (tests/test_tutorials.py checks that they do). Runs already finished in
--work are kept, so an interrupted call continues. About 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

IMG = Path(__file__).resolve().parent / "img"
LIMIT_BYTES = 250_000

# A two-class folder standing in for chest_xray/ (no chest X-ray file can be had on the machine that
# makes these figures): BloodMNIST's immature granulocytes and monocytes, a pair that is often
# confused, about 2:1 imbalanced, trained in grey like an X-ray. Folder name -> the dataset's label.
FOLDER_CLASSES = {
    "granulocyte": "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
    "monocyte": "monocyte",
}

IMBALANCE_STUDY = """\
name: imbalance
datasets: [folder]
sizes: [28]
models: [paper-cnn]
seeds: 1
train: {channels: 1}
variants:
  plain: {}
  class-weights: {class_weights: balanced}
  balanced-sampler: {sampler: balanced}
  focal: {loss: focal}
"""

PAPER_STUDY = """\
name: bloodmnist-seeds
datasets: [bloodmnist]
sizes: [28]
models: [paper-cnn]
seeds: 3
variants:
  paper: {}
  ema: {ema_decay: 0.999}
"""


def machine() -> str:
    """The CPU's model name and the cores this process may use."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


class Commands:
    """Runs medclassify commands in the work folder and returns each as a reader would type it:
    relative paths, and the data folder as given on this script's command line."""

    def __init__(self, work: Path, data_dir: Path) -> None:
        self.work, self.data_dir = work, data_dir
        self.absolute_data = str(data_dir.resolve())

    def __call__(self, *args: str | Path, unless: Path | None = None) -> str:
        command = ["medclassify", *map(str, args)]
        shown = shlex.join(command).replace(self.absolute_data, str(self.data_dir))
        if unless is not None and (self.work / unless).exists():
            print("done:", shown, flush=True)
        else:
            print("$", shown, flush=True)
            subprocess.run([sys.executable, "-m", "medclassify", *command[1:]], check=True, cwd=self.work)
        return shown


def write_folder(data_dir: Path, folder: Path) -> None:
    """train/CLASS and test/CLASS PNGs from BloodMNIST's train and test splits (no val/: medclassify
    splits one off train/)."""
    if (folder / "test").is_dir():
        return
    import medmnist

    index = {label: int(i) for i, label in medmnist.INFO["bloodmnist"]["label"].items()}
    arrays = np.load(data_dir / "bloodmnist.npz")
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for split in ("train", "test"):
        images, targets = arrays[f"{split}_images"], arrays[f"{split}_labels"].ravel()
        for name, label in FOLDER_CLASSES.items():
            (staging / split / name).mkdir(parents=True)
            for i in np.flatnonzero(targets == index[label]):
                Image.fromarray(images[i]).save(staging / split / name / f"{split}_{i:05d}.png")
    staging.rename(folder)


def keep(source: Path, name: str, command: str, records: dict) -> None:
    """Copy a figure into img/, quantised when it is over the limit, and record how it was made."""
    target = IMG / name
    image = Image.open(source)
    image.save(target, optimize=True)
    if target.stat().st_size > LIMIT_BYTES:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    size = target.stat().st_size
    if size > LIMIT_BYTES:
        raise SystemExit(f"{target}: {size} bytes after quantising, over the {LIMIT_BYTES} limit")
    records[name] = {"command": command, "bytes": size}
    print(f"  {name}: {size // 1000} kB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/tutorial-figures"))
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    IMG.mkdir(exist_ok=True)
    medclassify = Commands(work, args.data_dir)
    data = medclassify.absolute_data
    records: dict[str, dict] = {}

    # Tutorial 1: a two-class folder, imbalance, a screening operating point, Grad-CAM.
    write_folder(Path(data), work / "cell_folder")
    trained = medclassify(
        "train", "--data-dir", "cell_folder", "--size", "28", "--channels", "1", "--class-weights", "balanced",
        "--threshold", "sensitivity=0.95", "--out", "runs/folder", unless=Path("runs/folder/metrics.json"),
    )  # fmt: skip
    grid = medclassify("explain", "runs/folder")
    keep(work / "runs/folder/explain/gradcam_test_grid.png", "folder_gradcam_grid.png", f"{trained}\n{grid}", records)
    (work / "imbalance.yaml").write_text(IMBALANCE_STUDY)
    study = medclassify("run", "imbalance.yaml", "--data-dir", "cell_folder")
    keep(work / "runs/imbalance/figures/test_metrics.png", "imbalance_test_metrics.png", study, records)

    # Tutorials 5 and 6: the paper's recipe on BloodMNIST, calibrated, with conformal sets and corruptions.
    trained = medclassify(
        "train", "--dataset", "bloodmnist", "--size", "28", "--data-dir", data, "--calibration", "temperature",
        "--conformal", "0.1", "--corruptions", "auto", "--out", "runs/blood", unless=Path("runs/blood/metrics.json"),
    )  # fmt: skip
    for figure in ("reliability", "conformal", "robustness"):
        keep(work / f"runs/blood/{figure}.png", f"blood_{figure}.png", trained, records)
    Image.fromarray(np.load(Path(data) / "bloodmnist.npz")["test_images"][0]).save(work / "cell.png")
    explained = medclassify("explain", "runs/blood", "cell.png", "--out", "cams")
    keep(work / "cams/cell_gradcam.png", "blood_gradcam.png", explained, records)

    # Tutorial 2: seeds and a paired comparison, read from the study's report.
    (work / "bloodmnist-seeds.yaml").write_text(PAPER_STUDY)
    study = medclassify("run", "bloodmnist-seeds.yaml", "--data-dir", data)
    for figure in ("test_metrics", "loss_curves"):
        keep(work / f"runs/bloodmnist-seeds/figures/{figure}.png", f"seeds_{figure}.png", study, records)

    record = {"date": datetime.date.today().isoformat(), "machine": machine(), "figures": records}
    (IMG / "figures.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
