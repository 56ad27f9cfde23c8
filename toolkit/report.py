"""`toolkit report RUN_DIR [RUN_DIR ...]`: one self-contained HTML page from run directories.

Understands classifier runs, denoiser runs, `toolkit evaluate` folders, the classifier comparison
(recipes/compare_classifiers.py) and the latent-size study (recipes/latent_study.py); a run still training, or
stopped before its end, shows what it has logged so far. Every figure
is embedded as a data URI (and copied as PNG beside the page), so the page needs no network and
can be mailed around. A tiny inline script counts the images that loaded (data-images-loaded on
<body>), which the browser test reads.
"""

from __future__ import annotations

import base64
import html
import math
import re
import shutil
import tempfile
import time
from pathlib import Path

from toolkit.errors import UserError
from toolkit.runs import psnr_series, read_json, read_metrics, series, write_text_whole

STUDY_CLASSIFIERS = {"CNN": 0.864, "ResNet18": 0.899}  # STUDY.md, seg_test


def run_kind(run_dir: Path) -> str:
    if (run_dir / "comparison.json").is_file():
        return "comparison"
    if (run_dir / "latent_study.json").is_file():
        return "latent_study"
    summary = read_json(run_dir / "summary.json") or {}
    if "test_psnr" in summary or "val_psnr" in summary:  # a held-out test split, or validation per sigma (blind)
        return "denoiser"
    if "val_accuracy" in summary:
        return "classifier"
    metrics = read_json(run_dir / "metrics.json") or {}
    if "ece" in metrics:
        return "evaluation"
    if (run_dir / "calibration.json").is_file():
        return "calibration"
    if (read_json(run_dir / "config.json") or {}).get("recipe") and read_metrics(run_dir):
        return "unfinished"  # training now, or stopped before its end
    return "unknown"


class _Page:
    """Accumulates HTML and the figures it embeds (a class: it holds state while the page is built)."""

    def __init__(self, out_dir: Path):
        self.parts: list[str] = []
        self.figures_dir = out_dir / "figures"
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def heading(self, text: str, level: int = 2) -> None:
        self.add(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.add(f"<p>{html.escape(text)}</p>")

    def figure(self, path: Path, caption: str) -> None:
        if not path.is_file():
            return
        self.count += 1
        slug = "".join(ch if ch.isalnum() else "-" for ch in caption.lower()).strip("-")[:60]
        copy = self.figures_dir / f"{self.count:02d}-{slug}.png"
        shutil.copyfile(path, copy)
        data = base64.b64encode(path.read_bytes()).decode()
        self.add(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                 f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def table(self, header: list[str], rows: list[list]) -> None:
        cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        self.add(f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")

    def markdown_table(self, text: str) -> None:
        """The simple pipe tables the recipes write (header, separator, rows; bold markers dropped)."""
        lines = [line for line in text.splitlines() if line.startswith("|")]
        if len(lines) < 2:
            return
        split = lambda line: [cell.strip().replace("**", "") for cell in line.strip("|").split("|")]  # noqa: E731
        self.table(split(lines[0]), [split(line) for line in lines[2:]])
        for line in text.splitlines():
            if line.strip() and not line.startswith("|"):
                self.paragraph(line.strip())


def _or_dash(value, form: str) -> str:
    """A number in `form`, or a dash where there is none (None or NaN: the precision of a class never predicted, a
    mean of no values, null in a JSON)."""
    return "—" if value is None or value != value else form.format(value)


def _percent(value) -> str:
    return _or_dash(value, "{:.1%}")


def _score(value) -> str:
    return _or_dash(value, "{:.3f}")


def _decibels(value) -> str:
    return _or_dash(value, "{:.2f} dB")


def _classifier_section(page: _Page, run_dir: Path, title: str | None = None) -> dict:
    summary = read_json(run_dir / "summary.json") or {}
    page.heading(title or f"{summary.get('recipe', 'classifier')}: {run_dir.name}", 3)
    page.paragraph(f"{summary.get('data', '')}. {summary.get('steps', '?')} iterations, "
                   f"{summary.get('train_seconds', 0):.0f} s of training"
                   + (f", weights: {summary['weights']}" if summary.get("weights") else "") + ".")
    rows = [["validation accuracy", _percent(summary.get("val_accuracy"))],
            [f"test accuracy ({summary.get('test_split', 'test')})", _percent(summary.get("test_accuracy"))],
            ["test loss", f"{summary.get('test_loss', float('nan')):.4f}"],
            ["test macro F1", f"{summary.get('test_macro_f1', float('nan')):.4f}"]]
    page.table(["metric", "value"], rows)
    plots = run_dir / "plots"
    for name, caption in (("learning_curves.png", "learning curves"), ("time_to_accuracy.png", "time to accuracy"),
                          ("confusion.png", "confusion matrix"), ("per_class_accuracy.png", "accuracy per class"),
                          ("test_examples.png", "test images: true -> predicted (probability)")):
        page.figure(plots / name, f"{run_dir.name}: {caption}")
    return summary


def recipe_file(run_name: str) -> str:
    """The recipes/ file (without .py) that starts runs of the kind config.json's 'recipe' names: a model or mode
    after a dash is the recipe's own (blind_denoiser-resunet, autoencoder-AE38, efficientnet_lite0-top)."""
    return {"compare": "compare_classifiers", "latent-study": "latent_study"}.get(run_name, run_name.split("-")[0])


def _unfinished_section(page: _Page, run_dir: Path) -> None:
    """A run still training, or stopped before its end: what it logged so far, its newest checkpoint, how to go on,
    and its learning curves drawn from metrics.jsonl as they stand."""
    from toolkit.plots import plot_classifier_curves, plot_lines
    from toolkit.train.checkpoint import checkpoint_step, latest_checkpoint

    run_name = read_json(run_dir / "config.json")["recipe"]
    page.heading(f"{run_name} run {run_dir.name}", 2)
    records = read_metrics(run_dir)
    recipe = recipe_file(run_name)
    newest = latest_checkpoint(run_dir)
    newest = f"its newest checkpoint is at iteration {checkpoint_step(newest)}" if newest else \
        "it has no checkpoint yet"
    page.paragraph(f"Not finished: training now, or stopped before its end (no summary.json). {len(records)} "
                   f"records logged up to iteration {max(r.get('step', 0) for r in records)}; {newest}. A stopped run "
                   f"continues with: accelerate launch recipes/{recipe}.py --run_dir={run_dir} --resume")
    validated = [r for r in records if any(key.startswith("val/") for key in r)]
    if validated:
        latest = validated[-1]
        page.table([f"latest validation (iteration {latest.get('step')})", "value"],
                   [[key.removeprefix("val/"), f"{value:.4f}"] for key, value in sorted(latest.items())
                    if key.startswith("val/") and isinstance(value, (int, float))])
    with tempfile.TemporaryDirectory() as drawn:  # page.figure keeps its own copy
        path = Path(drawn) / f"{run_dir.name}.png"
        if any("val/accuracy" in r for r in records):
            curves = plot_classifier_curves(records, path, run_dir.name)
        else:
            curves = plot_lines({"train loss (per iteration)": series(records, "train/loss"), **psnr_series(records)},
                                path, "iteration", "loss; validation PSNR (dB)", title=f"{run_dir.name} (as it stands)")
        page.figure(curves, f"{run_dir.name}: learning curves so far")


def _denoiser_section(page: _Page, run_dir: Path) -> dict:
    summary = read_json(run_dir / "summary.json") or {}
    page.heading(f"{summary.get('label', 'denoiser')}: {run_dir.name}", 3)
    page.paragraph(f"{summary.get('data', '')}; noise {summary.get('noise', '')}; "
                   f"{summary.get('train_seconds', 0):.0f} s of training.")
    if "test_psnr" in summary:
        page.table(["", "PSNR dB", "SSIM", "MSE"],
                   [["model (held-out test)", f"{summary['test_psnr']:.2f}", f"{summary['test_ssim']:.4f}",
                     f"{summary['test_mse']:.5f}"],
                    ["noisy input", f"{summary['test_noisy_psnr']:.2f}", f"{summary['test_noisy_ssim']:.4f}",
                     f"{summary['test_noisy_mse']:.5f}"]])
    else:  # a blind denoiser: validated at each noise level (its benchmark is `toolkit benchmark-denoiser`)
        rows = []  # the tiles that choose, then those scored beside them (val_x2_...: the images halved)
        reduced_sets = {match[1] for key in summary if (match := re.fullmatch(r"(val_x\d+)_psnr", key))}
        for tiles in ["val", *sorted(reduced_sets)]:
            sigmas = sorted(int(key.removeprefix(f"{tiles}_psnr_")) for key in summary
                            if re.fullmatch(rf"{tiles}_psnr_\d+", key))
            reduced = f", reduced x{tiles.removeprefix('val_x')}" if tiles != "val" else ""
            rows += [[f"{sigma}{reduced}", f"{summary[f'{tiles}_psnr_{sigma}']:.2f}",
                      f"{summary[f'{tiles}_ssim_{sigma}']:.4f}", f"{summary[f'{tiles}_noisy_psnr_{sigma}']:.2f}"]
                     for sigma in sigmas]
        page.table(["validation, σ (of 255)", "model PSNR dB", "model SSIM", "noisy input PSNR dB"], rows)
    plots = run_dir / "plots"
    page.figure(plots / "learning_curves.png", f"{run_dir.name}: learning curves")
    page.figure(plots / "validation_psnr.png", f"{run_dir.name}: validation PSNR per noise level")
    grids = sorted(plots.glob("grid-test-*.png")) or sorted(plots.glob("grid-val-*.png"))
    if grids:
        page.figure(grids[-1], f"{run_dir.name}: clean / noisy / denoised")
    return summary


def _evaluation_section(page: _Page, folder: Path) -> None:
    metrics = read_json(folder / "metrics.json") or {}
    together = metrics.get("ensemble") or []
    page.heading(f"Evaluation of {metrics.get('checkpoint', '?')}"
                 + (f" in an ensemble with {', '.join(m['checkpoint'] for m in together[1:])}" if together else "")
                 + f" on {metrics.get('folder', '?')}", 3)
    page.paragraph(f"accuracy {_percent(metrics.get('accuracy'))} on {metrics.get('n')} images, "
                   f"macro F1 {metrics.get('macro_f1', 0):.3f}, expected calibration error {metrics.get('ece', 0):.3f}"
                   + (f"; {len(metrics['skipped'])} unreadable files skipped" if metrics.get("skipped") else ""))
    classes = metrics.get("classes", [])
    page.table(["class", "precision", "recall", "F1", "images"],
               [[c, *(_score(metrics[key][i]) for key in ("precision", "recall", "f1")), metrics["per_class_total"][i]]
                for i, c in enumerate(classes)])
    for name, caption in (("confusion.png", "confusion matrix"), ("per_class.png", "precision / recall / F1"),
                          ("reliability.png", "calibration"), ("confident_mistakes.png", "most confident mistakes")):
        page.figure(folder / name, caption)


def _calibration_section(page: _Page, folder: Path) -> None:
    result = read_json(folder / "calibration.json") or {}
    page.heading(f"Calibration of {result.get('checkpoint', '?')}", 3)
    page.paragraph(f"temperature {result.get('temperature_before', 1):.3f} → {result.get('temperature', 1):.3f}, "
                   f"fitted on {result.get('images')} images of {result.get('data', '?')} the run neither trained on "
                   f"nor held out (accuracy {_percent(result.get('accuracy'))}); on them, expected calibration error "
                   f"{_score(result.get('ece_as_trained'))} → {_score(result.get('ece_calibrated'))}, loss "
                   f"{_score(result.get('loss_as_trained'))} → {_score(result.get('loss_calibrated'))}")
    for name, caption in (("reliability_as_trained.png", "as trained"),
                          ("reliability_calibrated.png", "with the temperature")):
        page.figure(folder / name, caption)


def _comparison_section(page: _Page, run_dir: Path) -> None:
    result = read_json(run_dir / "comparison.json") or {}
    models = result.get("models", {})
    seeds = result.get("seeds", [])
    page.heading(f"The classifier comparison: {', '.join(models)} ({len(seeds)} seed(s) each)", 2)
    story = ("The study reported 86.4% for its CNN and 89.9% for an ImageNet-pretrained ResNet18 on the official "
             f"test split. Here every model is scored on the same held-out images ({result.get('test_split', '')}): "
             + ", ".join(f"{m} {_percent(r['accuracy']['mean'])}" + (f" [{_percent(r['accuracy']['low'])}, "
                                                                     f"{_percent(r['accuracy']['high'])}]"
                                                                     if r["accuracy"]["n"] > 1 else "")
                         + (f", its seeds together {_percent(r['ensemble']['accuracy'])}" if "ensemble" in r else "")
                         for m, r in models.items()))
    page.paragraph(story + ".")
    if (run_dir / "comparison.md").is_file():
        page.markdown_table((run_dir / "comparison.md").read_text())
    for name, caption in (("accuracy_intervals.png", "accuracy per model: mean, 95% interval, seeds"),
                          ("per_class_comparison.png", "accuracy per class, side by side"),
                          ("learning_curves.png", "validation accuracy: mean and band over seeds")):
        page.figure(run_dir / "plots" / name, caption)
    for model in models:
        first = run_dir / model / f"seed-{seeds[0]}" if seeds else run_dir / model
        if (first / "summary.json").is_file():
            _classifier_section(page, first, f"{model} run (seed {seeds[0]})")


def _latent_section(page: _Page, run_dir: Path) -> None:
    study = read_json(run_dir / "latent_study.json") or {}
    models, baselines = study.get("models", {}), study.get("baselines", {})
    page.heading("The latent-size study: denoising autoencoders against baselines", 2)
    ranked = sorted(models.items(), key=lambda item: -(item[1]["psnr"]["mean"] or -math.inf))  # null: last
    if ranked:
        best = ranked[0]
        family = {k: v for k, v in models.items() if v.get("family")}
        story = ("The study trained three autoencoders at noise sigma 0.3 and reported only training MSE: AE10 "
                 "worst (~17 dB), AE38 and AE71 close (~19.6 dB); it chose AE38. Here every model and baseline is "
                 f"scored on the same held-out noisy images, with {len(study.get('seeds', []))} seed(s) per model. ")
        if family:
            story += "Autoencoders (latent / input: PSNR): " + ", ".join(
                f"{k} ({v['latent_ratio']:.2f}x) {_decibels(v['psnr']['mean'])}" for k, v in
                sorted(family.items(), key=lambda item: item[1]["latent_ratio"])) + ". "
        story += f"Best trained model: {best[0]} at {_decibels(best[1]['psnr']['mean'])} PSNR. "
        story += "Baselines: " + ", ".join(f"{k} {_decibels(v['psnr'])}" for k, v in baselines.items()) + "."
        page.paragraph(story)
    if (run_dir / "latent_study.md").is_file():
        page.markdown_table((run_dir / "latent_study.md").read_text())
    for name, caption in (("psnr_vs_latent.png", "PSNR against latent size"),
                          ("validation_curves.png", "validation loss per model"),
                          ("side_by_side.png", "the same held-out images through every model")):
        page.figure(run_dir / "plots" / name, caption)
    seeds = study.get("seeds", [0])
    for name in models:
        first = run_dir / name / f"seed-{seeds[0]}"
        if (first / "summary.json").is_file():
            _denoiser_section(page, first)


STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}h1{border-bottom:2px solid #333}h2{margin-top:2em;border-bottom:1px solid #aaa}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f0f0f0}figure{margin:1em 0}img{max-width:100%}
figcaption{color:#555;font-size:90%}.meta{color:#666;font-size:90%}"""

COUNT_IMAGES = """<script>window.addEventListener('load',function(){var images=document.images,loaded=0;
for(var i=0;i<images.length;i++){if(images[i].complete&&images[i].naturalWidth>0){loaded++;}}
document.body.setAttribute('data-images-loaded',loaded);document.body.setAttribute('data-images-total',images.length);});
</script>"""


def build_report(run_dirs: list[Path], out_dir: Path, title: str = "") -> Path:
    """Write out_dir/index.html (self-contained) and out_dir/figures/*.png; returns the page's path."""
    if not run_dirs:
        raise UserError("toolkit report needs at least one run directory")
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} is not a run directory")
    kinds = {run_dir: run_kind(run_dir) for run_dir in run_dirs}
    unknown = [str(d) for d, kind in kinds.items() if kind == "unknown"]
    if unknown:
        raise UserError(f"not a run, a study, an evaluation or a calibration (no summary.json, comparison.json, "
                        f"latent_study.json, metrics.json, calibration.json, or config.json with metrics.jsonl): "
                        f"{', '.join(unknown)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    page = _Page(out_dir)
    title = title or "scene-toolkit report"
    page.add(f"<h1>{html.escape(title)}</h1>")
    page.add(f'<p class="meta">Built {time.strftime("%Y-%m-%d %H:%M")} from: '
             + ", ".join(html.escape(str(d)) for d in run_dirs) + "</p>")
    plain = [d for d, kind in kinds.items() if kind in ("classifier", "denoiser")]
    if len(plain) > 1:
        page.heading("Runs at a glance", 2)
        rows = []
        for run_dir in plain:
            s = read_json(run_dir / "summary.json") or {}
            if "val_accuracy" in s:
                score = f"{_percent(s.get('test_accuracy'))} accuracy"
            elif "test_psnr" in s:
                score = f"{s['test_psnr']:.2f} dB / {s.get('test_ssim', 0):.3f}"
            else:
                score = f"{s.get('val_psnr', 0):.2f} dB (validation, mean over σ)"
            rows.append([run_dir.name, s.get("recipe", ""), s.get("steps", ""), f"{s.get('train_seconds', 0):.0f}",
                         f"{s.get('train_images_per_s', 0):.0f}", score])
        page.table(["run", "recipe", "iterations", "training s", "img/s", "held-out score"], rows)
    for run_dir, kind in kinds.items():
        if kind == "comparison":
            _comparison_section(page, run_dir)
        elif kind == "latent_study":
            _latent_section(page, run_dir)
        elif kind == "classifier":
            page.heading(f"Classifier run {run_dir.name}", 2)
            _classifier_section(page, run_dir)
        elif kind == "denoiser":
            page.heading(f"Denoiser run {run_dir.name}", 2)
            _denoiser_section(page, run_dir)
        elif kind == "unfinished":
            _unfinished_section(page, run_dir)
        elif kind == "calibration":
            page.heading("Calibration", 2)
            _calibration_section(page, run_dir)
        else:
            page.heading("Evaluation", 2)
            _evaluation_section(page, run_dir)
    document = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{STYLE}</style>{COUNT_IMAGES}</head><body>{''.join(page.parts)}</body></html>")
    path = out_dir / "index.html"
    write_text_whole(path, document)
    return path
