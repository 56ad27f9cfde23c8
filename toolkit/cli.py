"""The `toolkit` command: everything that is not a training recipe.

    toolkit data explore ROOT                   images per class, examples, split balance (PNG + W&B)
    toolkit data check ROOT                     unreadable, mislabeled, duplicate, odd images (text + JSON)
    toolkit benchmark                           loader and training-step throughput, printed and as JSON
    toolkit predict CHECKPOINT INPUT...         classify images / folders / @lists, write a CSV
    toolkit evaluate CHECKPOINT FOLDER          accuracy, P/R/F1, confusion, calibration, confident mistakes
    toolkit calibrate CHECKPOINT DATA           fit a run's temperature after the fact (runs trained before it)
    toolkit report RUN_DIR...                   one self-contained HTML report (and PNGs) from runs
    toolkit export CHECKPOINT OUT.onnx          the model as an ONNX file, checked against PyTorch with onnxruntime
    toolkit denoise CHECKPOINT INPUT OUTPUT     denoise an image or a folder with a trained denoiser
    toolkit benchmark-denoiser CHECKPOINT       PSNR/SSIM on clean references (McMaster) at sigma 15/25/50
    toolkit wandb-report STUDY_DIR              a W&B Report of a comparison or latent study (or its definition)
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

from toolkit.errors import UserError, report_failure


def _tool_logger(out_dir: Path, name: str, wandb_mode: str, config: dict, chosen: tuple[str, str] | None = None):
    """A RunLogger for a command (no training): local files in out_dir, W&B offline/online as usual. chosen: the
    (mode, reason) choose_wandb_mode already gave for wandb_mode, so that its network check is not made twice."""
    from toolkit.train.tracking import RunLogger, choose_wandb_mode

    mode, reason = chosen or choose_wandb_mode(wandb_mode)
    return RunLogger(True, out_dir, "scene-toolkit", name, config, mode, reason, job_type=config.get("command"))


def command_explore(args) -> None:
    from toolkit.data.classification import find_data_root
    from toolkit.data.explore import explore_dataset

    root, synthetic = find_data_root(args.root)
    out_dir = Path(args.out or f"runs/explore-{time.strftime('%Y%m%d-%H%M%S')}")
    logger = _tool_logger(out_dir, out_dir.name, args.wandb_mode, {"root": str(root), "command": "data explore"})
    report = explore_dataset(root, out_dir, args.val_fraction, args.holdout_fraction, args.seed)
    logger.log_images({f"data/{k}": Path(v) for k, v in report["figures"].items()}, step=0)
    for split, per_class in report["counts"].items():
        logger.log_table(f"data/counts_{split}", ["class", "images"], [[k, v] for k, v in per_class.items()], step=0)
    logger.finish()
    print(f"figures and exploration.json written to {out_dir}" + (" (SYNTHETIC data)" if synthetic else ""))


def command_check(args) -> int:
    from toolkit.data.check import check_dataset, format_report, write_report

    report = check_dataset(Path(args.root), image_size=args.image_size, workers=args.workers)
    print(format_report(report, limit=args.limit))
    out = Path(args.json or "data-check.json")
    write_report(report, out)
    print(f"JSON report: {out}")
    return 1 if report["errors"] else 0


def command_benchmark(args) -> None:
    from toolkit.benchmark import run_benchmark

    out = Path(args.out)
    results = run_benchmark(data=args.data, images=args.images, out=out, sections=args.only, steps=args.steps,
                            num_workers=args.num_workers, precisions=args.precisions, tiny=args.tiny,
                            compile_recipes=args.compile_recipes)
    # as a W&B run too (files beside the JSON, in OUT-wandb/), to compare machines side by side
    logger = _logger_beside(out, args.wandb_mode, {"command": "benchmark", "machine": results["machine"],
                                                   "sections": results["sections"], "tiny": results["tiny"]})
    tables = {"loaders": ["images_per_s", "ratio_vs_study", "startup_s"],
              "steps": ["batch", "image_size", "images_per_s", "gflop_per_s", "share_of_ceiling"]}
    for section, columns in tables.items():
        if section in results:
            logger.log_table(f"benchmark/{section}", ["name", *columns],
                             [[name, *(row[column] for column in columns)] for name, row in results[section].items()],
                             step=0)
    logger.summary({"machine": results["machine"]["description"], **results.get("ceiling", {}),
                    **{f"pipeline_{key}": value for key, value in results.get("pipeline", {}).items()}})
    logger.finish()


def command_predict(args) -> None:
    from toolkit.predict import classifier_states, collect_inputs, predict_runs, write_predictions_csv

    checkpoints = [args.checkpoint, *args.ensemble]
    classifier_states(checkpoints)  # the runs are checked first
    files = collect_inputs(args.inputs)
    predictions = predict_runs(checkpoints, files, classifier_batch_size(args), args.tta, args.device, args.workers,
                               mixed_precision=args.mixed_precision, calibrated=args.calibrated)
    out = Path(args.out)
    write_predictions_csv(predictions, out, args.top_k)
    predicted = {int(index): predictions.classes[int(predictions.probabilities[index].argmax())]
                 for index in predictions.readable}
    counts = Counter(predicted.values())
    print(f"predicted {len(files) - len(predictions.errors)} images"
          + (f" with an ensemble of {len(predictions.members)} runs" if predictions.members else "")
          + (": " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts else ""))
    for index, error in predictions.errors.items():
        print(f"skipped {files[index]}: {error}", file=sys.stderr)
    print(f"wrote {out}" + (f" ({len(predictions.errors)} unreadable files listed with their error)"
                            if predictions.errors else ""))
    # as a W&B run too (files in OUT-wandb/ beside the CSV): every file's prediction, browsable, and the counts
    logger = _logger_beside(out, args.wandb_mode, {"command": "predict", "checkpoint": args.checkpoint,
                                                   "ensemble": args.ensemble, "inputs": args.inputs,
                                                   "calibrated": args.calibrated, "csv": str(out)})
    rows = [[str(file), predicted[index], float(predictions.probabilities[index].max()), ""] if index in predicted
            else [str(file), "", None, predictions.errors[index]] for index, file in enumerate(files)]
    logger.log_table("predict/predictions", ["file", "predicted", "probability", "error"], rows, step=0)
    logger.log_table("predict/class_counts", ["class", "images"],
                     [[name, counts.get(name, 0)] for name in predictions.classes], step=0)
    logger.summary({"images": len(files), "skipped": len(predictions.errors),
                    **{f"predicted_{name}": counts.get(name, 0) for name in predictions.classes}})
    logger.finish()


def command_evaluate(args) -> None:
    from toolkit.predict import evaluate_folder
    from toolkit.train.precision import precision_name

    out = Path(args.out or f"runs/evaluate-{time.strftime('%Y%m%d-%H%M%S')}")
    metrics = evaluate_folder(args.checkpoint, Path(args.data), out, classifier_batch_size(args), args.tta,
                              args.device, args.workers, held_out=args.held_out, mixed_precision=args.mixed_precision,
                              calibrated=args.calibrated, ensemble=args.ensemble, validation=args.validation)
    owner = "the runs'" if metrics["runs"] > 1 else "the run's"  # an --ensemble, or a file exported from several
    what = f"{owner} {metrics['n']} held-out images" if args.held_out else \
        f"{owner} {metrics['n']} validation images" if args.validation else f"{metrics['n']} images"
    members = metrics["ensemble"]
    precision = ", ".join(precision_name(name) for name in metrics["mixed_precision"].split(", "))
    temperature = (f"an ensemble of {len(members)} runs, temperatures "
                   + ", ".join(f"{m['temperature']:.3f}" for m in members) if members
                   else f"an ensemble of {metrics['runs']} runs in one graph"
                   if metrics["runs"] > 1 else f"temperature {metrics['temperature']:.3f}")
    print(f"accuracy {metrics['accuracy']:.4f} on {what}, loss {metrics['loss']:.4f}, "
          f"macro F1 {metrics['macro_f1']:.4f}, ECE {metrics['ece']:.4f} ({precision}; "
          f"{temperature})")
    if args.validation and args.calibrated:
        print("note: each run's temperature was fitted on its validation images, so the loss and calibration error "
              "on them flatter it; their accuracy does not depend on it (--no-calibrated: as trained)",
              file=sys.stderr)
    if metrics["training_images"]:
        print(f"WARNING: {metrics['training_images']} of these images were in the run's training set "
              f"(e.g. {metrics['training_image_examples'][0]}): this score is not a held-out one", file=sys.stderr)
    width = max(len(c) for c in metrics["classes"])
    print(f"{'class':<{width}}  precision  recall  F1")
    for i, name in enumerate(metrics["classes"]):
        print(f"{name:<{width}}  {metrics['precision'][i]:9.3f}  {metrics['recall'][i]:6.3f}  {metrics['f1'][i]:.3f}")
    for file, error in metrics["skipped"].items():
        print(f"skipped {file}: {error}", file=sys.stderr)
    config = {"command": "evaluate", "checkpoint": args.checkpoint, "ensemble": args.ensemble, "data": args.data,
              "held_out": args.held_out, "validation": args.validation, "calibrated": args.calibrated,
              "mixed_precision": metrics["mixed_precision"]}
    per_class = ("per_class", ["class", "precision", "recall", "F1", "images"],
                 [[name, metrics["precision"][i], metrics["recall"][i], metrics["f1"][i], metrics["per_class_total"][i]]
                  for i, name in enumerate(metrics["classes"])])
    scores = {key: metrics[key] for key in ("accuracy", "loss", "macro_f1", "ece", "n")}
    _log_scores(out, args.wandb_mode, config, scores, metrics["figures"], per_class)
    print(f"figures, predictions.csv and metrics.json in {out}")


def command_calibrate(args) -> None:
    from toolkit.predict import calibrate_checkpoint

    out = Path(args.out or f"runs/calibrate-{time.strftime('%Y%m%d-%H%M%S')}")
    result = calibrate_checkpoint(args.checkpoint, args.data, classifier_batch_size(args), args.device, args.workers,
                                  out)
    print(f"temperature {result['temperature_before']:.3f} -> {result['temperature']:.3f}, fitted on "
          f"{result['images']} images of {args.data} the run never trained on or held out; on them: expected "
          f"calibration error {result['ece_as_trained']:.4f} -> {result['ece_calibrated']:.4f}, loss "
          f"{result['loss_as_trained']:.4f} -> {result['loss_calibrated']:.4f}")
    for file, error in result["skipped"].items():
        print(f"skipped {file}: {error}", file=sys.stderr)
    print(f"written to {result['checkpoint']}/trainer_state.json: predict and evaluate apply it "
          "(--no-calibrated: as trained)")
    config = {"command": "calibrate", "checkpoint": result["checkpoint"], "data": args.data}
    scores = {key: result[key] for key in ("temperature_before", "temperature", "images", "accuracy", "ece_as_trained",
                                           "ece_calibrated", "loss_as_trained", "loss_calibrated")}
    _log_scores(out, args.wandb_mode, config, scores, result["figures"])
    print(f"reliability diagrams before and after, and calibration.json, in {out}")


def _log_scores(out: Path, wandb_mode: str, config: dict, scores: dict, figures: dict[str, str],
                table: tuple[str, list[str], list[list]] | None = None) -> None:
    """The W&B run of a command that scores a model once (evaluate, calibrate), in OUT: the scores under the
    command's name and as the run's summary, a (name, columns, rows) table if given, and the figures. Made after the
    work, so that a refusal leaves no run."""
    command = config["command"]
    logger = _tool_logger(out, out.name, wandb_mode, config)
    logger.log({f"{command}/{key}": value for key, value in scores.items()}, step=0)
    if table is not None:
        name, columns, rows = table
        logger.log_table(f"{command}/{name}", columns, rows, step=0)
    logger.log_images({f"{command}/{name}": Path(figure) for name, figure in figures.items()}, step=0)
    logger.summary(scores)
    logger.finish()


def command_report(args) -> None:
    from toolkit.report import build_report

    out = Path(args.out or f"runs/report-{time.strftime('%Y%m%d-%H%M%S')}")
    page = build_report([Path(d) for d in args.runs], out, args.title)
    figures = sorted((out / "figures").glob("*.png"))
    if args.wandb_mode != "disabled":
        logger = _tool_logger(out, out.name, args.wandb_mode, {"runs": args.runs, "command": "report"})
        logger.log_images({f"report/{path.stem}": path for path in figures}, step=0)
        logger.finish()
    print(f"report: {page} ({len(figures)} figures, also as PNG in {out / 'figures'})")


def command_export(args) -> None:
    from toolkit.export import export_onnx

    if (args.int8_images or args.int8_reduce_range) and not args.int8:
        option = "--int8_images" if args.int8_images else "--int8_reduce_range"
        raise UserError(f"{option} is an option of --int8 FOLDER: give --int8 too")
    record = export_onnx(args.checkpoint, args.out, args.opset, args.calibrated, args.ensemble, int8_folder=args.int8,
                         int8_images=args.int8_images, int8_reduce_range=args.int8_reduce_range)
    check = record["check"]
    print(f"[export] wrote {record['onnx']} ({record['bytes'] / 1e6:.1f} MB, ONNX opset {record['opset']}, "
          f"{record['precision']}), a {record['kind']}")
    for role in ("inputs", "outputs"):
        for name, meaning in record[role].items():
            print(f"[export] {role[:-1]} {name}: {meaning}")
    if record["kind"] == "classifier":
        runs = record.get("ensemble", [record])
        temperatures = ", ".join(f"{run['temperature']:.3f}" for run in runs)
        calibration = (f"temperature{'s' if len(runs) > 1 else ''} {temperatures} applied" if record["calibrated"]
                       else "as trained, no temperature (--no-calibrated)")
        mirrored = sum(run["flip_tta"] for run in runs)
        mirror = "" if not mirrored else (", with the mirror image" if mirrored == len(runs)
                                          else f", {mirrored} of the runs with the mirror image")
        print(f"[export] classes, in output order: {', '.join(record['classes'])} ({calibration}{mirror})")
        if len(runs) > 1:
            names = ", ".join(run["checkpoint"] for run in runs)
            print(f"[export] the mean of {len(runs)} runs' probabilities: {names}")
    shapes = " and ".join(" + ".join("x".join(map(str, shape)) for shape in trial) for trial in check["input_shapes"])
    graph = "the fp32 graph" if "int8" in record else "the graph"
    print(f"[export] {graph} checked with onnxruntime {check['onnxruntime']} on stand-in inputs of {shapes}: largest "
          f"difference from the PyTorch model {check['largest_difference']:.1e}")
    if "int8" in record:
        int8 = record["int8"]
        skipped = f", {int8['held_out_skipped']} held out by the run skipped" if int8["held_out_skipped"] else ""
        if record["kind"] == "classifier":
            print(f"[export] int8: ranges from {int8['calibration_images']} images of {int8['folder']}{skipped}; on "
                  f"{int8['check_images']} other images of it the int8 graph picks the fp32 graph's class for "
                  f"{int8['agreement']:.1%}, largest difference of any probability {int8['largest_difference']:.2f}")
        else:
            noise = int8["calibration_noise"]
            levels = " / ".join(int8["psnr_loss"])
            print(f"[export] int8: ranges from crops of {int8['calibration_images']} images of {int8['folder']}"
                  f"{skipped}, noisy at sigma {noise['sigma_min']:g}-{noise['sigma_max']:g}"
                  f"{' clipped' if noise['clip'] else ''}; on crops of {int8['check_images']} other images of it, "
                  f"mean PSNR at sigma {levels}: int8 " + " / ".join(f"{v:.2f}" for v in int8["psnr_int8"].values())
                  + " dB, fp32 " + " / ".join(f"{v:.2f}" for v in int8["psnr_fp32"].values()) + " dB (int8 "
                  + " / ".join(f"{-v:+.2f}" for v in int8["psnr_loss"].values()) + " dB)")
        if int8["weight_bits"] == 7:
            print("[export] int8: weights in 7 bits (--int8_reduce_range), safe from saturation on any CPU")
        elif int8["checked_with_vnni"]:
            print("[export] int8: checked on a CPU with VNNI; to serve on CPUs without it (AVX2 only), where 8-bit "
                  "weights' products can saturate, export with --int8_reduce_range (or check it there)")
        else:
            print("[export] int8: this CPU has no VNNI, so the check above ran with the 16-bit sums that can saturate "
                  "here; --int8_reduce_range (weights in 7 bits) avoids them")
    # as a W&B run too (files in OUT-wandb/ beside the .onnx): the file as a model artifact, what it takes in the config
    out = Path(record["onnx"])
    config = {"command": "export"} | {key: record[key] for key in ("kind", "checkpoint", "model", "inputs", "outputs",
                                                                    "opset", "classes", "calibrated", "ensemble",
                                                                    "precision", "int8")
                                      if key in record}
    logger = _logger_beside(out, args.wandb_mode, config)
    logger.log_artifact(re.sub(r"[^\w.-]", "-", out.stem), "model", out)
    logger.summary({"export/largest_difference": check["largest_difference"], "export/megabytes": record["bytes"] / 1e6}
                   | ({"export/int8_agreement": record["int8"]["agreement"]} if "agreement" in record.get("int8", {})
                      else {})
                   | {f"export/int8_psnr_loss_sigma_{level}": loss
                      for level, loss in record.get("int8", {}).get("psnr_loss", {}).items()})
    logger.finish()
    if logger.wandb_mode != "disabled":
        print(f"[export] W&B run ({logger.wandb_mode}): the ONNX file as a model artifact; local copy in "
              f"{logger.run_dir}")


def command_denoise(args) -> None:
    from toolkit.inference import denoise_files

    precision, device = denoiser_precision_and_device(args.mixed_precision, args.device, args.checkpoint)
    denoise_files(args.checkpoint, args.input, args.output, args.sigma, self_ensemble=args.self_ensemble,
                  precision=precision, device=device, tile_size=args.tile_size,
                  tile_margin=args.tile_margin, skip_existing=args.skip_existing)


def command_benchmark_denoiser(args) -> None:
    from toolkit.denoising_benchmark import (
        benchmark_denoiser,
        benchmark_table,
        log_benchmark,
        published_rows,
        write_benchmark,
    )
    from toolkit.train.denoise import TILE_MARGIN, TILE_SIZE
    from toolkit.train.tracking import choose_wandb_mode

    checkpoint = None if args.checkpoint == "none" else args.checkpoint
    if args.reduce < 1:
        raise UserError(f"--reduce takes a whole factor of at least 1, got {args.reduce}")
    model_options = [name for name, given in (("--self_ensemble", args.self_ensemble),
                                              ("--mixed_precision", args.mixed_precision != "no"),
                                              ("--tile_size", args.tile_size != TILE_SIZE),
                                              ("--tile_margin", args.tile_margin != TILE_MARGIN)) if given]
    if checkpoint is None and model_options:
        print(f"[benchmark] note: {', '.join(model_options)} not used: they set how a model denoises, and 'none' "
              "scores the noisy input and the baselines only")
    name, published = published_rows(Path(args.clean), "none" if args.reduce > 1 else args.published)
    baselines = tuple(args.baselines) + (("nlm",) if args.nlm and "nlm" not in args.baselines else ())
    precision, device = denoiser_precision_and_device(args.mixed_precision, args.device, checkpoint)
    wandb_choice = choose_wandb_mode(args.wandb_mode)  # (mode, reason), its network check made once
    examples = None if wandb_choice[0] == "disabled" else {}
    out = Path(args.out)
    progress_file = out.with_name(f"{out.stem}.progress.json")  # the scores so far: a stopped benchmark continues
    results = benchmark_denoiser(checkpoint, Path(args.clean), args.sigmas, baselines=baselines, blind=args.blind,
                                 max_images=args.max_images, self_ensemble=args.self_ensemble,
                                 validation_images=args.validation_images, precision=precision, device=device,
                                 reduction=args.reduce, tile_size=args.tile_size,
                                 tile_margin=args.tile_margin, examples=examples, progress_file=progress_file)
    results["published"] = {"set": name, "rows": published}
    table = benchmark_table(results, published=published)
    print("\n" + table)
    write_benchmark({**results, "table": table}, out)
    progress_file.unlink(missing_ok=True)
    print(f"results written to {out}")
    if examples is not None:  # the same in a W&B run, whose folder beside the JSON keeps it as files too
        config = {key: value for key, value in results.items() if key not in ("sigmas", "seconds")}
        logger = _logger_beside(out, args.wandb_mode, {**config, "command": "benchmark-denoiser"}, wandb_choice)
        log_benchmark(results, examples, logger)
        logger.finish()
        print(f"W&B run ({logger.wandb_mode}): table, figures and example images; local copy in {logger.run_dir}")


def command_compare_benchmarks(args) -> None:
    from toolkit.denoiser_comparison import (
        check_same_noisy_images,
        comparison_table,
        distinct_names,
        load_benchmark,
        paired_differences,
    )
    from toolkit.runs import write_json

    base_method = args.base_method or args.method
    paths = [Path(args.base), *map(Path, args.others)]
    base, *others = [load_benchmark(path) for path in paths]
    names = dict(zip(map(str, paths), distinct_names(paths)))  # stems, with folders where two stems are alike
    compared = {}
    for path, other in zip(paths[1:], others):
        check_same_noisy_images(base, other, str(paths[0]), str(path))
        compared[str(path)] = paired_differences(base, other, base_method, args.method, str(paths[0]), str(path),
                                                 args.sigmas)
        labels = [names[str(name)] + (f" ({method})" if base_method != args.method or method != "model" else "")
                  for name, method in ((paths[0], base_method), (path, args.method))]
        print(f"\n{path} against {paths[0]}:\n" + comparison_table(compared[str(path)], *labels))
    print(f"\nIntervals over the {base['images']} images scored: how much each mean difference depends on which "
          "images were picked, not how much a retrained model would move (compare a second seed's run for that).")
    out = Path(args.out)
    config = {"base": str(paths[0]), "base_method": base_method, "method": args.method, "command": "compare-benchmarks"}
    write_json(out, {**config, "compared": compared})  # a level with no finite pair: null, not NaN
    print(f"written to {out}")
    logger = _logger_beside(out, args.wandb_mode, config)
    rows = [[name, level["sigma"], level["base"], level["other"], level["difference"]["mean"],
             level["difference"]["low"], level["difference"]["high"], level["better"], level["images"]]
            for name, result in compared.items() for level in result["levels"]]
    logger.log_table("comparison/paired_psnr", ["other", "sigma", "base_psnr", "other_psnr", "difference", "low",
                                                "high", "images_better", "images"], rows, step=0)
    logger.summary({f"{names[name]}/difference_sigma{sigma:g}": difference
                    for name, sigma, _, _, difference, *_ in rows})
    logger.finish()


def command_wandb_report(args) -> None:
    from toolkit.wandb_report import wandb_report

    if not args.study and not args.publish:
        raise UserError("name a study folder (a comparison or a latent study), or --publish a definition")
    wandb_report(Path(args.study) if args.study else None, Path(args.out) if args.out else None,
                 Path(args.publish) if args.publish else None, args.wandb_mode)


def denoiser_precision_and_device(requested_precision: str, requested_device: str, checkpoint: str | None):
    """(precision, torch.device) of denoise / benchmark-denoiser: --device defaults to a CUDA GPU when there is one;
    --mixed_precision auto is bf16 where the CPU computes it natively and faster than fp32, fp32 on a GPU (one image
    at a time is a small step); an explicit bf16 where it is slow runs, with a warning. A file `toolkit export` wrote
    runs as it was written (fp32 or int8), in onnxruntime on the CPU."""
    from toolkit.inference import inference_device, is_exported_file, keep_fp32_exact
    from toolkit.train.precision import choose_mixed_precision

    if is_exported_file(checkpoint):
        if requested_precision != "no":
            raise UserError(f"--mixed_precision={requested_precision}: {checkpoint} is an exported file, which runs in "
                            "the precision it was exported in (fp32, or int8 with toolkit export --int8); leave "
                            "--mixed_precision out")
        if requested_device not in (None, "cpu"):
            raise UserError(f"--device={requested_device}: {checkpoint} is an exported file, which onnxruntime runs on "
                            "the CPU here; leave --device out, or pass the run directory to denoise on a GPU")
        return "no", inference_device("cpu")
    if requested_device is None:
        requested_device = "cuda" if _cuda() else "cpu"

    device = inference_device(requested_device)
    precision = choose_mixed_precision(requested_precision, device.type,
                                       log=lambda message: print(message, file=sys.stderr))
    keep_fp32_exact(device, precision)
    return precision, device


DENOISER_PRECISION_HELP = ("what the model runs in: no (fp32, the default and the README's protocol), bf16, or auto "
                           "(bf16 where the CPU computes it faster than fp32 (AMX, or AVX512-BF16 on AMD): about 2x "
                           "faster, ~0.005 dB lower PSNR measured)")
DENOISER_DEVICE_HELP = ("where the model runs (default: the CUDA GPU when torch sees one, else the CPU); fp32 on a GPU "
                        "is exact (no TF32); an exported .onnx file runs on the CPU. The noise and the scores are "
                        "computed on the CPU either way")

TILE_SIZE_HELP = ("an image larger than a tile of this side (plus {margin} px of context each way) is denoised one "
                  "tile at a time: the blind denoiser takes 1.8 GB for 12 megapixels in fp32 instead of 8.2, at the "
                  "same speed, and its output is the whole-image pass' to within one 8-bit level (default "
                  "%(default)s; 0: whole images)")


TILE_MARGIN_HELP = ("pixels of the neighbouring tiles each tile is denoised with, then cropped off (default "
                    "%(default)s: measured for the blind denoiser's network; a deeper model may want more: "
                    "scripts/tile_seams.py measures what each margin changes)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


SELF_ENSEMBLE_HELP = ("average the model's outputs over the image's 8 rotations and mirror images (8x the time; "
                      "typically a little higher PSNR)")


def classifier_batch_size(args) -> int:
    """--batch_size, or its default for the device: 8 on a CPU (EfficientNet-Lite0 scored 8.1 ms per image in batches
    of 8, 9.8 in 16, 16.0 in 64 on an AMD EPYC's 2 cores, freed memory kept: predict_files), 64 on a GPU."""
    return args.batch_size or (8 if args.device == "cpu" else 64)


CALIBRATED_HELP = ("probabilities divided by the temperature the run fitted on its validation images (--no-calibrated: "
                   "as trained; older runs hold 1 until `toolkit calibrate` fits one)")


def add_classifier_loading_arguments(parser: argparse.ArgumentParser) -> None:
    """--batch_size, --workers and --device, as predict, evaluate and calibrate take them."""
    parser.add_argument("--batch_size", type=at_least(1), default=None,
                        help="images per forward pass (default: 8 on a CPU, where larger batches ran slower, 64 on "
                        "a GPU)")
    parser.add_argument("--workers", type=at_least(1), default=2, help="decoding processes")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu",
                        help="where the model runs (default: the CUDA GPU when torch sees one, else the CPU)")


def add_classifier_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--tta, --mixed_precision, --calibrated and --ensemble, as predict and evaluate take them."""
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average with the mirrored image (default: as the model was evaluated)")
    parser.add_argument("--mixed_precision", choices=["auto", "no", "bf16", "fp16"], default=None,
                        help="default: the precision the run was trained with (stored in the checkpoint), "
                             "or fp32 where this device would emulate it or run it slower")
    parser.add_argument("--calibrated", action=argparse.BooleanOptionalAction, default=True, help=CALIBRATED_HELP)
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="RUN",
                        help="more runs trained on the same classes (other seeds of the recipe, other recipes), "
                        "given after the inputs: the probabilities are the mean of every run's, each predicting "
                        "with its own preprocessing, test-time flip, precision and temperature")


def add_wandb_mode_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """--wandb_mode, as every command that logs to W&B takes it (auto: online with an API key and a reachable
    server, else offline)."""
    from toolkit.train.tracking import WANDB_MODES

    parser.add_argument("--wandb_mode", default="auto", choices=WANDB_MODES, help=help)


def _logger_beside(out: Path, wandb_mode: str, config: dict, chosen: tuple[str, str] | None = None):
    """_tool_logger for a command whose output is the file `out`: the run's local files in OUT-wandb/ beside it."""
    return _tool_logger(out.with_name(f"{out.stem}-wandb"), out.stem, wandb_mode, config, chosen)


def add_denoiser_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """--self_ensemble, --mixed_precision, --device, --tile_size and --tile_margin, as denoise and benchmark-denoiser
    take them."""
    from toolkit.train.denoise import TILE_MARGIN, TILE_SIZE

    parser.add_argument("--self_ensemble", action="store_true", help=SELF_ENSEMBLE_HELP)
    parser.add_argument("--mixed_precision", choices=["no", "auto", "bf16"], default="no",
                        help=DENOISER_PRECISION_HELP)
    parser.add_argument("--device", default=None, help=DENOISER_DEVICE_HELP)  # None: the GPU when there is one
    parser.add_argument("--tile_size", type=int, default=TILE_SIZE, help=TILE_SIZE_HELP.format(margin=TILE_MARGIN))
    parser.add_argument("--tile_margin", type=int, default=TILE_MARGIN, help=TILE_MARGIN_HELP)


def at_least(minimum: int):
    """The argparse type of a whole-number option of `minimum` or more: anything else is refused as the command
    line is read (a batch of 0 images would otherwise gather every image into one)."""
    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"takes a whole number of {minimum} or more, got {text!r}")
        return value

    return whole_number


def output_file(text: str) -> str:
    """The argparse type of an option naming a file to write: refused at once, not after the work, when a folder
    is there or a file stands where one of its folders must go."""
    from toolkit.runs import file_in_the_way

    path = Path(text)
    if text and path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: name the file to write ({path / '<name>'})")
    blocking = file_in_the_way(path.parent) if text else None
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{blocking} is a file, so {text} cannot be written below it")
    return text


def output_folder(text: str) -> str:
    """The argparse type of an option naming a folder to write into (made if need be): refused at once when a file
    is there or where one of the folders above it must go."""
    from toolkit.runs import file_in_the_way

    blocking = file_in_the_way(Path(text)) if text else None
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{blocking} is a file: name a folder (new or existing) for the output")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolkit", description="scene-toolkit commands (training lives in recipes/)")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="look at a dataset").add_subparsers(dest="data_command", required=True)
    explore = data.add_parser("explore", help="images per class per split, one example per class, split balance")
    explore.add_argument("root", nargs="?", default="data/intel", help="dataset root (default data/intel; "
                         "'synthetic' for the built-in set)")
    explore.add_argument("--out", default="", type=output_folder, help="output folder (default runs/explore-<time>)")
    explore.add_argument("--val_fraction", type=float, default=0.1)
    explore.add_argument("--holdout_fraction", type=float, default=0.1)
    explore.add_argument("--seed", type=at_least(0), default=0)
    add_wandb_mode_argument(explore)
    explore.set_defaults(handler=command_explore)
    check = data.add_parser("check", help="find unreadable, mislabeled, duplicate, odd-sized or odd-mode images")
    check.add_argument("root", help="dataset root (Intel layout or <class>/<image>)")
    check.add_argument("--image_size", type=at_least(1), default=80, help="flag images smaller than this")
    check.add_argument("--json", default="", type=output_file,
                       help="where the JSON report goes (default data-check.json)")
    check.add_argument("--limit", type=at_least(0), default=12, help="examples listed per problem in the text report")
    check.add_argument("--workers", type=at_least(1), default=2, help="decoding processes")
    check.set_defaults(handler=command_check)

    bench = commands.add_parser("benchmark", help="measure loaders and training steps on this machine")
    bench.add_argument("--data", default="data/intel", help="dataset root (default data/intel, else synthetic)")
    bench.add_argument("--images", type=at_least(1), default=2400, help="images used for the loader measurements")
    bench.add_argument("--steps", type=at_least(1), default=8, help="timed training steps per model and setting")
    bench.add_argument("--num_workers", type=at_least(0), default=2, help="loader workers / FFCV threads")
    bench.add_argument("--only", nargs="*", default=[], help="sections to run: ceiling loaders steps pipeline compile")
    bench.add_argument("--precisions", nargs="*", default=None, choices=["fp32", "bf16", "fp16"],
                       help="precisions to time in 'steps' (default: fp32, and bf16 where the CPU has it natively)")
    bench.add_argument("--compile_recipes", nargs="+", default=None, metavar="RECIPE",
                       help="whose models the 'compile' section compiles, a minute or more each on a CPU: any of "
                       "cnn resnet18 fast_cnn efficientnet_lite0 blind_denoiser (default: cnn blind_denoiser)")
    bench.add_argument("--tiny", action="store_true", help="small widths, batch 4, 32 px: a check of the command "
                       "itself (seconds on any CPU), not a measurement")
    bench.add_argument("--out", default="bench-results.json", type=output_file, help="where the JSON goes")
    add_wandb_mode_argument(bench, help="also log the machine, the ceilings and the loader and step tables to a W&B "
                            "run (its local files in OUT-wandb/)")
    bench.set_defaults(handler=command_benchmark)

    pred = commands.add_parser("predict", help="classify images, folders or @lists with a trained classifier")
    pred.add_argument("checkpoint", help="a run directory or one of its checkpoints")
    pred.add_argument("inputs", nargs="+", help="image files, folders (recursive) or @FILE listing paths, one per "
                      "line (relative ones from the current folder; # starts a comment line)")
    pred.add_argument("--out", default="predictions.csv", type=output_file, help="CSV to write")
    pred.add_argument("--top_k", type=at_least(1), default=1, help="also list the k most likely classes")
    add_classifier_loading_arguments(pred)
    add_classifier_output_arguments(pred)
    add_wandb_mode_argument(pred, help="also log every file's prediction and the class counts to a W&B run (its "
                            "local files in OUT-wandb/, beside the CSV)")
    pred.set_defaults(handler=command_predict)

    ev = commands.add_parser("evaluate", help="full evaluation of a classifier on a labeled folder")
    ev.add_argument("checkpoint", help="a run directory or one of its checkpoints")
    ev.add_argument("data", help="a folder of <class>/<image> with the checkpoint's classes")
    ev.add_argument("--out", default="", type=output_folder, help="output folder (default runs/evaluate-<time>)")
    split = ev.add_mutually_exclusive_group()
    split.add_argument("--held_out", action="store_true",
                       help="score exactly the images the run held out of DATA's training folder (recorded in the "
                       "checkpoint), DATA being the data root the run trained on")
    split.add_argument("--validation", action="store_true",
                       help="score the images of DATA's training folder the run neither trained on nor held out (its "
                       "validation images; with --ensemble, those no run trained on or held out), to choose options "
                       "and ensembles on while the held-out images stay for reporting")
    add_classifier_loading_arguments(ev)
    add_classifier_output_arguments(ev)
    add_wandb_mode_argument(ev, help="the scores, the per-class table and the figures as a W&B run (job type evaluate)")
    ev.set_defaults(handler=command_evaluate)

    cal = commands.add_parser("calibrate", help="fit a classifier's calibration temperature after training")
    cal.add_argument("checkpoint", help="a run directory or one of its checkpoints (the newest is written)")
    cal.add_argument("data", help="the data root the run trained on: the temperature is fitted on its training "
                     "folder's images the run neither trained on nor held out (its validation images)")
    cal.add_argument("--out", default="", type=output_folder, help="output folder for calibration.json and the "
                     "reliability diagrams before and after (default runs/calibrate-<time>)")
    add_classifier_loading_arguments(cal)
    add_wandb_mode_argument(cal, help="the temperature, the scores before and after and the diagrams as a W&B run "
                            "(job type calibrate; its local files in the --out folder)")
    cal.set_defaults(handler=command_calibrate)

    rep = commands.add_parser("report", help="a self-contained HTML report from run directories")
    rep.add_argument("runs", nargs="+", help="run directories: classifier, denoiser, comparison, latent study, "
                     "or toolkit evaluate and calibrate output folders")
    rep.add_argument("--out", default="", type=output_folder, help="output folder (default runs/report-<time>)")
    rep.add_argument("--title", default="", help="page title")
    add_wandb_mode_argument(rep, help="also log the figures to a W&B run")
    rep.set_defaults(handler=command_report)

    exp = commands.add_parser("export", help="a trained model as an ONNX file (preprocessing included), checked "
                              "against PyTorch with onnxruntime")
    exp.add_argument("checkpoint", help="a run directory or one of its checkpoints (a classifier or a denoiser)")
    exp.add_argument("out", type=output_file, help="the .onnx file to write (replaced whole if it exists)")
    exp.add_argument("--opset", type=at_least(18), default=None, help="the ONNX opset (default: torch's exporter's)")
    exp.add_argument("--calibrated", action=argparse.BooleanOptionalAction, default=True,
                     help=f"a classifier's {CALIBRATED_HELP}")
    exp.add_argument("--ensemble", nargs="+", default=[], metavar="RUN",
                     help="more classifier runs of the same classes and image size (such as a comparison's other "
                     "seeds): one graph giving the mean of their probabilities, as predict --ensemble")
    exp.add_argument("--int8", default=None, metavar="FOLDER",
                     help="a classifier or a noise-conditioned denoiser in 8-bit integers (about twice onnxruntime's "
                     "fp32 speed on a CPU with VNNI; docs/commands.md): its activation ranges read from images of "
                     "FOLDER, like those it will see (e.g. data/intel/seg_train, or a denoiser's folder of clean "
                     "training images; images the run held out are skipped), then checked against the fp32 graph on "
                     "other images of FOLDER")
    exp.add_argument("--int8_images", type=at_least(8), default=None,
                     help="with --int8: how many images set the ranges (default 128 for a classifier, 32 for a "
                     "denoiser, a crop of each)")
    exp.add_argument("--int8_reduce_range", action="store_true",
                     help="with --int8: weights in 7 bits, for serving on CPUs without VNNI (AVX2 only, AVX512 without "
                     "VNNI), where 8-bit weights' products can saturate (0.4 points lower on Lite0's validation images "
                     "on a VNNI CPU)")
    add_wandb_mode_argument(exp, help="the ONNX file as a W&B model artifact, in a run of job type export (its local "
                            "files in OUT-wandb/ beside the file)")
    exp.set_defaults(handler=command_export)

    den = commands.add_parser("denoise", help="denoise an image or a folder with a trained denoiser")
    den.add_argument("checkpoint",
                     help="a run directory or checkpoint of recipes/blind_denoiser.py or recipes/autoencoder.py, or "
                     "a denoiser's .onnx file from toolkit export (fp32 or int8; onnxruntime runs it on the CPU)")
    den.add_argument("input", help="an image file or a folder of images")
    den.add_argument("output", help="output file or folder (PNG, same size as the input)")
    den.add_argument("--sigma", type=float, default=None,
                     help="noise std of the input on the 0-255 scale, for models told the noise level "
                     "(default: estimated per image and printed)")
    den.add_argument("--skip_existing", action="store_true",
                     help="leave out the images whose output file is there already: continues a stopped run (each "
                     "output appears whole, never half-written)")
    add_denoiser_inference_arguments(den)
    den.set_defaults(handler=command_denoise)

    bd = commands.add_parser("benchmark-denoiser", help="PSNR/SSIM on clean reference images at AWGN levels")
    bd.add_argument("checkpoint", help="a denoiser run directory or checkpoint, or its .onnx file from toolkit export "
                    "(fp32 or int8, run by onnxruntime on the CPU; 'none': baselines only)")
    bd.add_argument("--clean", required=True, help="folder of clean reference images, e.g. McMaster")
    bd.add_argument("--sigmas", type=float, nargs="+", default=[15, 25, 50], help="noise std on the 0-255 scale")
    bd.add_argument("--baselines", nargs="*", default=[], choices=["nlm", "bm3d"],
                    help="classical methods to score too: nlm (scikit-image), bm3d (pip install bm3d; non-commercial)")
    bd.add_argument("--nlm", action="store_true", help="same as --baselines nlm")
    bd.add_argument("--blind", action="store_true",
                    help="the sigma estimated from each noisy image, not the true one, for a noise-conditioned model "
                    "and the baselines alike (what each would be told in use)")
    bd.add_argument("--published", default="auto", help="published rows to print: auto (by folder name: McMaster), "
                    "mcmaster, none")
    add_denoiser_inference_arguments(bd)
    bd.add_argument("--validation_images", action="store_true",
                    help="score only the images of --clean that the model's run held out for validation (the "
                    "folder it trained on): choose options such as --self_ensemble here, never on the test set")
    bd.add_argument("--max_images", type=at_least(0), default=0, help=">0: only the first N images (a quick look)")
    bd.add_argument("--reduce", type=int, default=1, help="score each image made N times smaller each way by a box "
                    "filter first (2: a JPEG's half-resolution colour becomes full resolution); published rows are "
                    "for whole images, so none are shown")
    bd.add_argument("--out", default="denoiser-benchmark.json", type=output_file, help="where the JSON goes")
    add_wandb_mode_argument(bd, help="log the results, the published rows and example images to W&B (auto: online "
                            "with an API key and a reachable server, else offline; the run's folder is OUT's name "
                            "with -wandb)")
    bd.set_defaults(handler=command_benchmark_denoiser)
    cb = commands.add_parser("compare-benchmarks", help="benchmark-denoiser results against one, image by image, "
                             "with intervals")
    cb.add_argument("base", help="the benchmark-denoiser JSON (--out) to compare against")
    cb.add_argument("others", nargs="+", help="benchmark-denoiser JSONs of the same noisy images")
    cb.add_argument("--method", default="model", help="the row compared: model (the trained network), noisy, nlm or "
                    "bm3d")
    cb.add_argument("--base_method", default="", help="the base file's row, when it is another (e.g. bm3d: the "
                    "network against BM3D on the same file; default: --method)")
    cb.add_argument("--sigmas", type=float, nargs="+", default=None,
                    help="only these noise levels, 0-255 scale (default: every level both files scored)")
    cb.add_argument("--out", default="benchmark-comparison.json", type=output_file,
                    help="where the differences and intervals go (JSON)")
    add_wandb_mode_argument(cb, help="log the table of differences to W&B (auto: online with an API key and a "
                            "reachable server, else offline; the run's folder is OUT's name with -wandb)")
    cb.set_defaults(handler=command_compare_benchmarks)
    wr = commands.add_parser("wandb-report", help="a Weights & Biases Report of a comparison or a latent study")
    wr.add_argument("study", nargs="?", default="", help="the study's folder (compare_classifiers or latent_study)")
    wr.add_argument("--out", default="", type=output_folder,
                    help="where wandb_report.json goes (default: the study's folder)")
    wr.add_argument("--publish", default="", help="publish a definition written earlier (needs a key and network)")
    add_wandb_mode_argument(wr, help="auto: publish when an API key and the server are there; else write and say how")
    wr.set_defaults(handler=command_wandb_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.handler(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a closed output pipe, a file system's refusal, a bug
        return report_failure(error)
    return status or 0


if __name__ == "__main__":
    raise SystemExit(main())
