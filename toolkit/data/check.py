"""`toolkit data check ROOT`: what is wrong with an image collection, before it breaks a run.

Per split and class: counts; files that cannot be decoded (truncated, empty, not an image);
files whose content does not match their extension; colour modes other than RGB; colour profiles other than sRGB
(converted through) and ones that cannot be used (ignored); the size
distribution and images smaller than the target size; exact duplicates by decoded pixels,
within a split, across splits, and duplicates that carry different labels; empty class folders;
class lists that differ between splits. Decoding goes through the same `open_image` as
preprocessing, so a file judged good here is written, and one judged bad is skipped, there.

Only problems that would stop training make the exit status non-zero (no images at all, a split
with no class folder, class lists that differ between train and test); everything else is a
warning that preprocessing handles (conversion, skipping, optional duplicate dropping).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from toolkit.data.folders import IMAGE_EXTENSIONS, INTEL_SPLITS, find_split, is_image_file
from toolkit.data.images import (
    UnreadableImage,
    colour_profile,
    extension_matches_format,
    open_image,
    pixel_hash,
    to_rgb,
)
from toolkit.errors import DataError
from toolkit.progress import tracked
from toolkit.runs import write_json
from toolkit.worker_pool import forked_pool


def inspect_file(path: Path) -> dict:
    """Everything the doctor wants to know about one file (never raises for a bad image)."""
    record = {"file": str(path)}
    try:
        image = open_image(path)
    except UnreadableImage as error:
        record["unreadable"] = str(error).removeprefix(f"{path}: ")
        return record
    record.update(format=image.format, mode=image.mode, width=image.width, height=image.height,
                  extension_ok=extension_matches_format(path, image.format))
    description, problem = colour_profile(image)
    if description:
        record["colour_profile"] = description
    if problem:
        record["unused_profile"] = problem
    record["pixel_hash"] = pixel_hash(np.asarray(to_rgb(image)))  # as preprocessing and predict hash them
    return record


def _split_folders(root: Path) -> dict[str, Path]:
    """{split: folder}: the Intel splits present, or the root itself as a single labeled split."""
    found = {split: find_split(root, split) for split in INTEL_SPLITS}
    found = {split: folder for split, folder in found.items() if folder is not None}
    if not found and root.is_dir():
        found = {"all": root}
    return found


def _labeled_files(folder: Path) -> tuple[list[tuple[Path, str | None]], list[str], list[str]]:
    """(file, class or None) pairs, class folders, and empty class folders of one split."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    pairs: list[tuple[Path, str | None]] = [(p, None) for p in sorted(folder.iterdir()) if is_image_file(p)]
    empty = []
    for name in classes:
        files = sorted(p for p in (folder / name).rglob("*") if is_image_file(p))
        if not files:
            empty.append(name)
        pairs += [(file, name) for file in files]
    return pairs, classes, empty


def check_dataset(root: Path | str, image_size: int = 80, workers: int = 2) -> dict:
    """The full report as a dict (see module docstring); raises DataError only if root is unusable."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    splits = _split_folders(root)
    report: dict = {"root": str(root), "image_size": image_size, "splits": {}, "errors": [], "warnings": []}
    everything: list[tuple[str, str | None, Path]] = []
    class_lists = {}
    for split, folder in splits.items():
        pairs, classes, empty = _labeled_files(folder)
        class_lists[split] = classes
        report["splits"][split] = {"folder": str(folder), "classes": classes, "empty_classes": empty}
        for name in empty:
            report["warnings"].append(f"{split}: class folder '{name}' holds no images")
        if split != "seg_pred" and not classes:
            report["errors"].append(f"{split}: no class folders in {folder} (expected {folder}/<class>/<image>)")
        everything += [(split, label, file) for file, label in pairs]
        others = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS
                  and not p.name.startswith(".")]
        if others:
            report["warnings"].append(f"{split}: {len(others)} non-image files ignored (e.g. {others[0].name})")

    with forked_pool(workers) as pool:  # a bar with an ETA: a large collection takes minutes to decode
        records = list(tracked(pool.imap(inspect_file, [file for _, _, file in everything], chunksize=64),
                               len(everything), "checking images", "img"))
    for (split, label, _), record in zip(everything, records):
        record["split"], record["class"] = split, label

    for split in splits:
        mine = [r for r in records if r["split"] == split]
        readable = [r for r in mine if "unreadable" not in r]
        counts = Counter(r["class"] for r in readable if r["class"] is not None)
        sizes = Counter((r["width"], r["height"]) for r in readable)
        summary = report["splits"][split]
        summary.update(
            images=len(readable), files=len(mine),
            per_class={name: counts.get(name, 0) for name in summary["classes"]},
            unreadable=[{"file": r["file"], "reason": r["unreadable"]} for r in mine if "unreadable" in r],
            extension_mismatch=[{"file": r["file"], "format": r["format"]} for r in readable if not r["extension_ok"]],
            non_rgb=dict(Counter(r["mode"] for r in readable if r["mode"] != "RGB")),
            non_rgb_examples=[r["file"] for r in readable if r["mode"] != "RGB"][:10],
            colour_profiles=dict(Counter(r["colour_profile"] for r in readable if "colour_profile" in r)),
            unused_profiles=[{"file": r["file"], "reason": r["unused_profile"]} for r in readable
                             if "unused_profile" in r],
            sizes={f"{w}x{h}": n for (w, h), n in sizes.most_common(10)},
            distinct_sizes=len(sizes),
            smaller_than_image_size=[r["file"] for r in readable if min(r["width"], r["height"]) < image_size],
        )
        if summary["unreadable"]:
            report["warnings"].append(f"{split}: {len(summary['unreadable'])} files cannot be decoded and will be "
                                      "skipped")
        if summary["extension_mismatch"]:
            report["warnings"].append(f"{split}: {len(summary['extension_mismatch'])} files have an extension that "
                                      "does not match their content")
        if summary["non_rgb"]:
            report["warnings"].append(f"{split}: {sum(summary['non_rgb'].values())} images are not RGB "
                                      f"({summary['non_rgb']}); they will be converted")
        if summary["colour_profiles"]:
            report["warnings"].append(f"{split}: {sum(summary['colour_profiles'].values())} images carry colour "
                                      f"profiles other than sRGB ({summary['colour_profiles']}); their colours are "
                                      "converted to sRGB through them when read")
        if summary["unused_profiles"]:
            first = summary["unused_profiles"][0]
            report["warnings"].append(f"{split}: {len(summary['unused_profiles'])} images carry a colour profile that "
                                      f"cannot be used (e.g. {first['file']}: {first['reason']}); their pixels are "
                                      "read as sRGB")
        if summary["smaller_than_image_size"]:
            report["warnings"].append(f"{split}: {len(summary['smaller_than_image_size'])} images are smaller than "
                                      f"{image_size}px on a side and will be upscaled")
        if split != "seg_pred" and not readable:
            report["errors"].append(f"{split}: no readable images")
        elif split == "seg_train" and len([name for name, count in counts.items() if count]) == 1:
            report["errors"].append(f"{split}: images of one class only ({next(iter(counts))}); a classifier needs "
                                    "two or more")

    report["duplicates"] = _duplicates(records)
    conflicting = [group for group in report["duplicates"]["groups"] if group["conflicting_labels"]]
    if conflicting:
        report["warnings"].append(f"{len(conflicting)} groups of identical images carry different labels "
                                  "(--drop_conflicting_duplicates leaves them out of training)")
    if report["duplicates"]["across_splits"]:
        report["warnings"].append(f"{report['duplicates']['across_splits']} duplicate groups span several splits "
                                  "(test images also in training)")
    labeled = {s: c for s, c in class_lists.items() if s not in ("seg_pred",)}
    reference = labeled.get("seg_train") or next(iter(labeled.values()), None)
    for split, classes in labeled.items():
        if classes and reference and classes != reference:
            report["errors"].append(f"{split} has classes {classes} but the training split has {reference}")
    if not everything:
        report["errors"].append(f"{root} holds no image files")
    return report


def _duplicates(records: list[dict]) -> dict:
    groups = defaultdict(list)
    for record in records:
        if "pixel_hash" in record:
            groups[record["pixel_hash"]].append(record)
    found = []
    for members in groups.values():
        if len(members) < 2:
            continue
        labels = {(m["split"], m["class"]) for m in members}
        classes = {m["class"] for m in members if m["class"] is not None}
        found.append({"files": [m["file"] for m in members], "splits": sorted({m["split"] for m in members}),
                      "classes": sorted(classes), "conflicting_labels": len(classes) > 1,
                      "places": len(labels)})
    found.sort(key=lambda group: (not group["conflicting_labels"], group["files"][0]))
    return {"groups": found, "within_split": sum(len(g["splits"]) == 1 for g in found),
            "across_splits": sum(len(g["splits"]) > 1 for g in found),
            "conflicting": sum(g["conflicting_labels"] for g in found)}


def format_report(report: dict, limit: int = 8) -> str:
    """The report as text for people."""
    lines = [f"data check: {report['root']} (target size {report['image_size']}px)"]
    for split, summary in report["splits"].items():
        lines.append(f"\n[{split}] {summary.get('images', 0)} readable images of {summary.get('files', 0)} files, "
                     f"{len(summary['classes'])} classes")
        if summary.get("per_class"):
            lines.append("  per class: " + ", ".join(f"{k} {v}" for k, v in summary["per_class"].items()))
        lines.append(f"  sizes: {summary.get('distinct_sizes', 0)} distinct; most common: "
                     + ", ".join(f"{k} ({v})" for k, v in list(summary.get("sizes", {}).items())[:4]))
        for key, title in (("unreadable", "cannot be decoded"), ("extension_mismatch", "content/extension mismatch")):
            for item in summary.get(key, [])[:limit]:
                lines.append(f"  {title}: {item['file']} ({item.get('reason') or item.get('format')})")
        if summary.get("non_rgb"):
            lines.append(f"  colour modes other than RGB: {summary['non_rgb']} (converted to RGB when written)")
        if summary.get("colour_profiles"):
            lines.append(f"  colour profiles other than sRGB: {summary['colour_profiles']} (converted to sRGB through "
                         "them when written)")
        for item in summary.get("unused_profiles", [])[:limit]:
            lines.append(f"  colour profile not used: {item['file']} ({item['reason']})")
        small = summary.get("smaller_than_image_size", [])
        if small:
            lines.append(f"  smaller than {report['image_size']}px: {len(small)}, e.g. {', '.join(small[:3])}")
    duplicates = report["duplicates"]
    lines.append(f"\nduplicates (identical decoded pixels): {len(duplicates['groups'])} groups, "
                 f"{duplicates['within_split']} within a split, {duplicates['across_splits']} across splits, "
                 f"{duplicates['conflicting']} with conflicting labels")
    for group in duplicates["groups"][:limit]:
        tag = "CONFLICTING LABELS " + "/".join(group["classes"]) if group["conflicting_labels"] else "same label"
        lines.append(f"  {tag}: " + ", ".join(Path(f).relative_to(report['root']).as_posix()
                                               if Path(f).is_relative_to(report['root']) else f
                                               for f in group["files"]))
    if len(duplicates["groups"]) > limit:
        lines.append(f"  ... and {len(duplicates['groups']) - limit} more groups (see the JSON report)")
    for title, items in (("warnings", report["warnings"]), ("errors (training would fail)", report["errors"])):
        if items:
            lines.append(f"\n{title}:")
            lines += [f"  - {item}" for item in items]
    lines.append("\nverdict: " + ("NOT USABLE for training as it is" if report["errors"] else "usable for training"))
    return "\n".join(lines)


def write_report(report: dict, path: Path) -> None:
    write_json(path, report)
