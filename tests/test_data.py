"""Scanning folders, splitting, writing and reading .beton files, device transforms."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import Image

from toolkit.data.augment import normalize, random_flip, step_generator
from toolkit.data.beton import beton_cache_key, cached_beton, file_digest, load_stored_images
from toolkit.data.classification import HOLDOUT_SEED, load_classification_data
from toolkit.data.folders import find_split, scan_labeled_folder, scan_unlabeled_folder
from toolkit.data.images import load_rgb
from toolkit.data.loaders import make_loader, shard_indices
from toolkit.data.settings import ClassificationDataSettings
from toolkit.data.split import stratified_split
from toolkit.errors import DataError


def write_image(path, size=(20, 20), color=(10, 20, 30), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    pixels = np.clip(np.array(color) + rng.integers(-10, 10, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


def make_folder(root, counts: dict[str, int], size=(20, 20)):
    for name, count in counts.items():
        for index in range(count):
            write_image(root / name / f"{index}.png", size, color=(40 * len(name), 100, 200 - 20 * index % 200))
    return root


# ---- folders ----------------------------------------------------------------------------------------

def test_scan_sorted_classes_and_labels(tmp_path):
    root = make_folder(tmp_path / "set", {"sea": 2, "forest": 3})
    (root / "forest" / "notes.txt").write_text("not an image")
    listing = scan_labeled_folder(root)
    assert listing.classes == ["forest", "sea"]
    assert listing.labels == [0, 0, 0, 1, 1]
    assert [f.name for f in listing.files] == ["0.png", "1.png", "2.png", "0.png", "1.png"]
    assert listing.counts() == {"forest": 3, "sea": 2}


def test_intel_layouts_with_and_without_doubled_folders(tmp_path):
    make_folder(tmp_path / "a" / "seg_train" / "seg_train", {"x": 1, "y": 1})
    make_folder(tmp_path / "a" / "seg_test", {"x": 1, "y": 1})
    assert find_split(tmp_path / "a", "seg_train") == tmp_path / "a" / "seg_train" / "seg_train"
    assert find_split(tmp_path / "a", "seg_test") == tmp_path / "a" / "seg_test"
    assert find_split(tmp_path / "a", "seg_pred") is None
    plain = make_folder(tmp_path / "plain", {"x": 1, "y": 1})  # an ImageFolder root is its own train split
    assert find_split(plain, "seg_train") == plain
    assert find_split(plain, "seg_test") is None
    write_image(tmp_path / "pool" / "seg_pred" / "seg_pred" / "1.jpg")
    assert len(scan_unlabeled_folder(tmp_path / "pool" / "seg_pred")) == 1


def test_scan_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="does not exist.*kaggle"):
        scan_labeled_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        scan_labeled_folder(tmp_path / "empty")
    (tmp_path / "noimages" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files"):
        scan_labeled_folder(tmp_path / "noimages")
    root = make_folder(tmp_path / "set", {"a": 1, "b": 1})
    (root / "c").mkdir()
    assert scan_labeled_folder(root).empty_classes == ["c"]
    with pytest.raises(DataError, match=r"missing: \['z'\], unexpected: \['c'\]"):
        scan_labeled_folder(root, classes=["a", "b", "z"])


# ---- split ------------------------------------------------------------------------------------------

def test_stratified_split_is_exact_seeded_and_disjoint():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    keep, held = stratified_split(labels, 0.1, seed=1)
    assert np.bincount(labels[held]).tolist() == [5, 3, 2]
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == 100
    assert np.array_equal(held, stratified_split(labels, 0.1, seed=1)[1])
    assert not np.array_equal(held, stratified_split(labels, 0.1, seed=2)[1])


def test_split_keeps_duplicate_groups_together():
    labels = np.array([0] * 10 + [1] * 10)
    groups = [f"g{i}" for i in range(20)]
    groups[1] = groups[2] = groups[15] = "dup"  # one image copied three times, under both labels
    for seed in range(20):
        keep, held = stratified_split(labels, 0.3, seed, groups)
        sides = {i in held for i in (1, 2, 15)}
        assert len(sides) == 1, "copies of one image ended up on both sides of the split"


# ---- .beton files -----------------------------------------------------------------------------------

def test_beton_round_trip_raw_pixels_and_labels(tmp_path, cache_dir):
    root = make_folder(tmp_path / "set", {"a": 3, "b": 4}, size=(30, 20))
    listing = scan_labeled_folder(root)
    stored = cached_beton("rt", listing.root, listing.files, listing.labels, listing.classes, store_size=16,
                          storage="raw", cache_dir=cache_dir, num_workers=1)
    assert stored.num_samples == 7 and stored.classes == ["a", "b"]
    loader = make_loader(stored, np.arange(7), batch_size=7, train=False, image_size=16,
                         device=torch.device("cpu"), num_workers=1)
    images, labels = next(iter(loader))
    assert images.shape == (7, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == listing.labels
    for image, file in zip(images, listing.files):  # exactly the pixels of PIL's resize, as the study had
        assert np.array_equal(image.permute(1, 2, 0).numpy(), load_rgb(file, 16))


def test_loaders_of_different_files_share_one_compiled_reader_and_each_reads_its_own_pixels(tmp_path, cache_dir):
    """FFCV compiles its page-cache reader per loader (0.1-0.2 s each); the toolkit compiles it once per process,
    which is right only because the reader depends on its arguments alone: two files, two loaders, each exact."""
    loaders, listings = [], []
    for name, size in (("one", (30, 20)), ("two", (24, 24))):
        root = make_folder(tmp_path / name, {"a": 2, "b": 3}, size=size)
        listing = scan_labeled_folder(root)
        stored = cached_beton(name, listing.root, listing.files, listing.labels, listing.classes, store_size=12,
                              storage="raw", cache_dir=cache_dir, num_workers=1)
        loaders.append(make_loader(stored, np.arange(5), batch_size=5, train=False, image_size=12,
                                   device=torch.device("cpu"), num_workers=1))
        listings.append(listing)
    readers = [loader.memory_manager.compile_reader() for loader in loaders]
    assert readers[0] is readers[1]
    for loader, listing in zip(loaders, listings):
        images, labels = next(iter(loader))
        assert labels.tolist() == listing.labels
        for image, file in zip(images, listing.files):
            assert np.array_equal(image.permute(1, 2, 0).numpy(), load_rgb(file, 12))


def test_beton_jpg_storage_is_close_and_resizes_on_load(tmp_path, cache_dir):
    root = make_folder(tmp_path / "set", {"a": 2, "b": 2}, size=(40, 40))
    listing = scan_labeled_folder(root)
    stored = cached_beton("jpg", listing.root, listing.files, listing.labels, listing.classes, store_size=40,
                          storage="jpg", cache_dir=cache_dir, num_workers=1)
    loader = make_loader(stored, np.arange(4), 4, train=False, image_size=20, device=torch.device("cpu"),
                         num_workers=1)
    images, _ = next(iter(loader))
    assert images.shape == (4, 3, 20, 20)
    reference = np.stack([load_rgb(f, 20) for f in listing.files]).astype(float)
    assert np.abs(images.permute(0, 2, 3, 1).numpy() - reference).mean() < 6  # JPEG + resize: close, not equal


def test_cache_key_tracks_content_size_and_storage(tmp_path, cache_dir):
    root = make_folder(tmp_path / "set", {"a": 2, "b": 2})
    listing = scan_labeled_folder(root)
    files, labels = listing.relative_files(), listing.labels
    digests = [file_digest(f) for f in listing.files]
    key = beton_cache_key(files, digests, labels, listing.classes, 16, "raw", 90)
    assert key == beton_cache_key(files, digests, labels, listing.classes, 16, "raw", 90)
    assert key != beton_cache_key(files, digests, labels, listing.classes, 24, "raw", 90)
    assert key != beton_cache_key(files, digests, labels, listing.classes, 16, "jpg", 90)
    assert key != beton_cache_key(files, digests, [1, 0, 1, 0], listing.classes, 16, "raw", 90)

    first = cached_beton("key", listing.root, listing.files, labels, listing.classes, 16, cache_dir=cache_dir)
    again = cached_beton("key", listing.root, listing.files, labels, listing.classes, 16, cache_dir=cache_dir)
    assert first.beton == again.beton
    write_image(listing.files[0], color=(250, 0, 0))  # change one source file: a new .beton
    changed = cached_beton("key", listing.root, listing.files, labels, listing.classes, 16, cache_dir=cache_dir)
    assert changed.beton != first.beton


def test_interrupted_write_is_never_mistaken_for_a_cache_hit(tmp_path, cache_dir):
    root = make_folder(tmp_path / "set", {"a": 2, "b": 2})
    listing = scan_labeled_folder(root)
    stored = cached_beton("atomic", listing.root, listing.files, listing.labels, listing.classes, 16,
                          cache_dir=cache_dir)
    entry = stored.beton.parent
    assert not [p for p in entry.iterdir() if p.name.startswith(".")]  # no temporary files left behind
    (entry / "manifest.json").unlink()  # as if killed after the .beton, before the manifest
    assert load_stored_images(entry) is None
    with open(stored.beton, "r+b") as handle:  # a truncated .beton with a manifest: not valid either
        handle.truncate(100)
    (entry / "manifest.json").write_text(json.dumps({**stored.manifest}))
    assert load_stored_images(entry) is None
    rewritten = cached_beton("atomic", listing.root, listing.files, listing.labels, listing.classes, 16,
                             cache_dir=cache_dir)
    assert rewritten.beton.stat().st_size == stored.manifest["beton_bytes"]


def test_undecodable_files_are_skipped_and_listed(tmp_path, cache_dir):
    root = make_folder(tmp_path / "set", {"a": 3, "b": 3})
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "b" / "empty.png").write_bytes(b"")
    listing = scan_labeled_folder(root)
    stored = cached_beton("bad", listing.root, listing.files, listing.labels, listing.classes, 16,
                          cache_dir=cache_dir, num_workers=2)
    assert stored.num_samples == 6
    skipped = {item["file"]: item["reason"] for item in stored.manifest["skipped"]}
    assert set(skipped) == {"a/broken.jpg", "b/empty.png"}
    assert "empty file" in skipped["b/empty.png"]
    assert stored.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert "a/broken.jpg" not in stored.files


# ---- splits from a data folder ------------------------------------------------------------------------

def test_classification_data_holds_out_a_fixed_test_set(tiny_intel, cache_dir):
    settings = ClassificationDataSettings(data=str(tiny_intel), test_split="none", val_fraction=0.25,
                                          holdout_fraction=0.25, image_size=16)
    first = load_classification_data(settings, 0, cache_dir=cache_dir, log=lambda *_: None)
    other = load_classification_data(settings, 1, cache_dir=cache_dir, log=lambda *_: None)
    assert first.test_name == "holdout" and len(first.test_indices) == 24  # 6 classes x round(0.25 * 16)
    assert np.array_equal(first.test_indices, other.test_indices)  # held-out images never depend on the seed
    assert not np.array_equal(first.val_indices, other.val_indices)
    parts = [first.train_indices, first.val_indices, first.test_indices]
    assert sum(map(len, parts)) == 96 and len(np.unique(np.concatenate(parts))) == 96
    with_test = load_classification_data(dataclasses.replace(settings, test_split="seg_test"), 0,
                                         cache_dir=cache_dir, log=lambda *_: None)
    assert with_test.test_name == "seg_test" and len(with_test.test_indices) == 36
    assert HOLDOUT_SEED  # the constant exists and is documented in classification.py
    # a test folder named on purpose must be there (only the default falls back to holding out); a subset too
    # small to give each class an image is said as such, not as a small folder
    with pytest.raises(DataError, match="no test folder 'seg_tset' under .*--test_split=none to hold out"):
        load_classification_data(dataclasses.replace(settings, test_split="seg_tset"), 0, cache_dir=cache_dir,
                                 log=lambda *_: None)
    with pytest.raises(DataError, match=r"--max_train_images=2 leaves no training images .* each of the 6 classes"):
        load_classification_data(dataclasses.replace(settings, max_train_images=2), 0, cache_dir=cache_dir,
                                 log=lambda *_: None)


def test_missing_data_folder_is_an_error_unless_it_is_the_default(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_classification_data(ClassificationDataSettings(data=str(tmp_path / "nope")), 0, log=lambda *_: None)


# ---- device transforms ------------------------------------------------------------------------------

def test_flip_is_a_function_of_seed_and_step():
    images = torch.arange(2 * 3 * 2 * 4, dtype=torch.uint8).view(2, 3, 2, 4).repeat(8, 1, 1, 1)
    first = random_flip(images, step_generator(images.device, 0, 5))
    assert torch.equal(first, random_flip(images, step_generator(images.device, 0, 5)))
    assert not torch.equal(first, random_flip(images, step_generator(images.device, 0, 6)))
    for original, out in zip(images, first):  # every image is itself or its mirror
        assert torch.equal(out, original) or torch.equal(out, original.flip(2))
    assert 0 < sum(not torch.equal(o, i) for o, i in zip(first, images)) < len(images)


def test_normalize_maps_pixels_to_the_study_range():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out = normalize(images, (0.5,) * 3, (0.5,) * 3)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))
    assert out.dtype == torch.float32


def test_shards_cover_the_set_exactly_once():
    indices = np.arange(11)
    shards = [shard_indices(indices, rank, 3) for rank in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(11))


def test_ffcv_leaves_pytorch_threads_as_they_were_on_import_and_in_its_loaders(tmp_path, cache_dir):
    """FFCV's compiler set PyTorch's threads to 1 on import and to a loader's workers when it is made or iterated:
    a command that imported FFCV scored on one core. PyTorch's threads now stay what they were."""
    import sys

    probe = "import torch; torch.set_num_threads(3); import toolkit.data.ffcv_parts; print(torch.get_num_threads())"
    result = run_script([sys.executable, "-c", probe])
    assert result.returncode == 0 and result.stdout.split()[-1] == "3", result.stderr[-2000:]
    root = make_folder(tmp_path / "set", {"a": 2, "b": 2}, size=(20, 20))
    listing = scan_labeled_folder(root)
    stored = cached_beton("threads", listing.root, listing.files, listing.labels, listing.classes, store_size=16,
                          storage="raw", cache_dir=cache_dir, num_workers=1)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        loader = make_loader(stored, np.arange(4), batch_size=2, train=True, image_size=16,
                             device=torch.device("cpu"), num_workers=1)
        assert len(list(loader)) == 2 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_ffcv_import_compiles_numba_typed_dicts_once_per_machine_not_per_process(tmp_path):
    """Importing FFCV compiles numba's typed-dict functions; the toolkit turns numba's disk cache on for them
    first, so the second process loads them instead of compiling (seconds per training process)."""
    import sys

    probe = ("import numba.typed.typeddict as typed_dict, toolkit.data.ffcv_parts; "
             "stats = [typed_dict._make_dict.stats, typed_dict._setitem.stats]; "
             "print(sum(sum(s.cache_hits.values()) for s in stats), sum(sum(s.cache_misses.values()) for s in stats))")
    counts = []
    for _ in range(2):
        result = run_script([sys.executable, "-c", probe], env={"NUMBA_CACHE_DIR": str(tmp_path / "numba")})
        assert result.returncode == 0, result.stderr[-2000:]
        counts.append(tuple(int(n) for n in result.stdout.split()))
    assert counts == [(0, 2), (2, 0)]  # first process: compiled both, then stored; second: loaded both
    assert any((tmp_path / "numba").rglob("*.nbc"))
