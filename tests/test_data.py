import hashlib
import warnings
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from medmnist.info import INFO

from helpers import write_image_folder, write_medmnist_npz
from medclassify.data import compute_normalization, dataset_catalog, get_dataset_info, load_dataset
from medclassify.data.memory import BatchLoader, Split
from medclassify.errors import ConfigError, DataError


def test_catalog_covers_every_2d_medmnist_dataset_from_the_package_metadata():
    catalog = dataset_catalog()
    for flag, meta in INFO.items():
        if flag.endswith("3d"):
            assert flag not in catalog
            continue
        info = catalog[flag]
        assert info.n_channels == meta["n_channels"] and info.task == meta["task"]
        assert info.class_names[0] == meta["label"]["0"]
        assert info.md5(64) == meta["MD5_64"] and info.filename(64) == f"{flag}_64.npz"
    assert {"bloodmnist", "organcmnist", "pneumoniamnist", "synthcells"} <= set(catalog)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ConfigError, match="unknown dataset 'bloodmnst'.*bloodmnist"):
        get_dataset_info("bloodmnst")


def test_rgb_file_loads_as_uint8_nchw(blood_dir):
    data = load_dataset("bloodmnist", 28, blood_dir, verify=False)
    train = data.splits["train"]
    assert train.images.dtype == torch.uint8 and train.images.shape == (160, 3, 28, 28)
    assert train.labels.dtype == torch.int64 and train.labels.shape == (160,)
    raw = np.load(blood_dir / "bloodmnist.npz")
    assert np.array_equal(train.images.permute(0, 2, 3, 1).numpy(), raw["train_images"])
    assert data.class_names == list(get_dataset_info("bloodmnist").class_names)
    assert data.source["md5"] == hashlib.md5((blood_dir / "bloodmnist.npz").read_bytes()).hexdigest()


def test_grey_file_loads_with_one_channel_and_can_be_expanded(pneumonia_dir):
    grey = load_dataset("pneumoniamnist", 28, pneumonia_dir, verify=False)
    assert grey.splits["test"].images.shape == (60, 1, 28, 28) and grey.task == "binary-class"
    rgb = load_dataset("pneumoniamnist", 28, pneumonia_dir, verify=False, channels=3)
    assert rgb.channels == 3 and torch.equal(rgb.splits["test"].images[:, 2], grey.splits["test"].images[:, 0])


def test_64px_file_in_the_official_layout(blood_dir):
    data = load_dataset("bloodmnist", 64, blood_dir, verify=False)
    assert data.splits["train"].images.shape == (96, 3, 64, 64)


def test_wrong_md5_is_reported_and_no_verify_accepts_it(blood_dir):
    with pytest.raises(
        DataError,
        match=r"bloodmnist.npz: MD5 [0-9a-f]{32} does not match the official 7053d0359d879ad8a5505303e11de1dc.*--no-verify",
    ):
        load_dataset("bloodmnist", 28, blood_dir)
    assert load_dataset("bloodmnist", 28, blood_dir, verify=False).source["md5_verified"] is False


def test_missing_file_without_network_names_file_url_and_folder(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise URLError("Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(DataError) as excinfo:
        load_dataset("organcmnist", 64, tmp_path)
    message = str(excinfo.value)
    assert "organcmnist_64.npz is not in" in message and str(tmp_path) in message
    assert INFO["organcmnist"]["url_64"] in message and "\n" not in message
    assert not list(tmp_path.iterdir()), "a failed download must leave nothing behind"
    with pytest.raises(DataError, match="downloads are switched off"):
        load_dataset("organcmnist", 64, tmp_path, download=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"val_labels": None}, "missing keys val_labels"),
        ({"train_images": np.zeros((160, 28, 28), np.uint8)}, r"'train_images' has 1 channel\(s\); this dataset has 3"),
        (
            {"train_images": np.zeros((160, 30, 30, 3), np.uint8)},
            r"'train_images' has shape \(160, 30, 30, 3\); expected N x 28 x 28",
        ),
        ({"test_images": np.zeros((80, 28, 28, 3), np.float32)}, "'test_images' has dtype float32; expected uint8"),
        ({"test_labels": np.full((80, 1), 8)}, r"'test_labels' holds labels from 8 to 8; expected 0..7 \(8 classes\)"),
        ({"val_labels": np.zeros((39, 1), np.int64)}, r"'val_labels' has shape \(39, 1\); expected \(40, 1\)"),
    ],
)
def test_malformed_files_get_one_line_naming_the_problem(tmp_path, overrides, message):
    write_medmnist_npz(tmp_path / "bloodmnist.npz", **overrides)
    with pytest.raises(DataError, match=message):
        load_dataset("bloodmnist", 28, tmp_path, verify=False)


def test_truncated_file(blood_dir):
    path = blood_dir / "bloodmnist.npz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="bloodmnist.npz: not a readable .npz file"):
        load_dataset("bloodmnist", 28, blood_dir, verify=False)


def test_dataset_normalization_matches_numpy(blood_dir):
    images = load_dataset("bloodmnist", 28, blood_dir, verify=False).splits["train"].images
    stats = compute_normalization(images, "dataset", chunk=7)
    scaled = images.numpy() / 255.0
    assert np.allclose(stats.mean, scaled.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(stats.std, scaled.std(axis=(0, 2, 3)), atol=1e-5)
    normalised = stats.apply(images[:4])
    expected = (torch.from_numpy(scaled[:4]) - torch.tensor(stats.mean).view(1, 3, 1, 1)) / torch.tensor(
        stats.std
    ).view(1, 3, 1, 1)
    assert torch.allclose(normalised, expected.float(), atol=1e-5)
    assert compute_normalization(images, "half").mean == (0.5, 0.5, 0.5)


def test_batch_loader_visits_every_sample_once_per_epoch_in_seeded_order():
    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    stats = compute_normalization(split.images, "none")

    def epoch(seed):
        loader = BatchLoader(
            split, 4, stats, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        return torch.cat([labels for _, labels in loader]).tolist()

    assert sorted(epoch(1)) == list(range(10)) and epoch(1) == epoch(1) and epoch(1) != epoch(2)
    assert len(BatchLoader(split, 4, stats, torch.device("cpu"))) == 3


def test_image_folder_with_all_splits(tmp_path):
    root = write_image_folder(tmp_path / "xray", splits=("train", "val", "test"), per_class=6)
    data = load_dataset("folder", 32, root)
    assert data.class_names == ["NORMAL", "PNEUMONIA"] and data.task == "binary-class" and data.channels == 1
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 12, "val": 12, "test": 12}
    assert data.splits["train"].images.shape[1:] == (1, 32, 32)


def test_image_folder_split_is_stratified_and_reproducible(tmp_path):
    root = write_image_folder(tmp_path / "xray", per_class=20, mode="RGB")
    first = load_dataset("folder", 28, root, split_seed=3)
    again = load_dataset("folder", 28, root, split_seed=3)
    assert first.channels == 3
    assert {k: len(v) for k, v in first.splits.items()} == {"train": 28, "val": 4, "test": 8}
    for split in ("val", "test"):
        assert torch.bincount(first.splits[split].labels).tolist() == [len(first.splits[split]) // 2] * 2
    assert first.source["files"] == again.source["files"] and first.source["split_seed"] == 3
    assert first.source["files"] != load_dataset("folder", 28, root, split_seed=4).source["files"]


def test_image_folder_skips_unreadable_files_with_one_warning(tmp_path):
    root = write_image_folder(tmp_path / "xray", per_class=20)
    (root / "train" / "NORMAL" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "train" / "PNEUMONIA" / "notes.txt").write_text("not an image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset("folder", 28, root)
    messages = [str(w.message) for w in caught if "not readable images" in str(w.message)]
    assert len(messages) == 1 and "broken.png" in messages[0] and "notes.txt" in messages[0]
    assert data.source["skipped_files"] == ["train/NORMAL/broken.png", "train/PNEUMONIA/notes.txt"]
    assert sum(len(s) for s in data.splits.values()) == 40


def test_image_folder_channels_follow_the_majority_unless_given(tmp_path):
    root = write_image_folder(tmp_path / "xray", per_class=10, mode="RGB")
    write_image_folder(tmp_path / "grey", per_class=3, mode="L")
    for path in (tmp_path / "grey" / "train").rglob("*.*"):
        path.rename(root / "train" / path.parent.name / f"grey_{path.name}")
    assert load_dataset("folder", 28, root).channels == 3
    assert load_dataset("folder", 28, root, channels=1).splits["train"].images.shape[1] == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no 'train' folder"):
        load_dataset("folder", 28, tmp_path)
    root = write_image_folder(tmp_path / "xray", per_class=10)
    (root / "train" / "EMPTY").mkdir()
    with pytest.raises(DataError, match="class folder\\(s\\) EMPTY hold no readable images"):
        load_dataset("folder", 28, root)


def test_synthetic_sample_is_deterministic_and_in_the_official_layout(tmp_path):
    from medclassify.data.synthetic import ensure_synthcells, generate_synthcells

    first, second = generate_synthcells(28), generate_synthcells(28)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert first["train_images"].shape == (1200, 28, 28, 3) and first["train_labels"].shape == (1200, 1)
    assert np.bincount(first["test_labels"][:, 0]).tolist() == [100, 100, 100, 100]
    path = ensure_synthcells(tmp_path, 64)
    data = load_dataset("synthcells", 64, tmp_path)
    assert path.name == "synthcells_64.npz" and data.splits["val"].images.shape == (200, 3, 64, 64)


def test_download_moves_a_complete_file_into_place(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    source = write_medmnist_npz(tmp_path / "server" / "bloodmnist.npz")
    requested = {}

    def fake_download(url, root, filename, md5=None):
        requested.update(url=url, md5=md5)
        (tmp_path / "cache").joinpath(".seen").write_text(root)  # where the partial file would live
        (Path(root) / filename).write_bytes(source.read_bytes())

    monkeypatch.setattr(tv_utils, "download_url", fake_download)
    (tmp_path / "cache").mkdir()
    data = load_dataset("bloodmnist", 28, tmp_path / "cache", verify=False)
    assert requested == {"url": INFO["bloodmnist"]["url"], "md5": INFO["bloodmnist"]["MD5"]}
    assert len(data.splits["train"]) == 160
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".seen", "bloodmnist.npz"], (
        "the temporary folder is gone, and the split cache is not in the data folder"
    )
    assert Path((tmp_path / "cache" / ".seen").read_text()).parent == tmp_path / "cache", (
        "downloads land in a temporary folder first"
    )
