"""`toolkit benchmark`: what this machine does with the toolkit, measured in one run.

Sections (all by default):
    ceiling   fp32 (and bf16) matmul GFLOP/s: the practical arithmetic ceiling of these cores
    loaders   the study's loader (ImageFolder + PIL resize + flip, DataLoader) vs FFCV loaders
              (raw pixels at the training size; JPEG at full size decoded and resized), img/s,
              ratios against the study's loader, and FFCV start-up (compilation) time
    steps     training-step throughput of every recipe's model at the recipe's own batch and size (the
              blind denoiser's included), per memory format and precision, achieved GFLOP/s and its
              share of the matmul ceiling of that precision (bf16 steps against the bf16 matmul).
              Emulated bf16 (CPUs without AMX/AVX512-BF16) is not timed unless asked for
              (--precisions fp32 bf16): `auto` never picks it there.
    pipeline  the real loop (FFCV loader + CNN step): share of step time spent waiting for data
    compile   torch.compile against eager on the study CNN's and the blind denoiser's steps: compile
              time, step times measured in interleaved pairs, speed-up and the steps it takes to pay
Everything is printed as tables and written to one JSON file.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.runs import write_json
from toolkit.train.precision import autocast_dtype

SECTIONS = ("ceiling", "loaders", "steps", "pipeline", "compile")
COMPILED_RECIPES = ("cnn", "blind_denoiser")  # the compile section's models by default: the two long CPU runs


def machine_description() -> dict:
    from toolkit.train.precision import cpu_bf16_is_faster, cpu_has_native_bf16, cpu_model_name, describe_cpu

    return {"cpu": cpu_model_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "native_bf16": cpu_has_native_bf16(), "bf16_faster": cpu_bf16_is_faster(),
            "python": platform.python_version(), "description": describe_cpu(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _timed(action, min_seconds: float = 1.0, min_repeats: int = 3) -> float:
    """Seconds per call of `action`, after one warm-up call."""
    action()
    repeats, started = 0, time.perf_counter()
    while repeats < min_repeats or time.perf_counter() - started < min_seconds:
        action()
        repeats += 1
    return (time.perf_counter() - started) / repeats


# --tiny checks a command rather than measuring: its matmul ceiling timed once, briefly
TINY_CEILING_TIMING = {"trials": 1, "min_seconds": 0.1}


def measure_matmul(size: int = 2048, dtype=torch.float32, device: torch.device | str = "cpu",
                   trials: int = 3, min_seconds: float = 1.0) -> float:
    """GFLOP/s of a size x size matmul on `device` (the CPU by default): the best of `trials` timings of at
    least `min_seconds` each, since a ceiling is the best the cores sustain (one timing on a shared virtual
    machine read 116 GFLOP/s where the best was 139, and training steps then showed above 100% of it)."""
    device = torch.device(device)
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))

    def product():
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return 2 * size**3 / min(_timed(product, min_seconds) for _ in range(trials)) / 1e9


def measure_study_loader(folder: Path, image_size: int, batch_size: int, num_workers: int, images: int) -> dict:
    """The study's pipeline: ImageFolder, PIL Resize((r, r)), flip, ToTensor, Normalize; DataLoader."""
    import torchvision
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    dataset = torchvision.datasets.ImageFolder(str(folder), transform=transform)
    subset = Subset(dataset, np.random.default_rng(0).permutation(len(dataset))[:images].tolist())
    loader = DataLoader(subset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        persistent_workers=False)
    started = time.perf_counter()
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are not steady state
    first = time.perf_counter()
    count = sum(batch[0].shape[0] for batch in iterator)
    elapsed = time.perf_counter() - first
    return {"images_per_s": count / elapsed, "startup_s": first - started, "images": count}


def measure_ffcv_loader(stored, indices, image_size: int, batch_size: int, num_workers: int,
                        with_transforms: bool = True) -> dict:
    from toolkit.data.augment import normalize, random_flip, step_generator
    from toolkit.data.loaders import make_loader

    started = time.perf_counter()
    loader = make_loader(stored, indices, batch_size, train=True, image_size=image_size,
                         device=torch.device("cpu"), num_workers=num_workers)
    iterator = iter(loader)
    next(iterator)  # FFCV compiles its pipeline with numba on the first batch
    first = time.perf_counter()
    count = 0
    for step, (images, _) in enumerate(iterator):
        if with_transforms:  # the same work as the study's pipeline: flip and normalise every image
            normalize(random_flip(images, step_generator(images.device, 0, step)))
        count += images.shape[0]
    elapsed = time.perf_counter() - first
    return {"images_per_s": count / elapsed, "startup_s": first - started, "images": count}


def random_input_train_step(build, batch_size: int, image_size: int, precision: str, channels_last: bool,
                            device: torch.device | str = "cpu", kind: str = "classifier",
                            split: int = 0, compiled: bool = False) -> tuple[Callable[[], None], float]:
    """(step, forward FLOPs per image): step() runs one forward + backward + Adam step of the model build()
    returns on fixed random inputs, on `device` (waiting for a GPU's kernels to finish).

    precision: "fp32", "bf16" or "fp16" (autocast; fp16 without a loss scaler, which costs little).
    kind "denoiser": an MSE step on noisy inputs (with a noise level for conditioned models).
    split > 0 (EfficientNet's top mode): only blocks[split:] train, on the frozen lower blocks' outputs.
    compiled: the model runs through torch.compile (its first step compiles)."""
    from toolkit.models.summary import forward_flops

    device = torch.device(device)
    torch.manual_seed(0)
    model = build()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(batch_size, 3, image_size, image_size)
    extra = (torch.full((batch_size,), 0.1),) if getattr(model, "conditioned", False) else ()
    if split:
        with torch.no_grad():
            images = model.eval().bottom(images, split)  # (B, C, h, w): what the cached features look like
        flops = forward_flops(_Upper(model, split), tuple(images.shape[1:]))
    else:
        flops = forward_flops(model, (3, image_size, image_size), *(e[:1] for e in extra))
    model = model.to(device, memory_format=memory_format).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = images.to(device).to(memory_format=memory_format)
    extra = tuple(e.to(device) for e in extra)
    labels = torch.randint(0, 6, (batch_size,), device=device)
    dtype = autocast_dtype(precision)
    runnable = torch.compile(model) if compiled else model

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if kind == "denoiser":
                loss = F.mse_loss(runnable(images, *extra).float(), images)
            else:
                loss = F.cross_entropy((runnable(images, split) if split else runnable(images)).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":  # kernels run asynchronously: time them, not their launches
            torch.cuda.synchronize(device)

    return step, flops


def measure_train_step(build, batch_size: int, image_size: int, precision: str, channels_last: bool,
                       steps: int, device: torch.device | str = "cpu", kind: str = "classifier",
                       split: int = 0) -> dict:
    """Images/s and achieved GFLOP/s of random_input_train_step's step (the same arguments), over `steps` steps
    after one untimed."""
    step, flops = random_input_train_step(build, batch_size, image_size, precision, channels_last, device, kind,
                                          split)
    seconds = _timed(step, min_seconds=0.0, min_repeats=steps)
    # backward costs about twice the forward: 3x forward FLOPs per image per step
    return {"images_per_s": batch_size / seconds, "gflop_per_s": 3 * flops * batch_size / seconds / 1e9,
            "step_s": seconds, "forward_gflop_per_image": flops / 1e9}


class _Upper(torch.nn.Module):
    """The trained upper part of a split EfficientNet, for counting its FLOPs."""

    def __init__(self, model, split: int):
        super().__init__()
        self.model, self.split = model, split

    def forward(self, features):
        return self.model(features, self.split)


def measure_data_wait(stored, indices, image_size: int, batch_size: int, num_workers: int, steps: int) -> dict:
    """Run the CNN recipe's step on FFCV batches: how much of each step is spent waiting for data."""
    from toolkit.data.augment import STUDY_MEAN, STUDY_STD, normalize, random_flip, step_generator
    from toolkit.data.loaders import make_loader
    from toolkit.models.cnn import SceneCNN

    torch.manual_seed(0)
    model = SceneCNN(image_size=image_size).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=9e-4)
    loader = make_loader(stored, indices, batch_size, train=True, image_size=image_size,
                         device=torch.device("cpu"), num_workers=num_workers)
    iterator = iter(loader)
    next(iterator)
    waiting = computing = 0.0
    done = 0
    while done < steps:
        before = time.perf_counter()
        try:
            images, labels = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        fetched = time.perf_counter()
        images = random_flip(images, step_generator(images.device, 0, done))
        loss = F.cross_entropy(model(normalize(images, STUDY_MEAN, STUDY_STD)), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        waiting += fetched - before
        computing += time.perf_counter() - fetched
        done += 1
    return {"data_wait_share": waiting / (waiting + computing), "steps": done,
            "images_per_s": done * batch_size / (waiting + computing)}


def measure_compile(build, batch_size: int, image_size: int, steps: int, kind: str = "classifier") -> dict:
    """torch.compile against eager on one model's training step (random_input_train_step's, fp32, channels-last):
    the compile time (the compiled first step less the eager first step) and the step times, measured in
    `steps` pairs, eager then compiled, after 2 untimed steps each. Pairs, not two blocks of steps: on a shared
    machine the cores' speed drifts within a minute, and both halves of a pair see the same drift; the median
    of the pairs' ratios is the speed-up."""
    made = {}
    for compiled in (False, True):
        step, _ = random_input_train_step(build, batch_size, image_size, "fp32", channels_last=True, kind=kind,
                                          compiled=compiled)
        started = time.perf_counter()
        step()  # compiles when compiled
        made[compiled] = {"step": step, "first_step_s": time.perf_counter() - started}
        for _ in range(2):
            step()
    seconds = {False: [], True: []}
    for _ in range(max(1, steps)):
        for compiled in (False, True):
            started = time.perf_counter()
            made[compiled]["step"]()
            seconds[compiled].append(time.perf_counter() - started)
    ratios = [eager / compiled for eager, compiled in zip(seconds[False], seconds[True])]
    results = {("compiled" if compiled else "eager"): {"first_step_s": made[compiled]["first_step_s"],
                                                        "step_s": statistics.median(seconds[compiled])}
               for compiled in (False, True)}
    results["speedup"] = statistics.median(ratios)
    results["pairs"] = len(ratios)
    saved = results["eager"]["step_s"] * (1 - 1 / results["speedup"])  # seconds saved per step at that speed-up
    overhead = results["compiled"]["first_step_s"] - results["eager"]["first_step_s"]
    results["compile_s"] = overhead
    results["break_even_steps"] = max(0.0, overhead) / saved if saved > 0 else None
    return results


def recipe_models(tiny: bool = False) -> dict:
    """name: {"build", "batch", "image_size", "kind", "split"}: each recipe's model at its own Config defaults
    (batch, first training size; EfficientNet's top mode trains blocks[11:] on cached features), read from the
    recipes themselves. tiny=True: the same networks at small widths, batch 4 and 32 px (seconds on any CPU)."""
    from toolkit.config import parse_kwargs, parse_sizes
    from toolkit.models import build_model
    from toolkit.models.efficientnet_lite import NETWORK_NAMES, frozen_blocks
    from toolkit.recipes import recipe_defaults

    cnn, resnet, fast = recipe_defaults("cnn"), recipe_defaults("resnet18"), recipe_defaults("fast_cnn")
    lite, blind = recipe_defaults("efficientnet_lite0"), recipe_defaults("blind_denoiser")
    widths = [8, 16, 16, 32] if tiny else parse_sizes("widths", fast.widths)
    blind_kwargs = parse_kwargs("model_kwargs", blind.model_kwargs) | {"conditioned": True}
    if tiny:
        blind_kwargs["widths"] = (8, 16, 32, 64)
    models = {
        "SceneCNN (cnn)": {"build": lambda: build_model({"name": "SceneCNN", "kwargs": {
            "width": 4 if tiny else cnn.width, "image_size": 32 if tiny else cnn.image_size}}),
            "batch": cnn.batch_size, "image_size": cnn.image_size},
        "ResNet18 (resnet18)": {"build": lambda: build_model({"name": "resnet18_classifier", "kwargs": {}}),
                                "batch": resnet.batch_size, "image_size": resnet.image_size},
        "FastResNet (fast_cnn)": {"build": lambda: build_model({"name": "FastResNet", "kwargs": {"widths": widths}}),
                                  "batch": fast.batch_size,
                                  "image_size": parse_sizes("train_image_sizes", fast.train_image_sizes)[0]},
        f"{NETWORK_NAMES[lite.model]}, {lite.mode} mode (efficientnet_lite0)": {
            "build": lambda: build_model({"name": lite.model, "kwargs": {"num_classes": 6}}),
            "batch": lite.batch_size, "image_size": lite.image_size,  # top mode: from the recipe's block on
            "split": frozen_blocks(build_model({"name": lite.model, "kwargs": {}}), lite.mode, lite.train_from_block)},
        f"{blind.model} (blind_denoiser)": {
            "build": lambda: build_model({"name": blind.model, "kwargs": blind_kwargs}),
            "batch": blind.batch_size, "image_size": blind.patch_size, "kind": "denoiser"},
    }
    for name, entry in models.items():
        entry["recipe"] = name[name.rindex("(") + 1:-1]  # "SceneCNN (cnn)" -> "cnn"
        entry.setdefault("kind", "classifier")
        entry.setdefault("split", 0)
        if tiny:
            entry.update(batch=4, image_size=32)
    return models


def _print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def run_benchmark(data: str, images: int, out: Path, sections: list[str], steps: int, num_workers: int,
                  precisions: list[str] | None = None, tiny: bool = False,
                  compile_recipes: list[str] | None = None) -> dict:
    from toolkit.data.beton import cached_beton
    from toolkit.data.classification import find_data_root
    from toolkit.data.folders import find_split, scan_labeled_folder
    from toolkit.errors import UserError
    from toolkit.recipes import recipe_defaults

    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise UserError(f"unknown benchmark sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    sections = sections or list(SECTIONS)
    models = recipe_models(tiny) if {"steps", "compile"} & set(sections) else {}  # reads every recipe's defaults
    compile_recipes = compile_recipes or COMPILED_RECIPES
    recipes = [entry["recipe"] for entry in models.values()]
    unknown = set(compile_recipes) - set(recipes)
    if "compile" in sections and unknown:
        raise UserError(f"--compile_recipes: unknown recipes {sorted(unknown)}; choose from {', '.join(recipes)}")
    torch.set_num_threads(os.cpu_count() or 1)
    from toolkit.memory import keep_freed_memory

    kept = keep_freed_memory()  # as every training run keeps it (start_run): the steps timed as they train
    results = {"machine": machine_description(), "command": "toolkit benchmark", "sections": sections, "tiny": tiny,
               "freed_memory_kept": kept}
    native_bf16 = results["machine"]["native_bf16"]
    print(f"[benchmark] {results['machine']['description']}")

    # the ceiling of each precision a training step below is timed in (bf16's where it is native or asked for)
    ceilings = {}
    timing = TINY_CEILING_TIMING if tiny else {}
    if {"ceiling", "steps"} & set(sections):
        ceilings["fp32"] = measure_matmul(**timing)
        if native_bf16 or "bf16" in (precisions or []):
            ceilings["bf16"] = measure_matmul(dtype=torch.bfloat16, **timing)
        results["ceiling"] = {f"{dtype}_matmul_gflop_per_s": rate for dtype, rate in ceilings.items()}
    if "ceiling" in sections:
        timed = "one short timing, --tiny" if tiny else "best of 3"
        _print_table(f"matmul 2048x2048 (the arithmetic ceiling; {timed})", ["dtype", "GFLOP/s"],
                     [[dtype, rate] for dtype, rate in ceilings.items()])

    study_cnn = recipe_defaults("cnn")  # the loaders and the real loop at the study CNN's settings
    size = study_cnn.image_size
    root, synthetic = find_data_root(data)
    results["data"] = {"root": str(root), "synthetic": synthetic}
    needs_data = {"loaders", "pipeline"} & set(sections)
    if needs_data:
        folder = find_split(root, "seg_train")
        listing = scan_labeled_folder(folder)
        chosen = np.sort(np.random.default_rng(0).permutation(len(listing.files))[:images])
        files, labels = [listing.files[i] for i in chosen], [listing.labels[i] for i in chosen]
        raw = cached_beton("bench", listing.root, files, labels, listing.classes, store_size=size, storage="raw")
        everything = np.arange(raw.num_samples)
        batch = min(study_cnn.batch_size, max(1, len(files) // 4))  # the study CNN's batch, or less on tiny data

    if "loaders" in sections:
        jpg = cached_beton("bench", listing.root, files, labels, listing.classes, store_size=150, storage="jpg")
        study = measure_study_loader(folder, size, batch, num_workers, images)
        loaders = {
            "study: ImageFolder + PIL resize + flip + normalise": study,
            f"FFCV raw@{size} + flip + normalise": measure_ffcv_loader(raw, everything, size, batch, num_workers),
            f"FFCV JPEG@150 -> {size} + flip + normalise": measure_ffcv_loader(jpg, everything, size, batch,
                                                                               num_workers),
            f"FFCV raw@{size}, loader alone": measure_ffcv_loader(raw, everything, size, batch, num_workers, False),
            f"FFCV JPEG@150 -> {size}, loader alone": measure_ffcv_loader(jpg, everything, size, batch, num_workers,
                                                                          False),
        }
        for result in loaders.values():
            result["ratio_vs_study"] = result["images_per_s"] / study["images_per_s"]
        results["loaders"] = loaders
        _print_table(f"loaders: {len(files)} images -> {size}x{size} batches of {batch}, {num_workers} workers",
                     ["loader", "img/s", "x study", "start-up s"],
                     [[k, v["images_per_s"], v["ratio_vs_study"], v["startup_s"]] for k, v in loaders.items()])

    if "steps" in sections:
        precisions = list(precisions or ["fp32"] + (["bf16"] if native_bf16 else []))
        if "bf16" not in precisions and not native_bf16:
            print("\n[benchmark] bf16 not timed: this CPU has no native bf16 (no AMX/AVX512-BF16), where autocast "
                  "emulates it about 10x slower and --mixed_precision=auto never picks it; "
                  "pass --precisions fp32 bf16 to time it anyway")
        settings = [("fp32", False), ("fp32", True)] + [(p, True) for p in precisions if p != "fp32"]
        rows, step_results = [], {}
        for name, entry in models.items():
            for precision, channels_last in settings:
                r = measure_train_step(entry["build"], entry["batch"], entry["image_size"], precision, channels_last,
                                       steps, kind=entry["kind"], split=entry["split"])
                # against the ceiling of the precision the step computes in (fp16 autocast on a CPU runs fp32)
                r["share_of_ceiling"] = r["gflop_per_s"] / ceilings.get(precision, ceilings["fp32"])
                label = f"{precision} {'channels_last' if channels_last else 'NCHW'}"
                step_results[f"{name} | {label}"] = {**r, "batch": entry["batch"], "image_size": entry["image_size"]}
                rows.append([name, label, f"{entry['batch']} x {entry['image_size']}px", r["images_per_s"],
                             r["gflop_per_s"], r["share_of_ceiling"]])
        results["steps"] = step_results
        _print_table("training steps (forward + backward + Adam, random inputs; each recipe's own batch and size)",
                     ["model", "setting", "batch", "img/s", "GFLOP/s", "of its matmul ceiling"], rows)

    if "pipeline" in sections:
        wait = measure_data_wait(raw, everything, size, batch, num_workers, steps)
        results["pipeline"] = wait
        _print_table(f"the real loop (FFCV raw@{size} + study CNN step, batch {batch})", ["data wait share", "img/s"],
                     [[wait["data_wait_share"], wait["images_per_s"]]])

    if "compile" in sections:
        chosen = {name: entry for name, entry in models.items() if entry["recipe"] in compile_recipes}
        compiled, rows = {}, []
        for name, entry in chosen.items():
            r = measure_compile(entry["build"], entry["batch"], entry["image_size"], steps, kind=entry["kind"])
            compiled[name] = {**r, "batch": entry["batch"], "image_size": entry["image_size"]}
            break_even = "never" if r["break_even_steps"] is None else round(r["break_even_steps"])
            rows.append([name, f"{entry['batch']} x {entry['image_size']}px", r["eager"]["step_s"],
                         r["compiled"]["step_s"], f"{r['speedup']:.2f}x", r["compile_s"], break_even])
        results["compile"] = compiled
        _print_table(f"torch.compile (inductor) against eager: fp32 channels-last training steps, {steps} pairs "
                     "(eager then compiled; the speed-up is the median of the pairs' ratios)",
                     ["model", "batch", "eager step s", "compiled step s", "speed-up", "compile s",
                      "break-even steps"], rows)
        print("a recipe compiles with `accelerate launch --dynamo_backend=inductor`; none does by default")

    write_json(out, results)
    print(f"\n[benchmark] results written to {out}")
    return results
