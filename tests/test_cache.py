"""The split cache: built once from an .npz file or an image folder, opened memory-mapped later,
checked against its source, never left half written."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import one_line_error, run_cli, write_image_folder, write_medmnist_npz
from medclassify.data import BatchLoader, compute_normalization, load_dataset
from medclassify.data import cache as cache_module
from medclassify.data import folders as folders_module
from medclassify.data.memory import prefetched

SPLITS = ("train", "val", "test")


def blood_cache(blood_dir):
    """Where the bloodmnist fixture's split cache goes by default: the user's cache folder."""
    return cache_module.cache_root() / f"bloodmnist-{cache_module.source_tag(blood_dir / 'bloodmnist.npz')}"


def _created(folder) -> str:
    return json.loads((folder / "cache.json").read_text())["created"]


def test_the_cache_round_trips_every_split_exactly_and_opens_memory_mapped(blood_dir):
    first = load_dataset("bloodmnist", 28, blood_dir, verify=False)
    folder = blood_cache(blood_dir)
    assert first.source["cache"] == str(folder) and first.source["storage"] == "memory"  # small: copied to RAM
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["cache.json"] + [f"{s}_{kind}.npy" for s in SPLITS for kind in ("images", "labels")]
    )
    started = time.perf_counter()
    mapped = load_dataset("bloodmnist", 28, blood_dir, verify=False, storage="mmap")
    assert time.perf_counter() - started < 1.0 and mapped.source["storage"] == "mmap"
    with np.load(blood_dir / "bloodmnist.npz") as source:
        for name in SPLITS:
            split = mapped.splits[name]
            assert split.mapped and isinstance(split.images, torch.Tensor) and split.images.dtype == torch.uint8
            assert np.array_equal(split.images.numpy(), source[f"{name}_images"].transpose(0, 3, 1, 2))
            assert np.array_equal(split.labels.numpy(), source[f"{name}_labels"][:, 0])
            assert torch.equal(first.splits[name].images, split.images)
    assert mapped.class_names == first.class_names and len(mapped.class_names) == 8
    record = json.loads((folder / "cache.json").read_text())
    assert record["channels"] == 3 and record["splits"]["train"]["shape"] == [160, 3, 28, 28]


def test_auto_storage_copies_while_the_machines_copies_fit_and_maps_otherwise(blood_dir, monkeypatch):
    load_dataset("bloodmnist", 28, blood_dir, verify=False)  # builds the cache
    nbytes = cache_module.read_cache(blood_cache(blood_dir)).nbytes
    monkeypatch.setattr(cache_module, "MEMORY_MAX_BYTES", 2 * nbytes)
    assert load_dataset("bloodmnist", 28, blood_dir, verify=False).source["storage"] == "memory"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two copies still fit
    assert load_dataset("bloodmnist", 28, blood_dir, verify=False).source["storage"] == "memory"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # three would not: the processes share one mapping
    assert load_dataset("bloodmnist", 28, blood_dir, verify=False).source["storage"] == "mmap"


def test_recorded_pixel_sums_give_numpys_mean_and_std(blood_dir):
    train = load_dataset("bloodmnist", 28, blood_dir, verify=False, storage="mmap").splits["train"]
    scaled = train.images.numpy() / 255.0
    stats = compute_normalization(train, "dataset")
    assert np.allclose(stats.mean, scaled.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(stats.std, scaled.std(axis=(0, 2, 3)), atol=1e-6)
    assert stats == compute_normalization(train.images.clone(), "dataset", chunk=7)  # same numbers from a pass


def test_grey_repeated_to_rgb_is_a_cache_of_its_own(pneumonia_dir):
    grey = load_dataset("pneumoniamnist", 28, pneumonia_dir, verify=False)
    rgb = load_dataset("pneumoniamnist", 28, pneumonia_dir, verify=False, channels=3)
    assert rgb.source["cache"] != grey.source["cache"] and rgb.channels == 3
    assert Path(rgb.source["cache"]).name.startswith("pneumoniamnist_3ch-")
    for name in SPLITS:
        assert torch.equal(rgb.splits[name].images, grey.splits[name].images.expand(-1, 3, -1, -1))


def test_a_changed_source_rebuilds_the_cache_and_a_touched_one_does_not(blood_dir):
    path, folder = blood_dir / "bloodmnist.npz", blood_cache(blood_dir)
    load_dataset("bloodmnist", 28, blood_dir, verify=False)
    built = _created(folder)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # same bytes, newer time
    load_dataset("bloodmnist", 28, blood_dir, verify=False)
    record = json.loads((folder / "cache.json").read_text())
    assert record["created"] == built and record["source"]["stamp"]["mtime_ns"] == path.stat().st_mtime_ns

    time.sleep(1.1)  # the record's creation time is in seconds
    write_medmnist_npz(path, seed=5)
    changed = load_dataset("bloodmnist", 28, blood_dir, verify=False)
    with np.load(path) as source:
        assert np.array_equal(changed.splits["train"].images.numpy(), source["train_images"].transpose(0, 3, 1, 2))
    assert _created(folder) != built


def test_an_interrupted_build_leaves_no_half_cache_and_the_next_run_builds_it(blood_dir, monkeypatch):
    real_add, calls = cache_module.ImageWriter.add, {"n": 0}

    def interrupted(self, block):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_add(self, block)

    monkeypatch.setattr(cache_module.ImageWriter, "add", interrupted)
    monkeypatch.setattr(cache_module, "CHUNK_BYTES", 28 * 28 * 3 * 50)  # several blocks per split
    with pytest.raises(KeyboardInterrupt):
        load_dataset("bloodmnist", 28, blood_dir, verify=False)
    folder = blood_cache(blood_dir)
    root = folder.parent
    assert [p.name for p in root.glob(f"*{folder.name}*") if not p.name.endswith(".lock")] == []
    # a build killed outright leaves its temporary folder: the next build removes it
    (root / f".{folder.name}.building-99999").mkdir()
    (root / f".{folder.name}.building-99999" / "train_images.npy").write_bytes(b"half")
    monkeypatch.setattr(cache_module.ImageWriter, "add", real_add)
    data = load_dataset("bloodmnist", 28, blood_dir, verify=False)
    assert len(data.splits["train"]) == 160
    assert sorted(p.name for p in root.glob(f"*{folder.name}*") if not p.name.endswith(".lock")) == [folder.name]


def test_a_truncated_cache_file_is_rebuilt(blood_dir):
    load_dataset("bloodmnist", 28, blood_dir, verify=False)
    images = blood_cache(blood_dir) / "val_images.npy"
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="val_images.npy has another size than recorded; it is built again") as said:
        data = load_dataset("bloodmnist", 28, blood_dir, verify=False, storage="mmap")
    assert len(said) == 1
    assert len(data.splits["val"]) == 40 and images.stat().st_size > 1000


def test_an_unwritable_cache_folder_warns_once_and_reads_into_memory(blood_dir, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    with pytest.warns(
        UserWarning, match=r"blocked.*cannot write.*reading .*bloodmnist.npz into memory without a split cache"
    ):
        data = load_dataset("bloodmnist", 28, blood_dir, verify=False, cache_dir=blocked / "cache")
    assert data.source["cache"] is None and data.source["storage"] == "memory"
    with np.load(blood_dir / "bloodmnist.npz") as source:
        assert np.array_equal(data.splits["test"].images.numpy(), source["test_images"].transpose(0, 3, 1, 2))


def test_cache_dir_and_the_environment_variable_choose_where_caches_live(blood_dir, tmp_path, monkeypatch):
    name = blood_cache(blood_dir).name
    data = load_dataset("bloodmnist", 28, blood_dir, verify=False, cache_dir=tmp_path / "fast")
    assert data.source["cache"] == str(tmp_path / "fast" / name)
    monkeypatch.setenv("MEDCLASSIFY_CACHE", str(tmp_path / "env"))
    assert load_dataset("bloodmnist", 28, blood_dir, verify=False).source["cache"] == str(tmp_path / "env" / name)
    # by default in the user's cache folder ($XDG_CACHE_HOME), never in the data folder
    monkeypatch.delenv("MEDCLASSIFY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    default = load_dataset("bloodmnist", 28, blood_dir, verify=False).source["cache"]
    assert default == str(tmp_path / "xdg" / "medclassify" / "split-cache" / name)
    assert sorted(p.name for p in blood_dir.iterdir()) == ["bloodmnist.npz", "bloodmnist_64.npz"]


def test_training_from_the_memory_mapped_cache_equals_training_from_memory(blood_dir, tmp_path):
    from medclassify.config import TrainConfig
    from medclassify.training import train

    results = {}
    for storage in ("memory", "mmap"):
        config = TrainConfig(
            dataset="bloodmnist", data_dir=str(blood_dir), verify=False, quiet=True, epochs=2, num_threads=2,
            augment="exact", data_storage=storage, out=str(tmp_path / storage),
        )  # fmt: skip
        results[storage] = train(config)
    recorded = json.loads((tmp_path / "mmap" / "config.json").read_text())["data"]["source"]
    assert recorded["storage"] == "mmap" and recorded["cache"] == str(blood_cache(blood_dir))
    strip = [
        {k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in results["memory"].history
    ]
    assert strip == [
        {k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in results["mmap"].history
    ]
    assert results["memory"].metrics["test"] == results["mmap"].metrics["test"]
    assert (tmp_path / "memory" / "predictions.csv").read_bytes() == (
        tmp_path / "mmap" / "predictions.csv"
    ).read_bytes()


def test_a_folder_cache_records_the_same_split_and_follows_the_folder(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "xray", per_class=20)
    first = load_dataset("folder", 28, root, channels=1)
    folder = cache_module.cache_root() / f"xray-{cache_module.source_tag(root)}_28px_grey_split0-0.1-0.2"
    assert first.source["cache"] == str(folder) and first.source["storage"] == "memory"
    built = _created(folder)
    again = load_dataset("folder", 28, root, channels=1, storage="mmap")
    assert _created(folder) == built and again.source["files"] == first.source["files"]
    assert again.source["md5"] == first.source["md5"] and again.splits["train"].mapped
    for name in SPLITS:
        assert torch.equal(again.splits[name].images, first.splits[name].images)
    # decoded as before the cache: the file's pixels, resized, as grey
    from medclassify.data.images import decode_training_image, to_channels

    name = first.source["files"]["test"][0]
    expected = to_channels(decode_training_image(root / name, 28)[0][None], 1)
    assert np.array_equal(again.splits["test"].images[:1].numpy(), expected)

    time.sleep(1.1)
    extra = root / "train" / "NORMAL" / "normal_999.png"
    (root / "train" / "NORMAL" / "normal_000.jpg").rename(extra)
    moved = load_dataset("folder", 28, root, channels=1)
    assert _created(folder) != built
    assert "train/NORMAL/normal_999.png" in sum(moved.source["files"].values(), [])
    other_seed = load_dataset("folder", 28, root, channels=1, split_seed=1)
    assert other_seed.source["cache"].endswith("28px_grey_split1-0.1-0.2")
    # another folder of the same name and layout gets a cache of its own: neither rebuilds the other's
    rebuilt = _created(folder)
    twin = write_image_folder(tmp_path / "elsewhere" / "xray", per_class=20)
    assert load_dataset("folder", 28, twin, channels=1).source["cache"] != first.source["cache"]
    assert load_dataset("folder", 28, root, channels=1).source["cache"] == str(folder) and _created(folder) == rebuilt


def test_folder_decoding_runs_in_worker_processes_for_many_files(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "xray", splits=("train", "val", "test"), per_class=6)
    (root / "train" / "NORMAL" / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 1 file"):
        in_process = load_dataset("folder", 28, root, cache_dir=tmp_path / "one")
    monkeypatch.setattr(folders_module, "PROCESS_MIN_FILES", 4)
    calls = []
    real = folders_module.ProcessPoolExecutor

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(folders_module, "ProcessPoolExecutor", counted)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        workers = load_dataset("folder", 28, root, cache_dir=tmp_path / "many")
    assert calls and workers.source["skipped_files"] == ["train/NORMAL/broken.png"]
    for name in SPLITS:
        assert torch.equal(workers.splits[name].images, in_process.splits[name].images)


def test_prefetching_keeps_the_order_raises_the_producers_error_and_stops_early():
    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(prefetched(failing()))
    before = threading.active_count()
    for item in prefetched(iter(range(1000)), depth=2):
        if item == 3:
            break
    assert threading.active_count() == before  # the producer thread ended with the loop


def test_a_memory_mapped_split_is_batched_in_a_background_thread_in_the_same_order(blood_dir):
    mapped = load_dataset("bloodmnist", 28, blood_dir, verify=False, storage="mmap").splits["train"]
    resident = load_dataset("bloodmnist", 28, blood_dir, verify=False, storage="memory").splits["train"]
    stats = compute_normalization(mapped, "none")

    def batches(split):
        loader = BatchLoader(
            split, 32, stats, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(3)
        )
        assert loader.prefetch == split.mapped
        return list(loader)

    for (a, la), (b, lb) in zip(batches(mapped), batches(resident), strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_cache_command_prints_the_cache_and_datasets_lists_it(blood_dir, capsys):
    code, out, err = run_cli(capsys, "cache", "bloodmnist", "--data-dir", blood_dir, "--no-verify")
    assert code == 0, err
    folder = blood_cache(blood_dir)
    assert out.startswith(f"split cache {folder}: ") and "train 160, val 40, test 80 images of 3 x 28 x 28" in out
    code, listed, _ = run_cli(capsys, "datasets", "--data-dir", blood_dir)
    row = next(line for line in listed.splitlines() if line.startswith("bloodmnist "))
    assert row.split()[-2:] == ["28,64", "28"]  # on disk: 28 and 64 px; cached: 28 px
    assert f"{folder}: " in listed and "bloodmnist at 28 px, 3 channel(s)" in listed
    code, _, err = run_cli(capsys, "cache", "--data-dir", blood_dir)
    one_line_error(code, err, "medclassify cache: error: give a dataset name")
    blocked = blood_dir / "a-file"
    blocked.write_text("not a folder")
    code, _, err = run_cli(
        capsys, "cache", "bloodmnist", "--data-dir", blood_dir, "--no-verify", "--cache-dir", blocked / "cache"
    )
    assert code == 2 and err.strip().splitlines() == [
        f"medclassify cache: error: {blocked / 'cache'}: cannot write (Not a directory): no split cache was written "
        "(--cache-dir DIR puts it elsewhere)"
    ]
