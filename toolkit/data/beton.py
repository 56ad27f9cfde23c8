"""Write image collections to FFCV .beton files once, and find them again.

A .beton is keyed by what went into it: the bytes of every source file, the labels, the
stored size, the storage mode and the JPEG quality. Change any of those and a new file is
written; change nothing and the cached one is reused. Each cache entry is a folder

    <cache_dir>/<name>-<key>/images.beton
    <cache_dir>/<name>-<key>/manifest.json   (classes, files, labels, skipped files, ...)

written to temporary names and renamed into place, manifest last, so an interrupted write
never leaves an entry that looks valid.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import multiprocessing
import os
import queue
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.data.ffcv_parts import DatasetWriter, IntField, MemoryAllocator, RGBImageField
from toolkit.data.images import (
    UnreadableImage,
    box_reduction,
    colour_profile,
    load_rgb,
    open_image,
    pixel_hash,
    reduce_image,
    reduced_size,
    rgb_pixels,
)
from toolkit.errors import DataError
from toolkit.progress import progress_bar
from toolkit.runs import file_in_the_way, write_json
from toolkit.worker_pool import default_sigterm

FORMAT_VERSION = 4  # bump whenever the same inputs would be stored differently (2: pixel hashes; 3: colour profiles;
# 4: floating-point grey scaled, not read as black; grey with alpha and 16-bit grey through their profiles)
STORAGE_MODES = ("raw", "jpg")
_OK, _FAILED, _CONVERTED = 0, 1, 2


def default_cache_dir() -> Path:
    """$SCENE_TOOLKIT_CACHE, else ~/.cache/scene-toolkit (XDG_CACHE_HOME respected)."""
    if os.environ.get("SCENE_TOOLKIT_CACHE"):
        return Path(os.environ["SCENE_TOOLKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scene-toolkit"


def cache_folder(cache_dir: Path | str | None) -> Path:
    """Where .beton files are cached: `cache_dir` (a recipe's --cache_dir), else default_cache_dir(); a DataError
    when a file stands where that folder must go."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    blocking = file_in_the_way(folder)
    if blocking is not None:
        named = "--cache_dir" if cache_dir else ("$SCENE_TOOLKIT_CACHE" if os.environ.get("SCENE_TOOLKIT_CACHE")
                                                 else "the default cache folder")
        raise DataError(f"{named} ({folder}) cannot be a folder: {blocking} is a file. Pass --cache_dir=PATH or set "
                        "SCENE_TOOLKIT_CACHE to a folder")
    return folder


def file_digest(path: Path) -> str:
    """A content hash of a file's bytes (byte-identical files share it)."""
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def beton_cache_key(
    relative_files: list[str],
    digests: list[str],
    labels: list[int] | None,
    classes: list[str] | None,
    store_size: int,
    storage: str,
    jpeg_quality: int,
    boxes: list | None = None,
) -> str:
    """A short hash of everything that determines a .beton's contents."""
    recipe = {
        "format": FORMAT_VERSION,
        "files": relative_files,
        "digests": digests,
        "labels": labels,
        "classes": classes,
        "store_size": store_size,
        "storage": storage,
        "jpeg_quality": jpeg_quality if storage == "jpg" else None,
        **({"boxes": [list(b) for b in boxes]} if boxes is not None else {}),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StoredImages:
    """A .beton on disk and the manifest describing it."""

    beton: Path
    manifest: dict

    @property
    def num_samples(self) -> int:
        return self.manifest["num_samples"]

    @property
    def classes(self) -> list[str] | None:
        return self.manifest["classes"]

    @property
    def labels(self) -> np.ndarray | None:
        labels = self.manifest["labels"]
        return None if labels is None else np.asarray(labels, dtype=np.int64)

    @property
    def files(self) -> list[str]:
        """Source files of the stored samples, relative to manifest['root'], in sample order."""
        return self.manifest["files"]

    @property
    def digests(self) -> list[str]:
        return self.manifest["digests"]

    @property
    def pixel_hashes(self) -> list[str]:
        """A hash of each image's decoded RGB pixels: equal for copies, whatever their file bytes."""
        return self.manifest["pixel_hashes"]

    @property
    def store_size(self) -> int:
        return self.manifest["store_size"]

    @property
    def storage(self) -> str:
        return self.manifest["storage"]


class _ImagesToWrite:
    """The indexable dataset ffcv's writer workers read from (inherited by fork, never pickled).

    A file that fails to decode is written as black pixels and flagged in shared memory; the
    caller then rewrites without it, so a bad file can never end up in a finished .beton.
    """

    def __init__(self, files: list[Path], labels: list[int] | None, store_size: int, status, pixel_hashes,
                 boxes: list[tuple[int, ...]] | None = None):
        self.files = files
        self.labels = labels
        self.store_size = store_size
        self.boxes = boxes  # per sample (top, left) of a store_size square cut from the full image, not resized,
        # or (top, left, reduction) from the image reduced by that whole factor first (reduce_image)
        self.status = status  # multiprocessing.Array of int8, one per file
        self.pixel_hashes = pixel_hashes  # multiprocessing.Array of 16 bytes per file

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            image = open_image(self.files[index])
            if image.mode != "RGB" or colour_profile(image)[0]:  # another mode, or colours to go through a profile
                self.status[index] = _CONVERTED
            if self.boxes is not None:
                image = reduce_image(image, box_reduction(self.boxes[index]))
            full = rgb_pixels(image)
            if self.boxes is not None:  # a tile: the pixels as they are, no resampling
                top, left = self.boxes[index][:2]
                full = np.ascontiguousarray(full[top:top + self.store_size, left:left + self.store_size])
                if full.shape[:2] != (self.store_size, self.store_size):
                    raise UnreadableImage(f"{self.files[index]}: smaller than the {self.store_size}px tile")
            self.pixel_hashes[16 * index:16 * (index + 1)] = bytes.fromhex(pixel_hash(full))
            pixels = full if self.boxes is not None else rgb_pixels(Image.fromarray(full), self.store_size)
        except UnreadableImage:
            self.status[index] = _FAILED
            pixels = np.zeros((self.store_size, self.store_size, 3), dtype=np.uint8)
        if self.labels is None:
            return (pixels,)
        return (pixels, self.labels[index])


def _run_worker(errors, work, arguments) -> None:
    default_sigterm()  # not the parent's stop-at-next-step handler (see toolkit.worker_pool)
    try:
        work(*arguments)
    except BaseException as error:  # report and die: the parent stops the other workers
        errors.put(f"{type(error).__name__}: {error}")
        errors.close()
        errors.join_thread()  # the message must leave before the process does
        os._exit(1)


class _SupervisedWriter(DatasetWriter):
    """ffcv's DatasetWriter, except that a worker that dies (disk full, a crash, a kill) stops
    the write with its error instead of leaving the parent waiting forever for its samples."""

    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
        context = multiprocessing.get_context("fork")
        self.num_samples = num_samples
        self.prepare()
        workers = []
        try:
            work_queue = context.Queue()
            for item in queue_content:
                work_queue.put(item)
            for _ in range(self.num_workers):
                work_queue.put(None)
            done = context.Value(ctypes.c_uint64, 0)
            allocations_queue, errors = context.Queue(), context.Queue()
            allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
            arguments = (work_queue, self.metadata_sm, self.metadata_type, self.fields, allocator, done,
                         allocations_queue, *extra_worker_args)
            workers = [context.Process(target=_run_worker, args=(errors, work_fn, arguments), daemon=True)
                       for _ in range(self.num_workers)]
            for worker in workers:
                worker.start()
            allocations, finished, last_report = [], 0, time.monotonic()
            bar = progress_bar(num_samples, "writing .beton", unit="img")
            while finished < len(workers):
                bar.update(done.value - bar.n)
                try:
                    allocations.extend(allocations_queue.get(timeout=0.2))
                    finished += 1
                    continue
                except queue.Empty:
                    pass
                if any(worker.exitcode not in (None, 0) for worker in workers):
                    try:
                        reason = errors.get(timeout=1)
                    except queue.Empty:
                        reason = "a writer process was killed"
                    raise OSError(reason)
                if bar.disable and time.monotonic() - last_report > 10:  # logs without a bar keep a line
                    print(f"  written {done.value}/{num_samples} images", file=sys.stderr, flush=True)
                    last_report = time.monotonic()
            bar.update(num_samples - bar.n)
            bar.close()
            for worker in workers:
                worker.join()
            self.finalize(allocations)
        finally:
            for worker in workers:
                if worker.is_alive():
                    worker.kill()
            self.metadata_sm.close()
            self.metadata_sm.unlink()


def _estimated_bytes(num_images: int, store_size: int, storage: str) -> int:
    pixels = num_images * store_size * store_size * 3
    return pixels if storage == "raw" else pixels // 6  # JPEG q90 of photos: ~1/6 of raw, generously


def _raise_if_disk_full(error: OSError, destination: Path, needed: int) -> None:
    if error.errno == errno.ENOSPC or "No space left" in str(error):
        free = shutil.disk_usage(destination.parent).free
        raise DataError(
            f"disk full while writing {destination}: it needs about {needed / 1e6:.0f} MB and "
            f"{free / 1e6:.0f} MB are free. Free some space or point SCENE_TOOLKIT_CACHE at a larger disk; "
            "nothing partial was kept"
        ) from None


def write_beton(
    destination: Path,
    files: list[Path],
    labels: list[int] | None,
    store_size: int,
    storage: str = "raw",
    jpeg_quality: int = 90,
    num_workers: int = 2,
    boxes: list[tuple[int, ...]] | None = None,
) -> tuple[dict[int, str], list[int], list[str]]:
    """Write images (resized to store_size x store_size) and labels to `destination` atomically.

    Returns ({index: reason} for files that could not be decoded and were left out, [indices of
    files converted to RGB from another colour mode], [decoded-pixel hash of every file, '' for
    the unreadable]). If any file fails to decode, the .beton is rewritten without it, so the
    result holds only good images. With `boxes`, sample i is the store_size square at boxes[i]
    (top, left) of files[i] as it is, not resized (tiles; a file may appear once per tile).
    """
    if storage not in STORAGE_MODES:
        raise DataError(f"storage must be one of {STORAGE_MODES}, got {storage!r}")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    needed = _estimated_bytes(len(files), store_size, storage)
    free = shutil.disk_usage(destination.parent).free
    if needed > free:
        raise DataError(
            f"not enough disk space for {destination}: it needs about {needed / 1e6:.0f} MB and only "
            f"{free / 1e6:.0f} MB are free. Free some space or point SCENE_TOOLKIT_CACHE at a larger disk"
        )
    fields = {"image": RGBImageField(write_mode=storage, jpeg_quality=jpeg_quality)}
    if labels is not None:
        fields["label"] = IntField()
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    context = multiprocessing.get_context("fork")
    status = context.Array(ctypes.c_int8, len(files), lock=False)
    pixel_hashes = context.Array(ctypes.c_uint8, 16 * len(files), lock=False)
    try:
        writer = _SupervisedWriter(str(temporary), fields, num_workers=max(1, min(num_workers, len(files))))
        writer.from_indexed_dataset(_ImagesToWrite(files, labels, store_size, status, pixel_hashes, boxes),
                                    chunksize=64)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        _raise_if_disk_full(error, destination, needed)
        raise DataError(f"writing {destination} failed: {error}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    failed = [index for index, code in enumerate(status) if code == _FAILED]
    converted = [index for index, code in enumerate(status) if code == _CONVERTED]
    hashes = bytes(pixel_hashes)
    hashes = [hashes[16 * i:16 * (i + 1)].hex() for i in range(len(files))]
    if failed:
        temporary.unlink(missing_ok=True)
        keep = [index for index in range(len(files)) if index not in set(failed)]
        reasons = {}
        for index in failed:
            try:
                pixels = load_rgb(files[index])
                small = boxes is not None and \
                    min(reduced_size(side, box_reduction(boxes[index])) for side in pixels.shape[:2]) < store_size
                reasons[index] = f"smaller than the {store_size}px tile" if small else "failed to decode during writing"
            except UnreadableImage as error:
                reasons[index] = str(error).removeprefix(f"{files[index]}: ")
        if not keep:
            raise DataError(none_stored_message(files, reasons, tiles=boxes is not None))
        inner_failed, inner_converted, inner_hashes = write_beton(
            destination, [files[i] for i in keep], None if labels is None else [labels[i] for i in keep],
            store_size, storage, jpeg_quality, num_workers, None if boxes is None else [boxes[i] for i in keep])
        # map the inner call's indices (into `keep`) back to ours
        reasons.update({keep[index]: reason for index, reason in inner_failed.items()})
        hashes = [""] * len(files)
        for position, index in enumerate(keep):
            hashes[index] = inner_hashes[position]
        return reasons, [keep[index] for index in inner_converted], hashes
    os.replace(temporary, destination)
    return {}, converted, hashes


def none_stored_message(files: list, reasons: dict[int, str], tiles: bool) -> str:
    """Why not one of `files` could be stored (reasons: index -> why), each reason once with how many images it
    stopped and one of them, and what to do."""
    by_reason: dict[str, dict[Path, None]] = {}  # each reason's images, once each, in order
    for index, reason in reasons.items():
        by_reason.setdefault(reason, {})[files[index]] = None
    said = "; ".join(f"{len(stopped)} {reason} (e.g. {next(iter(stopped))})" for reason, stopped in by_reason.items())
    fix = " Lower --tile_size to the smallest image side at most, or add larger images." \
        if tiles and any(reason.startswith("smaller than") for reason in by_reason) else ""
    return f"none of the {len(set(files))} images could be stored: {said}.{fix}"


def load_stored_images(entry: Path) -> StoredImages | None:
    """A complete cache entry, or None when it is missing or was left half-written."""
    manifest_path, beton = entry / "manifest.json", entry / "images.beton"
    if not manifest_path.is_file() or not beton.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("format") != FORMAT_VERSION or beton.stat().st_size != manifest.get("beton_bytes"):
        return None
    return StoredImages(beton=beton, manifest=manifest)


def conflicting_duplicates(digests: list[str], labels: list[int]) -> set[int]:
    """Indices of identical images (same hash) that carry different labels (no way to know which is right)."""
    labels_by_digest: dict[str, set[int]] = {}
    for digest, label in zip(digests, labels):
        labels_by_digest.setdefault(digest, set()).add(label)
    return {index for index, digest in enumerate(digests) if len(labels_by_digest[digest]) > 1}


def cached_beton(
    name: str,
    root: Path,
    files: list[Path],
    labels: list[int] | None,
    classes: list[str] | None,
    store_size: int,
    storage: str = "raw",
    jpeg_quality: int = 90,
    cache_dir: Path | None = None,
    num_workers: int = 2,
    log=print,
    boxes: list[tuple[int, ...]] | None = None,
) -> StoredImages:
    """The .beton for these files at this size and storage mode: reused if cached, else written.

    `files` are absolute paths below `root`; the manifest stores them relative to it. Files
    that cannot be decoded are skipped and listed (with the reason) in manifest['skipped'].
    """
    root = Path(root).resolve()
    cache_dir = cache_folder(cache_dir)
    relative = [Path(file).resolve().relative_to(root).as_posix() for file in files]
    digests = [file_digest(file) for file in files]
    key = beton_cache_key(relative, digests, labels, classes, store_size, storage, jpeg_quality, boxes)
    entry = cache_dir / f"{name}-{key}"
    unit = "images" if boxes is None else "tiles"  # what a sample is: with boxes, images are cut into tiles
    stored = load_stored_images(entry)
    if stored is not None:
        log(f"[data] reusing {stored.beton} ({stored.num_samples} {unit}, {storage} at {store_size}px)")
        return stored

    of_images = "" if boxes is None else f" of {len(set(relative))} images"
    log(f"[data] writing {len(files)} {unit}{of_images} from {root} to {entry} ({storage} at {store_size}px) ...")
    started = time.perf_counter()
    entry.mkdir(parents=True, exist_ok=True)
    beton = entry / "images.beton"
    skipped, converted, pixel_hashes = write_beton(beton, files, labels, store_size, storage, jpeg_quality,
                                                   num_workers, boxes)
    kept = [index for index in range(len(files)) if index not in skipped]
    manifest = {
        "format": FORMAT_VERSION,
        "key": key,
        "root": str(root),
        "classes": classes,
        "files": [relative[i] for i in kept],
        "digests": [digests[i] for i in kept],
        "pixel_hashes": [pixel_hashes[i] for i in kept],
        "boxes": None if boxes is None else [list(boxes[i]) for i in kept],
        "labels": None if labels is None else [int(labels[i]) for i in kept],
        "store_size": store_size,
        "storage": storage,
        "jpeg_quality": jpeg_quality,
        "num_samples": len(kept),
        "skipped": [{"file": relative[i], "reason": skipped[i]} for i in sorted(skipped)],
        "converted_to_rgb": [relative[i] for i in converted],
        "beton_bytes": beton.stat().st_size,
        "seconds_to_write": round(time.perf_counter() - started, 2),
    }
    write_json(entry / "manifest.json", manifest)
    skipped_files = list(dict.fromkeys((item["file"], item["reason"]) for item in manifest["skipped"]))  # a file's
    for file, reason in skipped_files[:20]:  # tiles share its reason
        log(f"[data] skipped {file}: {reason}")
    if len(skipped_files) > 20:
        log(f"[data] ... and {len(skipped_files) - 20} more skipped (listed in {entry / 'manifest.json'})")
    if converted:
        from_files = "" if boxes is None else f" of {len(set(manifest['converted_to_rgb']))} images"
        log(f"[data] converted {len(converted)} {unit}{from_files} to sRGB from other colour modes or profiles "
            f"(e.g. {manifest['converted_to_rgb'][0]})")
    log(f"[data] wrote {len(kept)} {unit} in {manifest['seconds_to_write']:.1f}s"
        + (f"; skipped {len(skipped)} (listed above)" if skipped else ""))
    return StoredImages(beton=beton, manifest=manifest)
