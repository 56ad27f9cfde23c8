"""A classifier exported with `toolkit export`, on real images: does onnxruntime predict what PyTorch predicts, and how
fast does each score them on this machine? Exports RUN (with --ensemble: RUN and those runs, the mean of their
probabilities) to a temporary .onnx file (or reads --onnx), decodes N images of FOLDER once as toolkit predict does, and
scores them with the PyTorch models (fp32, batches of --batch_size, freed memory kept, as predict scores on a CPU) and
with onnxruntime (its default threads), alternating twice, the faster of each kept. Prints the agreement of the
predicted classes, the largest difference of any probability, and each one's images per second with onnxruntime's as a
ratio to PyTorch's.

    python scripts/onnx_check.py RUN FOLDER [--images 400] [--batch_size 8] [--onnx model.onnx] [--ensemble RUN...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a classifier's run directory or checkpoint")
    parser.add_argument("folder", help="a folder of images (searched recursively), e.g. data/intel/seg_train")
    parser.add_argument("--images", type=int, default=400, help="how many, spread evenly over the sorted files")
    parser.add_argument("--batch_size", type=int, default=8, help="images per call, both ways (predict's CPU default)")
    parser.add_argument("--onnx", default="", help="an exported file of this run; default: export it now")
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="RUN", help="more runs, as toolkit export takes")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime
    import torch

    from toolkit.data.folders import list_image_files
    from toolkit.data.images import load_rgb
    from toolkit.export import export_onnx
    from toolkit.memory import keep_freed_memory
    from toolkit.predict import load_classifier
    from toolkit.train.evaluate import classifier_outputs
    from toolkit.train.precision import describe_cpu

    files = list_image_files(Path(args.folder))
    if not files:
        raise SystemExit(f"{args.folder} holds no images")
    files = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(args.images, len(files)))]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(args.onnx) if args.onnx else Path(scratch) / "model.onnx"
        if not args.onnx:
            export_onnx(args.run, path, ensemble=args.ensemble, log=lambda message: print(message, file=sys.stderr))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        keep_freed_memory()
        runs = [load_classifier(run, "cpu") for run in (args.run, *args.ensemble)]
        state = runs[0][1]
        pixels = np.stack([load_rgb(file, state.image_size) for file in files]).transpose(0, 3, 1, 2).copy()
        batches = [pixels[start:start + args.batch_size] for start in range(0, len(pixels), args.batch_size)]

        def scored(batch: np.ndarray) -> torch.Tensor:
            """The mean of the runs' calibrated probabilities, as predict (--ensemble) gives it."""
            images = torch.from_numpy(batch)
            stacked = torch.stack([classifier_outputs(model, images, run.preprocessing["mean"],
                                                      run.preprocessing["std"], run.flip_tta, run.temperature)
                                   for model, run in runs])
            return (torch.logsumexp(stacked, dim=0) - np.log(len(runs))).exp()

        def with_pytorch() -> np.ndarray:
            with torch.no_grad():
                return np.concatenate([scored(batch).numpy() for batch in batches])

        def with_onnxruntime() -> np.ndarray:
            return np.concatenate([session.run(["probabilities"], {"images": batch})[0] for batch in batches])

        seconds = {"pytorch": [], "onnxruntime": []}
        outputs = {}
        for _ in range(2):
            for name, score in (("pytorch", with_pytorch), ("onnxruntime", with_onnxruntime)):
                started = time.perf_counter()
                outputs[name] = score()
                seconds[name].append(time.perf_counter() - started)
    torch_probabilities, onnx_probabilities = outputs["pytorch"], outputs["onnxruntime"]
    agree = int((torch_probabilities.argmax(1) == onnx_probabilities.argmax(1)).sum())
    rate = {name: len(files) / min(times) for name, times in seconds.items()}
    models = state.model if len(runs) == 1 else f"the mean of {len(runs)} runs of {state.model}"
    print(f"{len(files)} images of {args.folder} at {state.image_size}px, {models}, batches of {args.batch_size}, "
          f"fp32; {describe_cpu()}; torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{onnxruntime.__version__}")
    print(f"predicted class: the same for {agree} of {len(files)}; largest difference of any probability "
          f"{np.abs(torch_probabilities - onnx_probabilities).max():.1e}")
    print(f"images per second: PyTorch {rate['pytorch']:.1f}, onnxruntime {rate['onnxruntime']:.1f} "
          f"({rate['onnxruntime'] / rate['pytorch']:.2f}x PyTorch)")


if __name__ == "__main__":
    main()
