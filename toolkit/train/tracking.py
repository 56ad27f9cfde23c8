"""Run logging: always to a local run directory, and to Weights & Biases when it works.

    <run_dir>/config.json      the final config
    <run_dir>/metrics.jsonl    one JSON object per logged step
    <run_dir>/summary.json     final metrics
    <run_dir>/wandb/           the W&B run (offline-run-* when there is no network or key)

W&B never stops or stalls training: with no API key or no route to the server the run goes
offline by itself; if W&B fails later (a wrong key, a crash of its service), the run carries
on with local logs and says so once.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from toolkit.runs import write_text_whole

WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_api_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_host_reachable(timeout_s: float = 3.0) -> bool:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def choose_wandb_mode(requested: str) -> tuple[str, str]:
    """(mode, reason): 'online', 'offline' or 'disabled'. 'auto' honours WANDB_MODE, else goes
    online only with an API key and a reachable server."""
    if requested not in WANDB_MODES:
        raise ValueError(f"wandb_mode must be one of {WANDB_MODES}, got {requested!r}")
    if os.environ.get("WANDB_MODE", None) == "":
        del os.environ["WANDB_MODE"]  # an empty WANDB_MODE crashes wandb itself
    if requested != "auto":
        return requested, f"--wandb_mode={requested}"
    from_env = os.environ.get("WANDB_MODE", "").lower()
    if from_env in ("online", "offline", "disabled"):
        return from_env, f"WANDB_MODE={from_env}"
    if from_env == "dryrun":
        return "offline", "WANDB_MODE=dryrun"
    if not wandb_api_key_available():
        return "offline", "no W&B API key (set WANDB_API_KEY or run `wandb login` to log online)"
    if not wandb_host_reachable():
        return "offline", "the W&B server is unreachable"
    return "online", "API key found and server reachable"


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return value


class RunLogger:
    """Holds the run's logging state: the metrics file and the (possibly failed) W&B run.

    Only the main process (main=True) writes; on other processes every method does nothing. Runs of a
    study share a W&B `group` and say their recipe as `job_type`, so W&B groups and filters them itself.
    """

    def __init__(self, main: bool, run_dir: Path, project: str, run_name: str, config: dict,
                 wandb_mode: str, wandb_reason: str = "", resume_step: int | None = None, log=print,
                 group: str | None = None, job_type: str | None = None, tags: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.say = log
        self.main = main
        self.wandb_run = None
        self.wandb_mode = wandb_mode
        self.wandb_floor = -1  # W&B refuses steps that go back: skip those already sent before a resume
        self.config = dict(config)
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_step is not None:
            self.wandb_floor = self._truncate_metrics(resume_step)
        else:  # a fresh run: its own metrics file and its own W&B run
            self.metrics_path.unlink(missing_ok=True)
            (self.run_dir / "wandb_run_id.txt").unlink(missing_ok=True)
        self.metrics_file = open(self.metrics_path, "a")
        if wandb_mode != "disabled":
            self._start_wandb(project, run_name, wandb_mode, wandb_reason, group, job_type, tags or [])

    def _write_config(self) -> None:
        write_text_whole(self.run_dir / "config.json", json.dumps(_jsonable(self.config), indent=2))

    def update_config(self, values: dict) -> None:
        """Add what the run decided after it started (e.g. the precision) to config.json and W&B."""
        if not self.main:
            return
        self.config.update(values)
        self._write_config()
        self._wandb(lambda run: run.config.update(_jsonable(values), allow_val_change=True))

    def _truncate_metrics(self, step: int) -> int:
        """Drop lines logged after the checkpoint we resume from; return the last step ever logged."""
        if not self.metrics_path.exists():
            return -1
        lines = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        last = max((r.get("step", -1) for r in records), default=-1)
        kept = [json.dumps(r) for r in records if r.get("step", -1) <= step]
        write_text_whole(self.metrics_path, "".join(line + "\n" for line in kept))
        return last

    def _start_wandb(self, project, run_name, mode, reason, group, job_type, tags) -> None:
        id_file = self.run_dir / "wandb_run_id.txt"
        try:
            import wandb
        except Exception as error:  # not installed, or broken: the run goes on with its local logs
            self.say(f"[wandb] cannot import wandb ({type(error).__name__}: {error}); continuing without W&B "
                     f"(install it with `pip install wandb`); everything is still logged in {self.run_dir}")
            self.wandb_mode = "disabled"
            return
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        for attempt_mode in ([mode, "offline"] if mode == "online" else [mode]):
            try:
                # finish_previous: a W&B run left unfinished earlier in this process (one whose logging failed and
                # was dropped) is finished, not handed back: wandb.init would otherwise return it, and a study's next
                # sub-run (or the next command) would log into the run before
                self.wandb_run = wandb.init(
                    project=project, name=run_name, id=run_id, resume="allow", dir=str(self.run_dir),
                    mode=attempt_mode, config=_jsonable(self.config), group=group, job_type=job_type, tags=tags,
                    reinit="finish_previous",
                    settings=wandb.Settings(init_timeout=90, console="off", x_disable_stats=True, quiet=True))
                self.wandb_mode = attempt_mode
                if attempt_mode == "offline":
                    self.say(f"[wandb] logging offline ({reason}); upload later with: "
                             f"wandb sync {self.run_dir}/wandb/offline-run-*")
                else:
                    self.say(f"[wandb] logging online to project {project} ({reason}): {self.wandb_run.url}")
                return
            except Exception as error:  # bad key, network, service start-up: never fatal
                self.say(f"[wandb] could not start a {attempt_mode} run ({type(error).__name__}: {error})")
                reason = f"online start failed: {type(error).__name__}"
        self.say(f"[wandb] continuing without W&B; everything is still logged in {self.run_dir}")
        self.wandb_mode = "disabled"

    def _wandb(self, action) -> None:
        if self.wandb_run is None:
            return
        try:
            action(self.wandb_run)
        except Exception as error:
            self.say(f"[wandb] logging failed ({type(error).__name__}: {error}); continuing with local logs "
                     f"only in {self.run_dir}")
            self.wandb_run = None

    def log(self, metrics: dict, step: int) -> None:
        """Append {'step', 'time', **metrics} to metrics.jsonl and send the numbers to W&B."""
        if not self.main:
            return
        record = {"step": step, "time": round(time.time(), 3), **_jsonable(metrics)}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if step > self.wandb_floor:
            scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self._wandb(lambda run: run.log(scalars, step=step))

    def log_images(self, images: dict[str, object], step: int, captions: dict[str, str] | None = None) -> None:
        """images: name -> image file path or (H, W, 3) uint8 array."""
        if not self.main or step <= self.wandb_floor:
            return

        def send(run):
            import wandb

            run.log({name: wandb.Image(str(image) if isinstance(image, Path) else image,
                                       caption=(captions or {}).get(name))
                     for name, image in images.items()}, step=step)

        self._wandb(send)

    def log_table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        """A table in W&B (cells may be image arrays, sent as images) and as JSON in the run directory."""
        if not self.main:
            return
        tables = self.run_dir / "tables"
        tables.mkdir(exist_ok=True)
        plain = [[cell if not hasattr(cell, "shape") or cell.ndim == 0 else "<image>" for cell in row] for row in rows]
        table = _jsonable({"columns": columns, "rows": plain})
        write_text_whole(tables / f"{name.replace('/', '_')}.json", json.dumps(table))
        if step <= self.wandb_floor:
            return

        def send(run):
            import wandb

            cells = [[wandb.Image(c) if hasattr(c, "shape") and c.ndim == 3 else c for c in row] for row in rows]
            run.log({name: wandb.Table(columns=columns, data=cells)}, step=step)

        self._wandb(send)

    def log_artifact(self, name: str, kind: str, path: Path) -> None:
        """Attach a file or folder (e.g. the final checkpoint) to the W&B run as an artifact."""
        if not self.main:
            return

        def send(run):
            import wandb

            artifact = wandb.Artifact(name, type=kind)
            (artifact.add_dir if Path(path).is_dir() else artifact.add_file)(str(path))
            run.log_artifact(artifact)

        self._wandb(send)

    def summary(self, values: dict) -> None:
        """Write summary.json (merged with any earlier summary) and set the W&B run summary."""
        if not self.main:
            return
        path = self.run_dir / "summary.json"
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update(_jsonable(values))
        write_text_whole(path, json.dumps(merged, indent=2))
        flat = {k: v for k, v in merged.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        self._wandb(lambda run: run.summary.update(flat))

    def finish(self, timeout_s: float = 120.0) -> None:
        """Close the metrics file and the W&B run; an upload that takes too long is left to `wandb sync`."""
        if not self.main:
            return
        self.metrics_file.close()
        if self.wandb_run is None:
            return
        run, self.wandb_run = self.wandb_run, None
        closer = threading.Thread(target=lambda: _quietly(run.finish), daemon=True)
        closer.start()
        closer.join(timeout_s)
        if closer.is_alive():
            self.say(f"[wandb] still uploading after {timeout_s:.0f}s; not waiting. "
                     f"Upload later with: wandb sync {self.run_dir}/wandb/<run folder>")
        elif self.wandb_mode == "offline":
            runs = sorted((self.run_dir / "wandb").glob("offline-run-*"))
            if runs:
                self.say(f"[wandb] offline run saved; upload it with: wandb sync {runs[-1]}")


def _quietly(action) -> None:
    try:
        action()
    except Exception:
        pass
