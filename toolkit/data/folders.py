"""Finding images on disk: ImageFolder roots, the Intel layout, unlabeled pools.

Layouts understood:
    <root>/<class>/**/*.jpg               any ImageFolder-style root
    <root>/seg_train/<class>/*.jpg        the Intel scene dataset ...
    <root>/seg_train/seg_train/<class>/   ... with or without Kaggle's doubled folder names
    <root>/seg_pred/seg_pred/*.jpg        an unlabeled pool
Classes are the sorted folder names; labels are indices into that list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

INTEL_SPLITS = ("seg_train", "seg_test", "seg_pred")

INTEL_DOWNLOAD_HINT = (
    "Get the Intel Image Classification data from Kaggle "
    "(kaggle datasets download -d puneet6060/intel-image-classification) and unzip it into data/intel, "
    "or pass --data=PATH to any folder of <class>/<image> files."
)


@dataclass(frozen=True)
class LabeledImages:
    """A labeled image collection: parallel lists of files and class indices."""

    root: Path
    classes: list[str]
    files: list[Path]  # absolute paths, sorted by (class, relative path)
    labels: list[int]
    empty_classes: list[str]  # class folders that hold no image

    def relative_files(self) -> list[str]:
        return [file.relative_to(self.root).as_posix() for file in self.files]

    def counts(self) -> dict[str, int]:
        totals = {name: 0 for name in self.classes}
        for label in self.labels:
            totals[self.classes[label]] += 1
        return totals


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_image_files(folder: Path) -> list[Path]:
    """Every image file below a folder, recursively, in a stable order."""
    return sorted(path for path in folder.rglob("*") if is_image_file(path))


def _unwrap_doubled(folder: Path) -> Path:
    """Kaggle's zip nests each split in a folder of the same name: seg_train/seg_train/."""
    inner = folder / folder.name
    return inner if inner.is_dir() else folder


def find_split(data_root: Path | str, split: str) -> Path | None:
    """The folder holding a split's class folders (or images), or None if the split is absent.

    `split` is a name below the root (seg_train, seg_test, ...). A root that directly holds class
    folders is its own training split when asked for "seg_train" or "train".
    """
    root = Path(data_root)
    if not root.is_dir():
        return None
    candidate = root / split
    if candidate.is_dir():
        return _unwrap_doubled(candidate)
    if root.name == split:
        return _unwrap_doubled(root)
    has_split_folders = any((root / name).is_dir() for name in INTEL_SPLITS)
    if split in ("seg_train", "train") and not has_split_folders and _class_folders(root):
        return root
    return None


def _class_folders(root: Path) -> list[Path]:
    return sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))


def first_images(folder: Path, count: int) -> list[Path]:
    """Up to `count` images below a folder, the first met: whether a folder holds images, without listing them all."""
    found = []
    for path in folder.rglob("*"):
        if is_image_file(path):
            found.append(path)
            if len(found) == count:
                break
    return found


def decodable_images(folder: Path, count: int) -> tuple[list[Path], int, str]:
    """Up to `count` images below a folder that decode, the first met; how many image files were tried; and the first
    failure's reason ('' if none failed). A folder whose files no decoder reads is refused before a run starts, at the
    cost of `count` decodes where its first images are fine (every file, in the order met, where none is)."""
    from toolkit.data.images import UnreadableImage, open_image

    found, tried, failure = [], 0, ""
    for path in folder.rglob("*"):
        if not is_image_file(path):
            continue
        tried += 1
        try:
            open_image(path).close()
        except UnreadableImage as error:
            failure = failure or str(error)
            continue
        found.append(path)
        if len(found) == count:
            break
    return found, tried, failure


def check_labeled_folder(root: Path | str, classes: list[str] | None = None,
                         classes_from: str = "the model was trained on") -> list[str]:
    """The class folder names of <root>/<class>/**/<image>, after checking that the folder is there, holds class
    folders and, with `classes` given, exactly those (`classes_from` says whose they are); quick (the images are
    not listed)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist. {INTEL_DOWNLOAD_HINT}")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder of <class>/<image> files")
    found = [folder.name for folder in _class_folders(root)]
    if not found:
        what = "images but no class folders" if first_images(root, 1) else "no class folders"
        raise DataError(f"{root} holds {what}: a labeled dataset needs <root>/<class>/<image> files")
    if classes is not None and sorted(classes) != found:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise DataError(
            f"{root} has classes {found}, but {classes_from} {list(classes)} "
            f"(missing: {missing or 'none'}, unexpected: {extra or 'none'}); "
            "use a folder with the same class folders"
        )
    return found


def scan_labeled_folder(root: Path | str, classes: list[str] | None = None) -> LabeledImages:
    """Scan <root>/<class>/**/<image>. With `classes` given, the folder must hold exactly those."""
    root = Path(root)
    found = check_labeled_folder(root, classes)
    class_list = list(classes) if classes is not None else found
    files: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for label, name in enumerate(class_list):
        images = list_image_files(root / name)
        if not images:
            empty.append(name)
        files += [image.resolve() for image in images]
        labels += [label] * len(images)
    if not files:
        raise DataError(f"{root} has class folders {found} but no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return LabeledImages(root=root.resolve(), classes=class_list, files=files, labels=labels, empty_classes=empty)


def find_classification_splits(root: Path, train_split: str, test_split: str,
                               test_required: bool) -> tuple[Path, Path | None]:
    """The training folder and the test folder (None when absent and not `test_required`) below a data root,
    each checked to hold class folders, the same ones, with images of at least two classes for training."""
    train_folder = find_split(root, train_split)
    if train_folder is None:
        raise DataError(f"no '{train_split}' split under {root}: expected {root}/{train_split}/<class>/<image> "
                        f"or {root}/<class>/<image>. {INTEL_DOWNLOAD_HINT}")
    classes = check_labeled_folder(train_folder)
    first_decodable = {name: decodable_images(train_folder / name, 1) for name in classes}  # each folder walked once
    with_images = [name for name in classes if first_decodable[name][1]]  # image files tried: there are some
    if len(with_images) < 2:
        raise DataError(f"a classifier needs images of two classes or more; {train_folder} has images of "
                        f"{len(with_images)} ({', '.join(with_images) or 'none'}): add a folder of images per class")
    for name in with_images:
        decodable, tried, failure = first_decodable[name]
        if not decodable:
            raise DataError(f"none of the {tried} image files of class '{name}' in {train_folder} can be decoded "
                            f"(the first: {failure}): replace them, or remove the class folder; `toolkit data check "
                            f"{train_folder}` lists every unreadable file")
    test_folder = find_split(root, test_split) if test_split else None
    if test_folder is None and test_required:
        raise DataError(f"no test folder '{test_split}' under {root}: name one that is there, or pass "
                        "--test_split=none to hold out part of the training images as the test set")
    if test_folder is not None:
        check_labeled_folder(test_folder, classes, classes_from=f"the training folder {train_folder} has")
    return train_folder, test_folder


def find_pool_folder(root: Path, pool_split: str) -> tuple[Path, str]:
    """The folder of images to denoise below a data root and its split name: `pool_split`, or for the default
    seg_pred, when absent, seg_train (its class folders' labels ignored); checked to hold images."""
    pool, folder = pool_split, find_split(root, pool_split)
    if folder is None and pool_split == "seg_pred":
        pool, folder = "seg_train", find_split(root, "seg_train")
    if folder is None:
        raise DataError(f"no '{pool_split}' folder under {root}: pass --pool_split=NAME of a folder of images "
                        "(class subfolders are fine; their labels are ignored)")
    decodable, tried, failure = decodable_images(folder, 1)
    if not tried:
        raise DataError(f"{folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    if not decodable:
        raise DataError(f"none of the {tried} image files in {folder} can be decoded (the first: {failure}): replace "
                        f"them; `toolkit data check {folder}` lists every unreadable file")
    return folder, pool


def scan_unlabeled_folder(root: Path | str) -> list[Path]:
    """Every image below a folder (class folders, if any, are ignored): a pool for denoising."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    files = [path.resolve() for path in list_image_files(_unwrap_doubled(root))]
    if not files:
        raise DataError(f"{root} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files
