"""`toolkit wandb-report STUDY_DIR`: a Weights & Biases Report of a classifier comparison or a latent study.

The report is first a plain JSON definition (wandb_report.json in the study's folder): a title, a
description and blocks (headings, paragraphs, the study's Markdown table, panel grids). A panel grid
selects the study's runs by their W&B group and job type, the way every recipe logs them, and lets
W&B group them by recipe or model, so that W&B itself draws each group's mean and spread:

    comparison    validation accuracy and training loss against iterations (mean, min-max band), validation
                  accuracy against training minutes, held-out accuracy and per-class accuracy as grouped bars,
                  the confusion matrices, a run comparer; the comparison's own interval and curve figures
    latent study  held-out PSNR against latent size (each run's summary), validation PSNR per epoch grouped
                  by model, held-out PSNR bars, the image grids, a run comparer; PSNR-vs-latent and the
                  side-by-side figure of the study run

Online (an API key and a reachable server): the definition becomes a wandb_workspaces.reports.v2 Report,
is saved, and its URL is printed. Otherwise the definition stays in the folder and the one command that
publishes it later is printed (after `wandb sync` of the offline runs). It never hangs and never fails a
study: a failed or slow publication is reported and the definition kept.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from toolkit.errors import UserError
from toolkit.runs import read_config, read_json, write_text_whole

SPEC_FILE = "wandb_report.json"


def _runs_of(study_dir: Path) -> list[dict]:
    """Every sub-run of a study folder (<model>/seed-<s>): its name, W&B id, job type, and offline run folder."""
    runs = []
    for config_path in sorted(study_dir.glob("*/seed-*/config.json")):
        run_dir = config_path.parent
        config = read_config(run_dir) or {}
        id_file = run_dir / "wandb_run_id.txt"
        runs.append({"dir": str(run_dir), "name": run_dir.name, "model": run_dir.parent.name,
                     "job_type": config.get("recipe"), "wandb_id": id_file.read_text().strip()
                     if id_file.is_file() else None, "offline": [str(p) for p in sorted(
                         (run_dir / "wandb").glob("offline-run-*"))]})
    return runs


def report_spec(study_dir: Path) -> dict:
    """The report's full definition for a study folder (classifier comparison or latent study)."""
    study_dir = Path(study_dir)
    comparison, latent = read_json(study_dir / "comparison.json"), read_json(study_dir / "latent_study.json")
    if comparison is None and latent is None:
        raise UserError(f"{study_dir} holds no finished study (comparison.json or latent_study.json): run "
                        "recipes/compare_classifiers.py or recipes/latent_study.py first")
    config = read_config(study_dir) or {}
    group = config.get("wandb_group") or study_dir.name
    runs = _runs_of(study_dir)
    job_types = sorted({r["job_type"] for r in runs if r["job_type"]})
    study_run = {"dir": str(study_dir), "job_type": config.get("recipe"),
                 "offline": [str(p) for p in sorted((study_dir / "wandb").glob("offline-run-*"))]}
    members = f"Metric('Group') == '{group}' and Metric('JobType') in {job_types!r}"
    itself = f"Metric('Group') == '{group}' and Metric('JobType') == '{config.get('recipe')}'"
    table = (study_dir / ("comparison.md" if comparison else "latent_study.md")).read_text() \
        if (study_dir / ("comparison.md" if comparison else "latent_study.md")).is_file() else ""
    if comparison is not None:
        models, seeds, classes = list(comparison["models"]), comparison["seeds"], comparison["classes"]
        title = f"Classifier comparison: {', '.join(models)} ({len(seeds)} seed(s) each)"
        description = (f"{comparison['data']}; every model trained once per seed ({', '.join(map(str, seeds))}) and "
                       f"scored on the same {comparison['test_split']} images. Intervals: 95% t-intervals over seeds; "
                       "paired McNemar tests per seed.")
        sentences = [pair["sentence"] for pair in comparison.get("pairs", [])]
        panels = [
            {"kind": "line", "title": "validation accuracy (mean, min-max over seeds)", "x": "Step",
             "y": ["val/accuracy"]},
            {"kind": "line", "title": "training loss (mean, min-max over seeds)", "x": "Step", "y": ["train/loss"],
             "smoothing": 0.6},
            {"kind": "line", "title": "time to accuracy", "x": "time/train_minutes", "y": ["val/accuracy"]},
            {"kind": "bar", "title": "held-out accuracy (mean, standard deviation over seeds)",
             "metrics": ["test/accuracy"]},
            {"kind": "bar", "title": "held-out accuracy per class",
             "metrics": [f"test/accuracy_{c}" for c in classes]},
            {"kind": "media", "title": "confusion matrices", "media_keys": ["plots/confusion"]},
            {"kind": "comparer", "title": "run comparer"},
        ]
        figures = ["comparison/accuracy", "comparison/learning_curves", "comparison/per_class"]
        groupby = ["config.recipe", "config.variant"]  # two variants of one recipe: two groups
    else:
        models, seeds = list(latent["models"]), latent["seeds"]
        title = f"Latent-size study: {len(models)} denoisers x {len(seeds)} seed(s)"
        description = ("Denoising autoencoders of the study's structure with latents from far below to above the "
                       "input size, other denoisers and classical baselines, all scored on the same seeded noisy "
                       "held-out images. Each point: a run's held-out PSNR; W&B groups the seeds of a model.")
        sentences = []
        panels = [
            {"kind": "scatter", "title": "held-out PSNR against latent size / input size", "x": "latent_ratio",
             "y": "test_psnr", "log_x": True},
            {"kind": "line", "title": "validation PSNR per epoch (mean, min-max over seeds)", "x": "epoch",
             "y": ["val/psnr"]},
            {"kind": "bar", "title": "held-out PSNR (mean, standard deviation over seeds)", "metrics": ["test/psnr"]},
            {"kind": "bar", "title": "held-out SSIM", "metrics": ["test/ssim"]},
            {"kind": "media", "title": "clean / noisy / denoised at each epoch", "media_keys": ["val/grid"]},
            {"kind": "comparer", "title": "run comparer"},
        ]
        figures = ["latent_study/psnr_vs_latent", "latent_study/side_by_side", "latent_study/validation_curves"]
        groupby = ["config.model", "config.variant"]
    blocks = [{"kind": "h1", "text": title}, {"kind": "p", "text": description},
              {"kind": "markdown", "text": table},
              *[{"kind": "p", "text": sentence} for sentence in sentences],
              {"kind": "h2", "text": "Runs grouped by model: W&B's mean and spread over seeds"},
              {"kind": "panels", "runset": {"name": "sub-runs", "filters": members, "groupby": groupby},
               "panels": panels},
              {"kind": "h2", "text": "The study's own figures"},
              {"kind": "panels", "runset": {"name": "study", "filters": itself, "groupby": []},
               "panels": [{"kind": "media", "title": "figures", "media_keys": figures}]}]
    return {"title": title, "description": description, "project": config.get("wandb_project", "scene-toolkit"),
            "group": group, "study_dir": str(study_dir), "runs": runs, "study_run": study_run, "blocks": blocks}


def build_report(spec: dict, entity: str):
    """The wandb_workspaces.reports.v2 Report a definition describes (no network until it is saved)."""
    import wandb_workspaces.reports.v2 as wr

    def panel(item: dict):
        if item["kind"] == "line":
            return wr.LinePlot(title=item["title"], x=item["x"], y=item["y"], groupby_aggfunc="mean",
                               groupby_rangefunc="minmax", smoothing_factor=item.get("smoothing"))
        if item["kind"] == "bar":
            return wr.BarPlot(title=item["title"], metrics=item["metrics"], groupby_aggfunc="mean",
                              groupby_rangefunc="stddev")
        if item["kind"] == "scatter":
            return wr.ScatterPlot(title=item["title"], x=item["x"], y=item["y"], log_x=item.get("log_x"))
        if item["kind"] == "media":
            return wr.MediaBrowser(title=item["title"], media_keys=item["media_keys"])
        return wr.RunComparer(diff_only="split")

    blocks = []
    for block in spec["blocks"]:
        kind = block["kind"]
        if kind == "h1":
            blocks.append(wr.H1(block["text"]))
        elif kind == "h2":
            blocks.append(wr.H2(block["text"]))
        elif kind == "p":
            blocks.append(wr.P(block["text"]))
        elif kind == "markdown":
            blocks.append(wr.MarkdownBlock(text=block["text"]))
        else:
            runset = block["runset"]
            blocks.append(wr.PanelGrid(
                runsets=[wr.Runset(entity=entity, project=spec["project"], name=runset["name"],
                                   filters=runset["filters"], groupby=runset["groupby"])],
                panels=[panel(item) for item in block["panels"]]))
    return wr.Report(project=spec["project"], entity=entity, title=spec["title"][:128],
                     description=spec["description"], blocks=blocks)


def publish_command(spec_path: Path, spec: dict) -> str:
    offline = [path for run in spec["runs"] for path in run["offline"]] + spec["study_run"]["offline"]
    sync = f"wandb sync {' '.join(offline)} && " if offline else ""
    return f"{sync}toolkit wandb-report --publish {spec_path}"


def publish(spec: dict, timeout_s: float = 180.0, log=print) -> str | None:
    """Save the report online; its URL, or None (said why) when W&B cannot be reached in time."""
    outcome: dict = {}

    def save():
        try:
            import wandb

            entity = wandb.Api().default_entity
            report = build_report(spec, entity)
            report.save()
            outcome["url"] = report.url
        except Exception as error:  # a bad key, no network, an API change: reported, never fatal
            outcome["error"] = f"{type(error).__name__}: {error}"

    worker = threading.Thread(target=save, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        log(f"[wandb-report] W&B did not answer within {timeout_s:.0f}s; not waiting")
        return None
    if "error" in outcome:
        log(f"[wandb-report] could not save the report ({outcome['error']})")
        return None
    return outcome["url"]


def wandb_report(study_dir: Path | None, out: Path | None = None, publish_spec: Path | None = None,
                 mode: str = "auto", log=print) -> dict:
    """Build (or, with publish_spec, read) a study's report definition; publish it when W&B is reachable."""
    from toolkit.train.tracking import choose_wandb_mode

    if publish_spec is not None:
        spec_path = Path(publish_spec)
        spec = read_json(spec_path)
        if spec is None:
            raise UserError(f"{spec_path} is not a report definition written by toolkit wandb-report")
    else:
        spec = report_spec(Path(study_dir))
        spec_path = Path(out or study_dir) / SPEC_FILE
        write_text_whole(spec_path, json.dumps(spec, indent=1))
        log(f"[wandb-report] definition written to {spec_path}: {len(spec['blocks'])} blocks, "
            f"{sum(len(b.get('panels', [])) for b in spec['blocks'])} panels over {len(spec['runs'])} runs")
    chosen, reason = choose_wandb_mode("online" if publish_spec is not None and mode == "auto" else mode)
    url = publish(spec, log=log) if chosen == "online" else None
    if url:
        log(f"[wandb-report] saved: {url}")
    else:
        why = reason if chosen != "online" else "publication failed"
        log(f"[wandb-report] not published ({why}). Publish it later, with a W&B key and network, with:\n"
            f"    {publish_command(spec_path, spec)}")
    return {"spec": str(spec_path), "url": url}
