"""Reading a run directory: the one place that knows its files.

    <run_dir>/config.json      the final config (and what the run chose: precision, processes, device)
    <run_dir>/metrics.jsonl    one JSON object per logged step: {"step", "time", ...}
    <run_dir>/summary.json     final metrics; present once the run finished
    <run_dir>/checkpoints/     step-N folders (toolkit.train.checkpoint)

Every reader (the reports, the comparison and the latent study, the GPU check, the end-of-run
figures) goes through these functions.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# keys that change how a run is logged or where it writes, never what it computes
NOT_RESULT_KEYS = frozenset({
    "run_dir", "resume", "wandb_project", "wandb_mode", "num_workers", "cache_dir", "log_every", "keep_checkpoints",
    "checkpoint_every", "eval_every", "recipe", "device", "cpu", "mixed_precision_used", "num_processes",
    "global_batch", "wandb_group", "wandb_tags", "max_steps", "variant", "torch_threads",
})


# keys a resume may change (after a divergence: a lower --lr), said loudly; any other difference is refused
CHANGEABLE_ON_RESUME = frozenset({"lr", "weight_decay", "mixed_precision"})


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # missing, not text, not JSON
        return None


def write_json(path: Path, value) -> None:
    """Write standard JSON, which every reader takes: a non-finite float (an infinite PSNR, the mean of no values)
    becomes null, where Python's default writes Infinity and NaN, which are not JSON; NumPy's numbers become
    Python's. The folder is made. The file appears whole or not at all (written beside, then renamed): a run stopped
    while writing leaves the old one."""
    def standard(item):
        if getattr(item, "shape", None) == () and hasattr(item, "item"):  # a NumPy scalar (np.float32, np.int64)
            item = item.item()
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: standard(part) for key, part in item.items()}
        return [standard(part) for part in item] if isinstance(item, (list, tuple)) else item

    write_text_whole(path, json.dumps(standard(value), indent=2, allow_nan=False))


def file_in_the_way(folder: Path | str) -> Path | None:
    """The first of `folder` and the folders above it that exists as something other than a folder (a file where
    a folder must go, so that nothing can be written below it), or None."""
    folder = Path(folder)
    for candidate in (*reversed(folder.parents), folder):
        if not candidate.exists():
            return None
        if not candidate.is_dir():
            return candidate
    return None


@contextmanager
def written_whole(path: Path | str) -> Iterator[Path]:
    """A hidden path beside `path`, with its extension (which names the format to writers that go by it), to write
    the file's new content to: renamed over `path` when the block ends, removed when it raises, so that `path` is
    always whole, the old file or the new, whatever stops the writing (a full disk, a kill). The folder is made.

        with written_whole(out) as temporary:
            image.save(temporary)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_whole(path: Path | str, text: str) -> None:
    """Write a text file that appears whole or not at all (written_whole)."""
    with written_whole(path) as temporary:
        temporary.write_text(text)


def read_config(run_dir: Path | str) -> dict | None:
    return read_json(Path(run_dir) / "config.json")


def read_summary(run_dir: Path | str) -> dict | None:
    return read_json(Path(run_dir) / "summary.json")


def read_metrics(run_dir: Path | str) -> list[dict]:
    """Every record of metrics.jsonl in order; a line cut short by a kill is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def series(records: list[dict], key: str, x: str = "step") -> list[tuple[float, float]]:
    """(x, value) for every record holding both (x: 'step', 'epoch' or any logged key)."""
    return [(r[x], r[key]) for r in records if r.get(key) is not None and r.get(x) is not None]


def psnr_series(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """A denoiser's validation PSNR curves, {name: (step, dB) points}: per noise level, and of the tiles scored
    beside them (val/x2/psnr_25 -> x2/psnr_25)."""
    keys = sorted({key for record in records for key in record if re.fullmatch(r"val/(\w+/)?psnr(_[\d.]+)?", key)})
    return {key.removeprefix("val/"): series(records, key) for key in keys}


def finished_summary(run_dir: Path | str, result_key: str | None = None) -> dict | None:
    """The summary of a finished run (one with results: `result_key` present when given), else None."""
    summary = read_summary(run_dir)
    if summary is None or (result_key is not None and result_key not in summary):
        return None
    return summary


def elapsed_seconds(records: list[dict]) -> float:
    """Wall-clock from the first to the last logged line (evaluations included; a resumed run's
    downtime too), plus the first logged interval."""
    timed = [r for r in records if "time" in r]
    if not timed:
        return 0.0
    return round(timed[-1]["time"] - timed[0]["time"] + timed[0].get("seconds", 0.0), 1)


def config_differences(stored: dict, wanted: dict, ignore: frozenset[str] = NOT_RESULT_KEYS,
                       defaults: dict | None = None) -> dict[str, tuple]:
    """{key: (stored value, wanted value)} for every key of `wanted` that would change a run's results. A key the
    stored config lacks (a run started before the option existed) counts as its value in `defaults`, the recipe's
    defaults now: an option is added with a default that does what the recipe did before it."""
    stored = {**(defaults or {}), **stored}
    keys = set(wanted) - ignore
    return {k: (stored.get(k), wanted.get(k)) for k in sorted(keys) if not _same_setting(k, stored.get(k),
                                                                                        wanted.get(k))}


# keys that name a file or folder: two spellings of one path (relative and absolute, through a link) are one setting
PATH_KEYS = frozenset({"data", "weights", "resnet_weights", "init_from"})


def _same_setting(key: str, stored, wanted) -> bool:
    if stored == wanted:
        return True
    if key not in PATH_KEYS or not (isinstance(stored, str) and isinstance(wanted, str) and stored and wanted):
        return False
    return Path(wanted).exists() and os.path.realpath(stored) == os.path.realpath(wanted)


def describe_differences(differences: dict[str, tuple], limit: int = 6) -> str:
    shown = [f"{k}: {a!r} there, {b!r} now" for k, (a, b) in list(differences.items())[:limit]]
    more = f" (and {len(differences) - limit} more)" if len(differences) > limit else ""
    return "; ".join(shown) + more


def newest_run(parent: Path | str, prefix: str) -> Path | None:
    """The most recently changed folder named <prefix>-* under `parent` (default target of --resume)."""
    runs = [p for p in Path(parent).glob(f"{prefix}-*") if p.is_dir()]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None
