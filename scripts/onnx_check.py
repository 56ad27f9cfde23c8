"""A model exported with `toolkit export`, on real images: does onnxruntime give what PyTorch gives, and how fast does
each run it on this machine? Exports RUN (with --ensemble: RUN and those classifier runs, the mean of their
probabilities) to a temporary .onnx file (or reads --onnx), decodes N images of FOLDER once, runs the PyTorch models in
fp32 as the toolkit's commands do on a CPU and the graph with onnxruntime (its default threads), alternating twice, the
faster of each kept, and prints each one's images per second with onnxruntime's as a ratio to PyTorch's.

- A classifier: the images as toolkit predict decodes them, in batches of --batch_size (predict's CPU default, 8);
  prints the agreement of the predicted classes and the largest difference of any probability. --int8 FOLDER: also
  the graph in 8-bit integers (toolkit export --int8 FOLDER), as a third way. --held_out: FOLDER is the data root
  the run trained on, the images those it held out, and each way's accuracy on them is printed too.
- A denoiser: each clean image with Gaussian noise of --sigma (0-255, seeded, not clipped), denoised whole, one image at
  a time, as toolkit denoise does; prints the largest difference of any pixel value and the mean PSNR of each.
  --int8 FOLDER (a folder of clean images, e.g. the training folder) and --held_out (FOLDER is the folder of clean
  images the run trained on, the images those it held out for validation) as for a classifier.

    python scripts/onnx_check.py RUN FOLDER [--images 400] [--batch_size 8] [--onnx model.onnx] [--ensemble RUN...]
    python scripts/onnx_check.py RUN data/intel --held_out --images 2000 --int8 data/intel/seg_train
    python scripts/onnx_check.py DENOISER_RUN data/denoise/McMaster --sigma 25
    python scripts/onnx_check.py DENOISER_RUN data/denoise/CBSD432 --held_out --int8 data/denoise/CBSD432 --sigma 25
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path


def alternately(ways: dict, rounds: int = 2) -> tuple[dict, dict]:
    """({name: output}, {name: fastest seconds}) of each way run `rounds` times, the ways alternating."""
    outputs, seconds = {}, {name: [] for name in ways}
    for _ in range(rounds):
        for name, run in ways.items():
            started = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - started)
    return outputs, {name: min(times) for name, times in seconds.items()}


def check_classifier(sessions: dict, runs: list, files: list[Path], labels: list[int] | None,
                     batch_size: int) -> tuple[str, str, dict]:
    """(what was run, the verdict, {way: fastest seconds}) for a classifier or an ensemble of them, run by PyTorch and
    by each onnxruntime session of `sessions` ({way: session}); with labels, each way's accuracy too."""
    import numpy as np
    import torch

    from toolkit.data.images import load_rgb
    from toolkit.train.evaluate import classifier_outputs

    state = runs[0][1]
    pixels = np.stack([load_rgb(file, state.image_size) for file in files]).transpose(0, 3, 1, 2).copy()
    batches = [pixels[start:start + batch_size] for start in range(0, len(pixels), batch_size)]

    def scored(batch: np.ndarray) -> torch.Tensor:
        """The mean of the runs' calibrated probabilities, as predict (--ensemble) gives it."""
        images = torch.from_numpy(batch)
        stacked = torch.stack([classifier_outputs(model, images, run.preprocessing["mean"], run.preprocessing["std"],
                                                  run.flip_tta, run.temperature) for model, run in runs])
        return (torch.logsumexp(stacked, dim=0) - np.log(len(runs))).exp()

    def with_pytorch() -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([scored(batch).numpy() for batch in batches])

    def with_onnxruntime(session) -> np.ndarray:
        return np.concatenate([session.run(["probabilities"], {"images": batch})[0] for batch in batches])

    ways = {"PyTorch": with_pytorch} | {way: functools.partial(with_onnxruntime, session)
                                        for way, session in sessions.items()}
    outputs, seconds = alternately(ways)
    verdict = []
    for way in sessions:
        agree = int((outputs["PyTorch"].argmax(1) == outputs[way].argmax(1)).sum())
        verdict.append(f"{way}: predicted class the same as PyTorch's for {agree} of {len(files)}; largest "
                       f"difference of any probability {np.abs(outputs['PyTorch'] - outputs[way]).max():.1e}")
    if labels is not None:
        verdict.append("accuracy: " + ", ".join(f"{way} {np.mean(outputs[way].argmax(1) == np.array(labels)):.2%}"
                                                for way in ways))
    models = state.model if len(runs) == 1 else f"the mean of {len(runs)} runs of {state.model}"
    return f"{models} at {state.image_size}px, batches of {batch_size}", "\n".join(verdict), seconds


def check_denoiser(sessions: dict, model, state, files: list[Path], sigma: float) -> tuple[str, str, dict]:
    """(what was run, the verdict, {way: fastest seconds}) for a denoiser, run by PyTorch and by each onnxruntime
    session of `sessions` ({way: session})."""
    import numpy as np
    import torch

    from toolkit.data.images import load_for_restoration
    from toolkit.train.denoise import denoise

    rng = np.random.default_rng(0)
    cleans = [load_for_restoration(file)[0].transpose(2, 0, 1)[None] for file in files]  # (1, 3, H, W) in [0, 1]
    noisy = [(clean + rng.normal(0, sigma / 255, clean.shape)).astype(np.float32) for clean in cleans]
    level = np.array([sigma], np.float32)

    def with_pytorch() -> list:
        with torch.no_grad():
            return [denoise(model, torch.from_numpy(image), torch.from_numpy(level) / 255, state.conditioned)
                    .clamp(0, 1).numpy() for image in noisy]

    def with_onnxruntime(session) -> list:
        return [session.run(["denoised"], {"noisy": image, **({"sigma": level} if state.conditioned else {})})[0]
                for image in noisy]

    ways = {"PyTorch": with_pytorch} | {way: functools.partial(with_onnxruntime, session)
                                        for way, session in sessions.items()}
    outputs, seconds = alternately(ways)

    def mean_psnr(denoised: list) -> float:
        return float(np.mean([10 * np.log10(1 / np.mean((out.astype(np.float64) - clean) ** 2))
                              for out, clean in zip(denoised, cleans)]))

    psnr = {way: mean_psnr(outputs[way]) for way in ways}
    differences = "; ".join(
        f"{way} {max(float(np.abs(a - b).max()) for a, b in zip(outputs['PyTorch'], outputs[way])):.1e}"
        for way in sessions)
    return (f"{state.model}, sigma {sigma:g} (not clipped, seed 0), whole images one at a time",
            "mean PSNR: " + ", ".join(f"{way} {value:.4f} dB" for way, value in psnr.items())
            + f"; largest difference of any pixel value from PyTorch's (of 1): {differences}", seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a classifier's or denoiser's run directory or checkpoint")
    parser.add_argument("folder", help="a folder of images (searched recursively), e.g. data/intel/seg_train")
    parser.add_argument("--images", type=int, default=400, help="how many, spread evenly over the sorted files")
    parser.add_argument("--batch_size", type=int, default=8, help="a classifier's images per call, both ways")
    parser.add_argument("--sigma", type=float, default=25.0, help="a denoiser's noise level, 0-255")
    parser.add_argument("--onnx", default="", help="an exported file of this run; default: export it now")
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="RUN", help="more runs, as toolkit export takes")
    parser.add_argument("--int8", default="", metavar="CALIBRATION_FOLDER",
                        help="also export it in int8 (toolkit export --int8) and run that graph too")
    parser.add_argument("--int8_images", type=int, default=None,
                        help="with --int8: the images that set its ranges (toolkit export's default)")
    parser.add_argument("--int8_reduce_range", action="store_true",
                        help="with --int8: weights in 7 bits, as toolkit export --int8_reduce_range (for CPUs "
                        "without VNNI)")
    parser.add_argument("--held_out", action="store_true", help="a classifier: FOLDER is the data root the run "
                        "trained on, and the images are the ones it held out (--images of them), with their labels: "
                        "each way's accuracy too; a denoiser: FOLDER is the folder of clean images it trained on, and "
                        "the images are the ones it held out for validation")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime
    import torch

    from toolkit.data.folders import list_image_files
    from toolkit.export import export_onnx
    from toolkit.inference import load_trained_model
    from toolkit.memory import keep_freed_memory
    from toolkit.models import is_denoiser
    from toolkit.predict import held_out_images
    from toolkit.train.precision import describe_cpu

    runs = [load_trained_model(run, "cpu") for run in (args.run, *args.ensemble)]
    denoiser = is_denoiser(runs[0][1].model)
    labels = None
    if args.held_out and denoiser:
        from toolkit.denoising_benchmark import validation_images_of

        files = validation_images_of(args.run, args.folder, log=lambda message: print(message, file=sys.stderr))
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(args.images, len(files)))]
    elif args.held_out:
        files, labels = held_out_images(args.folder, [state for _, state in runs], [args.run, *args.ensemble])
        chosen = np.linspace(0, len(files) - 1, min(args.images, len(files))).astype(int)
        files, labels = [files[i] for i in chosen], [labels[i] for i in chosen]
    else:
        files = list_image_files(Path(args.folder))
        if not files:
            raise SystemExit(f"{args.folder} holds no images")
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(args.images, len(files)))]
    sessions = {}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(args.onnx) if args.onnx else Path(scratch) / "model.onnx"
        if not args.onnx:
            export_onnx(args.run, path, ensemble=args.ensemble, log=lambda message: print(message, file=sys.stderr))
        sessions["onnxruntime"] = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        if args.int8:
            quantized = Path(scratch) / "int8.onnx"
            export_onnx(args.run, quantized, ensemble=args.ensemble, int8_folder=args.int8,
                        int8_images=args.int8_images, int8_reduce_range=args.int8_reduce_range,
                        log=lambda message: print(message, file=sys.stderr))
            sessions["onnxruntime int8"] = onnxruntime.InferenceSession(str(quantized),
                                                                        providers=["CPUExecutionProvider"])
    keep_freed_memory()
    if denoiser:
        what, verdict, seconds = check_denoiser(sessions, *runs[0], files, args.sigma)
    else:
        what, verdict, seconds = check_classifier(sessions, runs, files, labels, args.batch_size)
    rate = {name: len(files) / value for name, value in seconds.items()}
    source = f"the run's held-out images of {args.folder}" if args.held_out else f"images of {args.folder}"
    print(f"{len(files)} {source}, {what}, fp32{' and int8' if args.int8 else ''}; {describe_cpu()}; torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}")
    print(verdict)
    print("images per second: PyTorch " + f"{rate['PyTorch']:.1f}, " + ", ".join(
        f"{way} {rate[way]:.1f} ({rate[way] / rate['PyTorch']:.2f}x PyTorch)" for way in sessions))


if __name__ == "__main__":
    main()
