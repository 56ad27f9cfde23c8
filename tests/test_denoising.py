"""Noise, the study's autoencoders and the modern denoisers, metrics, the recipes and commands."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import load_recipe, run_script, run_toolkit_without_heavy_imports
from PIL import Image, ImageOps
from safetensors.torch import load_file
from test_recipes import assert_same_final_weights, run_in_process

from toolkit.cli import main as toolkit_main
from toolkit.config import parse_config
from toolkit.data.augment import step_generator, to_unit_range
from toolkit.data.beton import cached_beton
from toolkit.data.folders import scan_unlabeled_folder
from toolkit.data.loaders import Shard, make_loader
from toolkit.data.noise import (
    add_gaussian_noise,
    draw_sigmas,
    draw_sigmas_favouring_light,
    noise_level_weights,
    random_crop,
    sigma_from_255,
)
from toolkit.denoising_benchmark import clean_reference_images
from toolkit.errors import ConfigError, DataError, UserError
from toolkit.models.autoencoders import STUDY_AUTOENCODERS, family_autoencoder, latent_shape
from toolkit.models.denoisers import DnCNN, ResUNet, UNetDenoiser
from toolkit.runs import read_metrics, series
from toolkit.train.denoise import (
    NoiseSpec,
    denoise,
    denoise_in_tiles,
    evaluate_denoiser,
    image_quality,
    seeded_noisy,
    tile_boxes,
    to_hwc_uint8,
)

TINY_DENOISER = ["--image_size=48", "--batch_size=8", "--eval_batch_size=5", "--eval_every=3",
                 "--checkpoint_every=2", "--num_workers=1", "--epochs=2", "--grid_images=2"]


# ---- noise --------------------------------------------------------------------------------------------

def test_unclipped_noise_has_the_requested_statistics():
    clean = torch.full((4, 3, 64, 64), 0.5)
    generator = step_generator(torch.device("cpu"), 0, 1)
    noisy = add_gaussian_noise(clean, torch.full((4,), 0.1), generator, clip=False)
    residual = noisy - clean
    assert abs(residual.mean().item()) < 0.005 and abs(residual.std().item() - 0.1) < 0.005
    assert noisy.shape == clean.shape  # height and width never swapped


def test_clipped_noise_stays_in_range_and_per_image_sigmas_apply():
    clean = torch.rand(2, 3, 32, 32)
    generator = step_generator(torch.device("cpu"), 0, 1)
    noisy = add_gaussian_noise(clean, torch.tensor([0.0, 0.3]), generator, clip=True)
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert torch.equal(noisy[0], clean[0])  # sigma 0: untouched
    sigmas = draw_sigmas(1000, 0.05, 0.2, generator, torch.device("cpu"))
    assert sigmas.min() >= 0.05 and sigmas.max() <= 0.2 and sigmas.std() > 0.03
    assert sigma_from_255(25.5) == pytest.approx(0.1)


def test_a_share_of_light_noise_draws_from_the_light_range_and_share_zero_replays_the_uniform_draw():
    device = torch.device("cpu")
    uniform = draw_sigmas(64, 0.0, 0.2, step_generator(device, 3, 5), device)
    assert torch.equal(draw_sigmas_favouring_light(64, 0.2, 0.0, 0.02, step_generator(device, 3, 5), device), uniform)
    sigmas = draw_sigmas_favouring_light(20000, 0.2, 0.3, 0.02, step_generator(device, 3, 5), device)
    assert sigmas.min() >= 0 and sigmas.max() <= 0.2
    # light (0.3, all below 0.02) plus the uniform draw's own 10% below it: 0.37; above, uniform as before
    assert (sigmas < 0.02).float().mean().item() == pytest.approx(0.3 + 0.7 * 0.1, abs=0.015)
    assert (sigmas >= 0.1).float().mean().item() == pytest.approx(0.7 * 0.5, abs=0.015)
    for share, light_max in ((-0.1, 0.02), (1.5, 0.02), (0.3, 0.0), (0.3, 0.3)):
        with pytest.raises(ValueError, match="light-noise"):
            draw_sigmas_favouring_light(4, 0.2, share, light_max, step_generator(device, 3, 5), device)

    recipe = load_recipe("blind_denoiser")  # the recipe's patches follow --light_noise_share / --light_noise_max
    plan = parse_config(recipe.Config, ["--light_noise_share=0.9", "--light_noise_max=2"])
    tiles = torch.randint(0, 256, (400, 3, 12, 12), dtype=torch.uint8)
    clean, noisy, sigmas = recipe.noisy_patches(tiles, 8, plan, step_generator(device, 0, 1))
    assert (sigmas <= 2 / 255).float().mean().item() == pytest.approx(0.9 + 0.1 * 2 / 50, abs=0.05)
    assert sigmas.max() <= 50 / 255
    for bad in ("--light_noise_max=60", "--light_noise_max=0", "--light_noise_share=1"):
        with pytest.raises(ConfigError, match="light_noise"):
            recipe.main(parse_config(recipe.Config, ["--data=synthetic", bad]))


def test_noise_is_seeded_and_fresh_each_step():
    clean = torch.rand(2, 3, 16, 16)
    sigma = torch.full((2,), 0.3)
    device = torch.device("cpu")
    first = add_gaussian_noise(clean, sigma, step_generator(device, 7, 1))
    assert torch.equal(first, add_gaussian_noise(clean, sigma, step_generator(device, 7, 1)))
    assert not torch.equal(first, add_gaussian_noise(clean, sigma, step_generator(device, 7, 2)))


def test_evaluation_noise_depends_on_the_image_not_the_batch_or_the_device():
    clean = torch.rand(4, 3, 16, 16)
    noise = NoiseSpec(0.1, 0.2, clip=True, seed=3)
    together, sigmas = seeded_noisy(clean, [10, 11, 12, 13], noise)
    alone, sigma_alone = seeded_noisy(clean[2:3], [12], noise)
    assert torch.equal(together[2], alone[0]) and sigmas[2] == sigma_alone[0]
    # drawn on the CPU for images on any device: the noise a CPU generator gives this seed, on the images' device
    generator = torch.Generator().manual_seed(3 * 1_000_003 + 12)
    sigma = 0.1 + 0.1 * torch.rand(1, generator=generator)
    assert torch.allclose(sigma_alone, sigma)
    assert torch.allclose(alone, (clean[2:3] + sigma * torch.randn(1, 3, 16, 16, generator=generator)).clamp(0, 1))
    if torch.cuda.is_available():
        on_gpu, gpu_sigmas = seeded_noisy(clean.cuda(), [10, 11, 12, 13], noise)
        assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), together) and torch.equal(gpu_sigmas.cpu(), sigmas)


def test_random_crop_takes_one_window():
    images = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).view(2, 3, 10, 12)
    crop = random_crop(images, 4, step_generator(torch.device("cpu"), 0, 1))
    assert crop.shape == (2, 3, 4, 4)
    assert random_crop(images, 0, step_generator(torch.device("cpu"), 0, 1)) is images


# ---- models ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, latent", [("AE10", (128, 10, 10)), ("AE38", (32, 38, 38)), ("AE71", (32, 71, 71))])
def test_study_autoencoders_match_the_spec(name, latent):
    model = family_autoencoder(name)
    assert latent_shape(model, 150) == latent
    images = torch.rand(2, 3, 150, 150)
    output = model(images)
    assert output.shape == images.shape and output.min() >= 0 and output.max() <= 1  # Sigmoid output
    ((output - images) ** 2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # at 150 x 150 the transposed convolutions pick exactly the study's output paddings
    encoded, sizes = model.encode(images)
    for position, (deconv, spec) in enumerate(zip(model.decoder, STUDY_AUTOENCODERS[name]["decoder"])):
        padding = deconv._output_padding(encoded, sizes[-1 - position], list(deconv.stride), list(deconv.padding),
                                         list(deconv.kernel_size), 2, list(deconv.dilation))
        assert list(padding) == [spec[-1]] * 2
        encoded = deconv(encoded, output_size=sizes[-1 - position])
    # and any other size maps back to itself (for benchmarks on 500 x 500 images, odd sizes)
    assert model(torch.rand(1, 3, 77, 131)).shape == (1, 3, 77, 131)


@pytest.mark.parametrize("make", [lambda: UNetDenoiser(width=8, levels=3), lambda: DnCNN(depth=4, width=8),
                                  lambda: UNetDenoiser(width=8, conditioned=True),
                                  lambda: DnCNN(depth=3, width=8, conditioned=True)])
def test_modern_denoisers_keep_size_and_train(make):
    model = make()
    noisy = torch.rand(2, 3, 45, 61)
    output = model(noisy, torch.tensor([0.1, 0.2]))
    assert output.shape == noisy.shape and torch.isfinite(output).all()
    output.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_noise_level_reaches_the_network_as_a_constant_map_per_image():
    """A conditioned denoiser sees its input plus one channel holding each image's sigma everywhere."""
    from toolkit.models.denoisers import ResUNet

    model = ResUNet(widths=(4, 8), blocks=1, conditioned=True)
    seen = {}
    model.head.register_forward_hook(lambda module, inputs, output: seen.update(input=inputs[0]))  # returns None
    noisy = torch.rand(2, 3, 20, 28)  # not a multiple of the U-Net's 2: reflect-padded to 20 x 28 -> 20 x 28
    output = model(noisy, torch.tensor([0.05, 0.2]))
    head_input = seen["input"]  # (B, 3 + 1, H, W)
    assert head_input.shape == (2, 4, 20, 28) and torch.equal(head_input[:, :3], noisy)
    assert torch.all(head_input[0, 3] == 0.05) and torch.all(head_input[1, 3] == 0.2)
    assert output.shape == noisy.shape
    with pytest.raises(ValueError, match="pass sigmas"):
        model(noisy)
    odd = ResUNet(widths=(4, 8, 16), blocks=1)(torch.rand(1, 3, 37, 53), torch.tensor([0.1]))
    assert odd.shape == (1, 3, 37, 53)  # any size: padded to a multiple of 4 and cropped back


def test_blocks_per_level_puts_each_count_at_its_level_and_survives_a_checkpoints_json():
    """`blocks` is one count for every level or one per level, finest first (the last is the body's): the
    encoder and decoder at a level hold that level's count, one count builds the same parameters as before, and
    a spec read back from a trainer state's JSON (lists, not tuples) rebuilds the same network."""
    from toolkit.models import build_model
    from toolkit.models.denoisers import ResBlock, ResUNet

    def resblocks(module):
        return sum(isinstance(child, ResBlock) for child in module.children())

    model = ResUNet(widths=(4, 8, 16), blocks=(1, 2, 3))
    assert [resblocks(down) for down in model.down] == [1, 2]  # level 0 (full resolution), level 1
    assert [resblocks(up) for up in model.up] == [2, 1]  # the decoder climbs back: level 1, then level 0
    assert resblocks(model.body) == 3
    assert model(torch.rand(1, 3, 20, 28), torch.tensor([0.1])).shape == (1, 3, 20, 28)
    one_count, every_level = ResUNet(widths=(4, 8, 16), blocks=2), ResUNet(widths=(4, 8, 16), blocks=(2, 2, 2))
    assert {k: v.shape for k, v in one_count.state_dict().items()} == \
        {k: v.shape for k, v in every_level.state_dict().items()}  # checkpoints written with blocks=2 still load

    spec = json.loads(json.dumps({"name": "resunet", "kwargs": {"widths": (4, 8, 16), "blocks": (1, 2, 3)}}))
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(model.state_dict())  # the same modules, the same shapes
    for bad in ((1, 2), (1, 0, 2), 0):
        with pytest.raises(ConfigError, match=r"one per level \(3 for 3 widths\)"):
            build_model({"name": "resunet", "kwargs": {"widths": (4, 8, 16), "blocks": bad}})


def test_pixel_unshuffle_folds_2x2_blocks_into_channels_and_unfolds_the_noise_estimate():
    """FFDNet's reversible downsampling: the head sees 12 colour channels at half the resolution plus the
    noise-level map, the tail's 12 channels go back to 3 at full resolution, and any size still works."""
    from toolkit.models.denoisers import ResUNet

    model = ResUNet(widths=(4, 8), blocks=1, pixel_unshuffle=True)
    seen = {}
    model.head.register_forward_hook(lambda module, inputs, output: seen.update(input=inputs[0]))  # returns None:
    model.tail.register_forward_hook(lambda module, inputs, output: seen.update(noise=output))  # outputs unchanged
    noisy = torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    output = model(noisy, torch.tensor([0.05, 0.2]))
    head_input = seen["input"]
    assert head_input.shape == (2, 13, 10, 14)
    # channel 3c + 2i + j of the folded image holds colour c's pixel (i, j) of each 2x2 block
    for colour in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(head_input[:, 4 * colour + 2 * i + j], noisy[:, colour, i::2, j::2])
    assert torch.all(head_input[0, 12] == 0.05) and torch.all(head_input[1, 12] == 0.2)
    noise = seen["noise"]  # (B, 12, H/2, W/2): unfolded the same way, subtracted from the input
    assert noise.shape == (2, 12, 10, 14)
    assert torch.allclose(output[:, 1, 1::2, 0::2], noisy[:, 1, 1::2, 0::2] - noise[:, 4 + 2])
    odd = ResUNet(widths=(4, 8, 16), blocks=1, pixel_unshuffle=True)(torch.rand(1, 3, 37, 53), torch.tensor([0.1]))
    assert odd.shape == (1, 3, 37, 53)  # padded to a multiple of 8 (2 for the fold x 4 for two levels)


@pytest.mark.parametrize("height, width, tile, margin, multiple", [
    (100, 70, 32, 8, 1), (100, 70, 30, 10, 4), (257, 129, 64, 64, 8), (33, 33, 8, 0, 1)])
def test_tiles_cover_the_image_once_on_the_models_grid(height, width, tile, margin, multiple):
    boxes = tile_boxes(height, width, tile, margin, multiple)
    tile, margin = -(-tile // multiple) * multiple, -(-margin // multiple) * multiple  # rounded up to the grid
    kept = np.zeros((height, width), dtype=int)
    for (top, bottom, left, right), (seen_top, seen_bottom, seen_left, seen_right) in boxes:
        kept[top:bottom, left:right] += 1
        assert bottom - top <= tile and right - left <= tile
        assert (seen_top, seen_left) == (max(top - margin, 0), max(left - margin, 0))  # the context, to the edges
        assert (seen_bottom, seen_right) == (min(bottom + margin, height), min(right + margin, width))
        assert seen_top % multiple == 0 == seen_left % multiple  # where the whole image's grid has a corner
    assert (kept == 1).all() and len(boxes) <= -(-height // tile) * -(-width // tile)  # no more than it takes
    assert len({bottom - top for (top, bottom, _, _), _ in boxes}) <= 2  # one size, but for the last row's
    whole = [((0, height, 0, width), (0, height, 0, width))]
    assert tile_boxes(height, width, 0, margin, multiple) == whole  # 0: the whole image
    assert tile_boxes(height, width, max(height, width), margin, multiple) == whole  # it fits in one tile
    assert tile_boxes(height, width, max(height, width) - 2 * margin, margin, multiple) == whole  # with margins



def test_tiles_share_a_side_out_evenly_instead_of_leaving_a_sliver():
    rows = sorted({(top, bottom) for (top, bottom, _, _), _ in tile_boxes(100, 70, 32, 8)})
    assert rows == [(0, 25), (25, 50), (50, 75), (75, 100)]  # not 32, 32, 32 and 4
    rows = sorted({(top, bottom) for (top, bottom, _, _), _ in tile_boxes(100, 70, 30, 8, multiple=4)})
    assert rows == [(0, 28), (28, 56), (56, 84), (84, 100)]  # 25 rounded up to the model's multiple of 4


@torch.no_grad()
@pytest.mark.parametrize("make, margin", [
    (lambda: DnCNN(depth=4, width=6, conditioned=True), 4),  # a 9x9 receptive field: 4 pixels each way
    (lambda: ResUNet(widths=(4, 8, 8), blocks=1, conditioned=True), 48),  # down-sampled twice: tiles on its grid
])
def test_tiles_give_the_whole_images_output_where_their_margins_hold_its_receptive_field(make, margin):
    torch.manual_seed(0)
    model = make().eval()
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    noisy, sigmas = torch.rand(1, 3, 150, 97), torch.tensor([0.1])
    whole = denoise(model, noisy, sigmas, True)
    ticks = []
    tiled = denoise_in_tiles(model, noisy, sigmas, True, 30, margin, on_tile=lambda: ticks.append(1))
    boxes = tile_boxes(150, 97, 30, margin, getattr(model, "multiple", 1))
    assert len(ticks) == len(boxes) > 1 and len(seen) == 1 + len(boxes)
    assert max(max(size) for size in seen[1:]) <= 32 + 2 * margin  # memory: a tile and its margins, at most
    assert torch.allclose(tiled, whole, atol=1e-5)  # each pixel's receptive field lies inside its piece
    short = denoise_in_tiles(model, noisy, sigmas, True, 30, 0)  # no context: the seams show
    assert (short - whole).abs().max() > 1e-3


def test_residual_denoisers_start_from_the_noisy_input():
    model = UNetDenoiser(width=8)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    noisy = torch.rand(1, 3, 30, 30)
    assert torch.allclose(model(noisy), noisy)
    with pytest.raises(ValueError, match="pass sigmas"):
        UNetDenoiser(width=8, conditioned=True)(noisy)


# ---- metrics ---------------------------------------------------------------------------------------------

def test_metrics_on_known_cases():
    clean = torch.full((2, 3, 32, 32), 0.5)
    same = image_quality(clean, clean)
    assert same["mse"].tolist() == [0.0, 0.0] and torch.allclose(same["ssim"], torch.ones(2))
    off = image_quality(clean + 0.1, clean)  # MSE 0.01 -> PSNR 20 dB
    assert torch.allclose(off["mse"], torch.full((2,), 0.01)) and torch.allclose(off["psnr"], torch.full((2,), 20.0))
    clamped = image_quality(clean + 1.0, clean)  # outputs are clamped to [0, 1] before scoring
    assert torch.allclose(clamped["mse"], torch.full((2,), 0.25))


def test_evaluate_denoiser_scores_baselines_on_the_same_noise_whatever_the_batch(tiny_intel, cache_dir):
    files = scan_unlabeled_folder(tiny_intel / "seg_pred")[:7]  # 7: CBM3D takes about a second an image, any size
    stored = cached_beton("den", tiny_intel / "seg_pred", files, None, None, 32, cache_dir=cache_dir)
    ids = np.arange(stored.num_samples)
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    noise = NoiseSpec(0.2, 0.2, clip=False, seed=5)
    results = []
    baselines = ("noisy", "nlm") + (("bm3d",) if __import__("toolkit.train.denoise", fromlist=["x"]).bm3d_available()
                                    else ())  # CBM3D on workers started once for the set's three batches of 3
    for batch in (3, 7):
        loader = make_loader(stored, ids, batch, train=False, image_size=32, device=torch.device("cpu"),
                             num_workers=1)
        shard = Shard(loader, ids, np.arange(len(ids)), len(ids))
        results.append(evaluate_denoiser(None, shard, accelerator, noise, baselines=baselines))
    assert results[0]["n"] == 7 and results[0]["noisy"] == pytest.approx(results[1]["noisy"])
    for method in baselines[1:]:
        assert results[0][method]["psnr"] > results[0]["noisy"]["psnr"] + 3  # NLM and CBM3D really denoise
        assert results[0][method] == pytest.approx(results[1][method], abs=1e-4)
    # unclipped noise of sigma 0.2: the noisy input's MSE is about 0.04 before clamping (less after)
    assert 0.02 < results[0]["noisy"]["mse"] < 0.045


# ---- recipes and commands ------------------------------------------------------------------------------

def test_autoencoder_recipe_runs_resumes_exactly_and_writes_grids(tiny_intel, tmp_path):
    common = [f"--data={tiny_intel}", "--model=AE38", *TINY_DENOISER]
    whole = run_in_process("autoencoder", [*common, f"--run_dir={tmp_path / 'whole'}"])
    assert whole["latent_shape"] == [32, 12, 12] and whole["test_images"] >= 1  # 48 -> 24 -> 12
    assert whole["test_psnr"] > 0 and whole["train_images_per_s"] > 0
    plots = {p.name for p in (tmp_path / "whole" / "plots").iterdir()}
    assert "learning_curves.png" in plots and any(name.startswith("grid-val") for name in plots)
    run_in_process("autoencoder", [*common, f"--run_dir={tmp_path / 'split'}", "--max_steps=1"])
    resumed = run_in_process("autoencoder", [*common, f"--run_dir={tmp_path / 'split'}", "--resume"])
    assert_same_final_weights(tmp_path / "whole", tmp_path / "split")
    assert resumed["test_psnr"] == whole["test_psnr"]


def test_autoencoder_time_budget_trains_exactly_as_the_epochs_it_chose(tiny_intel, tmp_path):
    """--train_minutes in the autoencoder recipe: timed on stand-in images (cropped in the step, as the loader's
    would be), then undone, so a budget shorter than one epoch trains the weights of --epochs=1."""
    common = [f"--data={tiny_intel}", "--model=AE10", *TINY_DENOISER, "--grid_images=0", "--crop=32"]
    budget = run_in_process("autoencoder", [*common, "--train_minutes=0.0001", f"--run_dir={tmp_path / 'budget'}"])
    assert budget["budget"]["epochs"] == 1 and budget["budget"]["steps"] == budget["steps"]
    run_in_process("autoencoder", [*common, "--epochs=1", f"--run_dir={tmp_path / 'epochs'}"])
    assert_same_final_weights(tmp_path / "budget", tmp_path / "epochs")
    with pytest.raises(UserError, match="train_minutes"):
        run_in_process("autoencoder", [*common, "--train_minutes=-1", f"--run_dir={tmp_path / 'bad'}"])


def test_latent_study_compares_every_model_and_baseline(tiny_intel, tmp_path):
    run_dir = tmp_path / "study"
    args = [f"--data={tiny_intel}", f"--run_dir={run_dir}", "--models=AE10,AE71,AE146,unet", "--image_size=48",
            "--num_workers=1", "--max_steps=2", "--grid_images=2", "--seeds=0,1",
            "--ae_args=--batch_size=8 --grid_images=0",
            "--other_args=--batch_size=8 --crop=24 --grid_images=0 --model_kwargs=width=8"]
    result = run_in_process("latent_study", args)
    assert set(result["models"]) == {"AE10", "AE71", "AE146", "unet"}
    assert {"noisy input"} < set(result["baselines"]) and any("non-local" in b for b in result["baselines"])
    assert result["models"]["AE71"]["psnr"]["n"] == 2 and len(result["models"]["AE71"]["psnr"]["values"]) == 2
    table = (run_dir / "latent_study.md").read_text()
    for column in ("latent / input", "PSNR dB", "SSIM", "MSE", "train img/s", "| AE71 (study) | 32x20x20 |", " ± "):
        assert column in table
    for figure in ("psnr_vs_latent.png", "validation_curves.png", "side_by_side.png"):
        assert (run_dir / "plots" / figure).is_file()
    # standard JSON, which every reader takes: a score of no values is null, never NaN; the report shows a dash
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    written = json.loads((run_dir / "latent_study.json").read_text(), parse_constant=refuse)
    assert written["models"]["AE71"]["psnr"]["mean"] == pytest.approx(result["models"]["AE71"]["psnr"]["mean"])
    written["models"]["AE10"]["psnr"]["mean"] = None  # as a model none of whose seeds was scored would read
    (run_dir / "latent_study.json").write_text(json.dumps(written))
    from toolkit.report import build_report

    page = build_report([run_dir], tmp_path / "report").read_text()
    assert re.search(r"AE10 \([0-9.]+x\) —", page)
    # the noisy input's row is measured on the held-out images, not copied from a model's run
    noisy = result["baselines"]["noisy input"]["psnr"]
    assert noisy == pytest.approx(result["models"]["AE10"]["per_seed"]["0"]["test_noisy_psnr"], abs=1e-6)
    again = run_in_process("latent_study", args)  # reads the finished runs back
    assert again["models"]["AE10"]["psnr"]["mean"] == result["models"]["AE10"]["psnr"]["mean"]
    other_noise = [a for a in args] + ["--sigma=0.2"]
    with pytest.raises(UserError, match="sigma: 0.3 there, 0.2 now"):
        run_in_process("latent_study", other_noise)  # never reuses a run trained on other noise


def test_denoise_command_keeps_odd_sizes_and_skips_bad_files(tiny_intel, tmp_path, capsys):
    run_in_process("autoencoder", [f"--data={tiny_intel}", "--model=AE10", f"--run_dir={tmp_path / 'ae'}",
                                   "--max_steps=1", *TINY_DENOISER])
    inputs = tmp_path / "in"
    (inputs / "nested").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 91, 3), dtype=np.uint8)).save(inputs / "a.jpg")
    Image.fromarray(np.full((150, 149), 128, np.uint8), mode="L").save(inputs / "nested" / "gray.png")
    (inputs / "broken.jpg").write_bytes(b"not an image")
    assert toolkit_main(["denoise", str(tmp_path / "ae"), str(inputs), str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "a.png").size == (91, 37)
    assert Image.open(tmp_path / "out" / "nested" / "gray.png").size == (149, 150)
    assert not (tmp_path / "out" / "broken.png").exists()
    single = tmp_path / "single.png"
    capsys.readouterr()
    assert toolkit_main(["denoise", str(tmp_path / "ae"), str(inputs / "a.jpg"), str(single), "--sigma=25"]) == 0
    assert Image.open(single).size == (91, 37)
    # an autoencoder is not told the noise level: a --sigma given is said to be unused, not silently dropped
    assert ("--sigma is not used: AE10 is not told the noise level (it trained on sigma 0.3 on the [0, 1] scale, "
            "clipped)") in capsys.readouterr().out


def test_denoise_never_writes_over_what_it_was_given(tiny_intel, tmp_path, capsys):
    """An input image is never replaced: writing into the input folder is refused before any work when a name
    would clash, as are two inputs bound for one output; an output folder inside the input folder is left out of
    the next run's inputs; a file where a folder must go, or an unknown format, is a clear error."""
    run_in_process("autoencoder", [f"--data={tiny_intel}", "--model=AE10", f"--run_dir={tmp_path / 'ae'}",
                                   "--max_steps=1", *TINY_DENOISER])
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(photos / name)
    before = {file.name: file.read_bytes() for file in photos.iterdir()}
    run = str(tmp_path / "ae")

    def refused(*args: str) -> str:
        capsys.readouterr()
        assert toolkit_main(["denoise", run, *args]) == 2
        return capsys.readouterr().err

    assert "would write over the input image" in refused(str(photos), str(photos))
    assert "would write over the input image" in refused(str(photos / "a.png"), str(photos / "a.png"))
    (photos / "b.png").write_bytes(before["a.png"])  # b.jpg and b.png: one output name
    assert "would both be written to" in refused(str(photos), str(tmp_path / "out"))
    (photos / "b.png").unlink()
    assert {file.name: file.read_bytes() for file in photos.iterdir()} == before and not (tmp_path / "out").exists()

    inside = photos / "denoised"
    for _ in range(2):  # the second run denoises the two photographs again, not the first run's outputs
        assert toolkit_main(["denoise", run, str(photos), str(inside)]) == 0
    assert sorted(file.name for file in inside.rglob("*")) == ["a.png", "b.png"]
    assert "leaving out the 2 image(s) already in" in capsys.readouterr().out

    (tmp_path / "a_file").write_text("")
    assert "a_file is a file: give a folder" in refused(str(photos), str(tmp_path / "a_file"))
    assert "a_file is a file, not a folder" in refused(str(photos / "a.png"), str(tmp_path / "a_file" / "x.png"))
    capsys.readouterr()
    assert toolkit_main(["denoise", run, str(photos / "a.png"), str(tmp_path / "x.xyz")]) == 2
    said = capsys.readouterr()
    assert ".xyz names no image format Pillow writes. Name it .png" in said.err
    assert "[denoise]" not in said.out  # said before denoising, not after


def test_denoise_writes_each_image_as_its_file_stored_it_at_any_size(tiny_intel, tmp_path, capsys):
    """Grey stays grey, 16-bit grey and colour 16-bit, transparency is kept exactly; a CMYK or palette image comes
    back as RGB, saying so; a 1-pixel image or strip is denoised too (padded to the smallest side every model
    takes); a target whose format cannot hold the image is refused with the fix, leaving no file."""
    from toolkit.data.images import load_for_restoration, save_restored

    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8), mode="L").save(inputs / "grey.png")
    Image.fromarray(rng.integers(0, 255, (20, 30, 2), dtype=np.uint8), mode="LA").save(inputs / "grey_alpha.png")
    Image.fromarray(rng.integers(0, 255, (20, 30, 4), dtype=np.uint8), mode="RGBA").save(inputs / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16)).save(inputs / "grey16.png")
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert("CMYK").save(inputs / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert("P").save(inputs / "palette.png")
    Image.fromarray(rng.integers(0, 255, (1, 1, 3), dtype=np.uint8)).save(inputs / "pixel.png")
    Image.fromarray(rng.integers(0, 255, (1, 40, 3), dtype=np.uint8)).save(inputs / "strip.png")
    cv2.imwrite(str(inputs / "colour16.png"), rng.integers(0, 65535, (20, 30, 3), dtype=np.uint16))  # 16-bit RGB
    cv2.imwrite(str(inputs / "rgba16.png"), rng.integers(0, 65535, (20, 30, 4), dtype=np.uint16))
    expected = {"grey": ("L", (30, 20)), "grey_alpha": ("LA", (30, 20)), "rgba": ("RGBA", (30, 20)),
                "grey16": ("I;16", (30, 20)), "cmyk": ("RGB", (30, 20)), "palette": ("RGB", (30, 20)),
                "pixel": ("RGB", (1, 1)), "strip": ("RGB", (40, 1)), "colour16": ("RGB", (30, 20)),
                "rgba16": ("RGBA", (30, 20))}
    sixteen_bits = lambda path: cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # noqa: E731 (Pillow reads 8 of them)

    # nothing is lost on the way in and out: an identity restoration writes every file's pixels back exactly
    for name in expected:
        source = next(inputs.glob(f"{name}.*"))
        pixels, stored = load_for_restoration(source)
        assert pixels.shape == (*Image.open(source).size[::-1], 3) and pixels.dtype == np.float32
        save_restored(pixels, stored, tmp_path / f"{name}-copy.png")
        if not stored.converted:
            assert np.array_equal(np.asarray(Image.open(tmp_path / f"{name}-copy.png")), np.asarray(Image.open(source)))
        if name.endswith("16"):  # every one of the 16 bits, and the alpha channel's too
            assert stored.bits == 16 and len(np.unique(pixels)) > 256
            assert np.array_equal(sixteen_bits(tmp_path / f"{name}-copy.png"), sixteen_bits(source))

    # the blind denoiser (estimating each image's noise level) and the study's AE71, whose unpadded 5x5
    # convolutions need 9 pixels each way
    run_in_process("blind_denoiser", ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4",
                                      "--eval_every=0", "--num_workers=1", "--grid_images=0", "--max_steps=1",
                                      "--model_kwargs=widths=(8,16,32),blocks=1", f"--run_dir={tmp_path / 'blind'}"])
    run_in_process("autoencoder", [f"--data={tiny_intel}", "--model=AE71", f"--run_dir={tmp_path / 'ae71'}",
                                   "--max_steps=1", *TINY_DENOISER])
    for run in ("blind", "ae71"):
        capsys.readouterr()
        assert toolkit_main(["denoise", str(tmp_path / run), str(inputs), str(tmp_path / f"out-{run}"),
                             "--self_ensemble"]) == 0
        said = capsys.readouterr().out
        assert "cmyk.jpg: in colour mode CMYK, written as RGB" in said
        assert "palette.png: a palette image, written as RGB" in said
        for name, (mode, size) in expected.items():
            written = Image.open(tmp_path / f"out-{run}" / f"{name}.png")
            assert (written.mode, written.size) == (mode, size), name
        for name, channel in (("grey_alpha", 1), ("rgba", 3)):
            kept = np.asarray(Image.open(tmp_path / f"out-{run}" / f"{name}.png"))[..., channel]
            assert np.array_equal(kept, np.asarray(Image.open(inputs / f"{name}.png"))[..., channel])
        assert np.asarray(Image.open(tmp_path / f"out-{run}" / "grey16.png")).dtype == np.uint16
        for name in ("colour16", "rgba16"):
            written = sixteen_bits(tmp_path / f"out-{run}" / f"{name}.png")
            assert written.dtype == np.uint16 and written.shape == sixteen_bits(inputs / f"{name}.png").shape
            assert len(np.unique(written[..., :3])) > 256  # denoised at 16 bits, not 8 scaled up
        kept = sixteen_bits(tmp_path / f"out-{run}" / "rgba16.png")[..., 3]
        assert np.array_equal(kept, sixteen_bits(inputs / "rgba16.png")[..., 3])

    jpeg = tmp_path / "rgba.jpg"
    assert toolkit_main(["denoise", str(tmp_path / "blind"), str(inputs / "rgba.png"), str(jpeg)]) == 2
    assert "Name it .png" in capsys.readouterr().err and not jpeg.exists()
    assert toolkit_main(["denoise", str(tmp_path / "blind"), str(inputs / "colour16.png"), str(jpeg)]) == 2
    assert "16 bits per channel. Name it .png" in capsys.readouterr().err and not jpeg.exists()
    assert not list(tmp_path.rglob("*.partial*"))  # nothing half-written left beside the outputs, refused or not


def test_floating_point_grey_is_denoised_and_written_as_floats_on_its_own_scale(tmp_path, capsys):
    """A 32-bit float TIFF (mode F: scientific and HDR pipelines), in [0, 1] or in 8-bit levels, is read as
    floats on its own scale (a plain conversion read [0, 1] as black), its noise beyond 0 and white kept, and
    written back as a float TIFF on that scale (a folder's outputs are named .tif for it, .png for the rest); an
    output named .png is refused with the fix; a file with NaNs is skipped, saying why; the classifiers' reader
    sees its grey levels."""
    from toolkit.data.images import load_for_restoration, load_rgb, save_restored

    rng = np.random.default_rng(5)
    inputs = tmp_path / "in"
    inputs.mkdir()
    unit = (0.5 + 0.2 * np.sin(np.arange(40) / 4)[None, :] + rng.normal(0, 0.1, (32, 40))).astype(np.float32)
    unit[0, :2] = -0.05, 1.05  # noise past black and white
    Image.fromarray(unit).save(inputs / "unit.tif")
    Image.fromarray(unit * 255).save(inputs / "levels.tiff")
    Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(inputs / "photo.tif")
    broken = unit.copy()
    broken[3, 4] = np.nan
    Image.fromarray(broken).save(inputs / "nan.tif")

    pixels, stored = load_for_restoration(inputs / "unit.tif")
    assert (stored.mode, stored.bits, stored.full_scale, stored.grey) == ("F", 32, 1.0, True)
    assert np.array_equal(pixels[..., 0], unit) and pixels.min() < 0 < 1 < pixels.max()  # not clipped on the way in
    assert load_for_restoration(inputs / "levels.tiff")[1].full_scale == 255.0
    save_restored(np.clip(pixels, 0, 1), stored, tmp_path / "copy.tif")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "copy.tif")), np.clip(unit, 0, 1))
    assert abs(np.asarray(load_rgb(inputs / "unit.tif")).mean() - 255 * np.clip(unit, 0, 1).mean()) < 1

    run_in_process("blind_denoiser", ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4",
                                      "--eval_every=0", "--num_workers=1", "--grid_images=0", "--max_steps=1",
                                      "--model_kwargs=widths=(8,16,32),blocks=1", f"--run_dir={tmp_path / 'blind'}"])
    capsys.readouterr()
    assert toolkit_main(["denoise", str(tmp_path / "blind"), str(inputs), str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out
    assert "nan.tif: 1 of its floating-point pixels are not numbers" in said and "skipped 1" in said
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["levels.tif", "photo.png", "unit.tif"]
    for name, white in (("unit.tif", 1.0), ("levels.tif", 255.0)):
        written = Image.open(tmp_path / "out" / name)
        values = np.asarray(written)
        assert written.mode == "F" and values.shape == (32, 40) and 0 <= values.min() and values.max() <= white
        assert 0.3 * white < values.mean() < 0.7 * white  # on the file's scale, not black, not saturated
    assert toolkit_main(["denoise", str(tmp_path / "blind"), str(inputs / "unit.tif"), str(tmp_path / "x.png")]) == 2
    assert "Name it .tif, which holds floating-point and 32-bit integer images" in capsys.readouterr().err
    assert toolkit_main(["denoise", str(tmp_path / "blind"), str(inputs / "unit.tif"), str(tmp_path / "x.xyz")]) == 2
    assert "names no image format Pillow writes. Name it .tif" in capsys.readouterr().err  # not .png, for floats


def test_integer_grey_beyond_sixteen_bits_is_denoised_on_its_own_scale_and_written_as_integers(tmp_path, capsys):
    """A 32-bit integer grey TIFF (mode I: counts from a sensor) whose levels pass 65535 or 0 is read on its own
    scale (it was clipped at 65535, whitening everything above), its values below 0 kept, and written back as 32-bit
    integers on that scale in a TIFF (a folder's output is named .tif for it); one within 16 bits stays 16-bit."""
    from toolkit.data.images import load_for_restoration, save_restored

    rng = np.random.default_rng(8)
    inputs = tmp_path / "in"
    inputs.mkdir()
    counts = (60000 + 40000 * np.sin(np.arange(40) / 5)[None, :] + rng.normal(0, 3000, (32, 40))).astype(np.int32)
    counts[0, 0] = -20
    Image.fromarray(counts).save(inputs / "counts.tif")
    Image.fromarray(np.clip(counts // 4, 0, 65535).astype(np.int32)).save(inputs / "within.tif")

    pixels, stored = load_for_restoration(inputs / "counts.tif")
    assert (stored.mode, stored.bits, stored.full_scale, stored.grey) == ("I", 32, 2.0 ** 17 - 1, True)
    assert np.allclose(pixels[..., 0] * stored.full_scale, counts, atol=0.02) and pixels.min() < 0  # not clipped
    save_restored(np.clip(pixels, 0, 1), stored, tmp_path / "copy.tif")
    copy = Image.open(tmp_path / "copy.tif")
    assert copy.mode == "I" and np.array_equal(np.asarray(copy), np.clip(counts, 0, None))
    assert load_for_restoration(inputs / "within.tif")[1].bits == 16

    run_in_process("blind_denoiser", ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4",
                                      "--eval_every=0", "--num_workers=1", "--grid_images=0", "--max_steps=1",
                                      "--model_kwargs=widths=(8,16,32),blocks=1", f"--run_dir={tmp_path / 'blind'}"])
    capsys.readouterr()
    assert toolkit_main(["denoise", str(tmp_path / "blind"), str(inputs), str(tmp_path / "out")]) == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["counts.tif", "within.tif"]
    written = Image.open(tmp_path / "out" / "counts.tif")
    values = np.asarray(written)
    assert written.mode == "I" and values.shape == (32, 40) and 0 <= values.min() and values.max() <= 2 ** 17 - 1
    assert 0.5 * counts.mean() < values.mean() < 1.5 * counts.mean()  # on the file's scale, not saturated at 65535
    assert toolkit_main(["denoise", str(tmp_path / "blind"), str(inputs / "counts.tif"), str(tmp_path / "x.png")]) == 2
    assert "Name it .tif, which holds floating-point and 32-bit integer images" in capsys.readouterr().err


def test_denoise_skip_existing_continues_a_stopped_run_and_leaves_written_images_alone(tmp_path, capsys):
    """--skip_existing leaves out the images whose output is there (a run stopped on the way, each of whose outputs
    appears whole or not at all) and denoises the rest; without it every image is denoised again."""
    rng = np.random.default_rng(4)
    inputs, out = tmp_path / "in", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    for name in ("a.png", "b.jpg", "sub/c.png"):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(inputs / name)
    run_in_process("blind_denoiser", ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4",
                                      "--eval_every=0", "--num_workers=1", "--grid_images=0", "--max_steps=1",
                                      "--model_kwargs=widths=(8,16,32),blocks=1", f"--run_dir={tmp_path / 'blind'}"])
    denoise = ["denoise", str(tmp_path / "blind"), str(inputs), str(out), "--sigma=10"]
    assert toolkit_main(denoise) == 0
    written = {path: path.stat().st_mtime_ns for path in (out / "a.png", out / "b.png", out / "sub" / "c.png")}
    (out / "sub" / "c.png").unlink()  # as if the run had stopped before it
    capsys.readouterr()
    assert toolkit_main([*denoise, "--skip_existing"]) == 0
    said = capsys.readouterr().out
    assert "leaving out 2 of the 3 image(s), whose output is there already (--skip_existing)" in said
    assert "wrote 1 image(s)" in said and (out / "sub" / "c.png").is_file()
    assert all(path.stat().st_mtime_ns == written[path] for path in (out / "a.png", out / "b.png"))
    assert toolkit_main(denoise) == 0 and "wrote 3 image(s)" in capsys.readouterr().out
    assert not list(out.rglob(".*"))  # no hidden half-written files


def test_denoise_keeps_the_colour_profile_and_exif_data_and_says_what_it_cannot_keep(tmp_path, capsys):
    """A photo's colour profile (what its numbers mean as colours) and EXIF data (capture time, camera) reach the
    denoised file, 8-bit, grey and 16-bit colour alike (the 16-bit PNG's chunks read back by Pillow, its pixels
    by OpenCV), the EXIF orientation taken out since the pixels are written upright; a CMYK file goes through its
    profile to sRGB, written with sRGB's, saying so (one LittleCMS cannot use does not describe the RGB written and
    is dropped, saying so); an animation's frames beyond the first are said; a target format that cannot hold the
    metadata (BMP, a 16-bit TIFF) is written, saying what it left out."""
    from icc_profiles import ideal_inks_cmyk_profile, srgb_encoded
    from PIL import ImageCms

    from toolkit.data.images import load_for_restoration, png_chunk, save_restored, srgb_profile

    rng = np.random.default_rng(2)
    rgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    profile_of = lambda space: rgb_profile[:16] + space + rgb_profile[20:]  # noqa: E731 (carried, never parsed)
    exif = Image.Exif()
    exif[0x0132], exif[0x010F], exif[0x0112] = "2026:07:01 12:00:00", "Camera", 6  # time, maker, turn 90 degrees
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(inputs / "photo.jpg", quality=95,
                                                                            icc_profile=rgb_profile, exif=exif)
    Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8), mode="L").save(
        inputs / "grey.png", icc_profile=profile_of(b"GRAY"), exif=exif)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert("CMYK").save(
        inputs / "print.jpg", icc_profile=profile_of(b"CMYK"))  # an sRGB profile's tags: LittleCMS refuses it
    Image.new("CMYK", (30, 20), (128, 0, 0, 0)).save(inputs / "press.tif", icc_profile=ideal_inks_cmyk_profile())
    frames = [Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(inputs / "moving.gif", save_all=True, append_images=frames[1:])
    deep = rng.integers(0, 65535, (20, 30, 3), dtype=np.uint16)
    encoded = cv2.imencode(".png", deep)[1].tobytes()
    chunks = png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(rgb_profile)) + png_chunk(
        b"eXIf", exif.tobytes().removeprefix(b"Exif\x00\x00"))
    (inputs / "deep.png").write_bytes(encoded[:33] + chunks + encoded[33:])  # after the header, as Pillow does

    def kept(path: Path, profile: bytes) -> bool:
        written = Image.open(path)
        metadata = written.getexif()
        return (written.info.get("icc_profile") == profile and metadata.get(0x0132) == "2026:07:01 12:00:00"
                and metadata.get(0x010F) == "Camera" and 0x0112 not in metadata)

    # an identity restoration of the 16-bit PNG: every pixel back exactly, upright, with its profile and EXIF data
    pixels, stored = load_for_restoration(inputs / "deep.png")
    assert stored.icc_profile == rgb_profile and stored.frames == 1
    assert save_restored(pixels, stored, tmp_path / "deep-copy.png") == []
    assert kept(tmp_path / "deep-copy.png", rgb_profile)
    assert np.array_equal(cv2.imread(str(tmp_path / "deep-copy.png"), cv2.IMREAD_UNCHANGED), np.rot90(deep, -1))

    # the ideal inks' cyan at 128/255 leaves linear red 127/255, which sRGB stores as 187/255
    pixels, stored = load_for_restoration(inputs / "press.tif")
    assert np.abs(pixels * 255 - np.array([255 * srgb_encoded(127 / 255), 255, 255])).max() < 1
    assert stored.converted_through == "Ideal inks (test)" and stored.icc_profile == srgb_profile().tobytes()

    run_in_process("blind_denoiser", ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4",
                                      "--eval_every=0", "--num_workers=1", "--grid_images=0", "--max_steps=1",
                                      "--model_kwargs=widths=(8,16,32),blocks=1", f"--run_dir={tmp_path / 'blind'}"])
    capsys.readouterr()
    assert toolkit_main(["denoise", str(tmp_path / "blind"), str(inputs), str(tmp_path / "out"), "--sigma=10"]) == 0
    said = capsys.readouterr().out
    out = tmp_path / "out"
    assert Image.open(out / "photo.png").size == (20, 30) and kept(out / "photo.png", rgb_profile)  # upright
    assert kept(out / "grey.png", profile_of(b"GRAY")) and Image.open(out / "grey.png").mode == "L"
    assert kept(out / "deep.png", rgb_profile)
    assert cv2.imread(str(out / "deep.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert "icc_profile" not in Image.open(out / "print.png").info
    assert "print.jpg: its CMYK colour profile does not describe the RGB pixels written" in said
    assert Image.open(out / "press.png").info["icc_profile"] == srgb_profile().tobytes()
    assert "press.tif: in colour mode CMYK, written as sRGB through its colour profile (Ideal inks (test))" in said
    assert "moving.gif: holds 3 frames (an animation or pages); only the first is denoised" in said
    assert not any(word in said for word in ("photo.png:", "grey.png:", "deep.png:"))  # nothing left out there

    for source, target, why in (("photo.jpg", "photo.bmp", "a BMP file cannot hold them"),
                                ("deep.png", "deep.tif", "a 16-bit TIFF written here cannot hold them")):
        assert toolkit_main(["denoise", str(tmp_path / "blind"), str(inputs / source), str(tmp_path / target),
                             "--sigma=10"]) == 0
        assert f"{target}: its colour profile and its EXIF data not kept: {why}; name the output .png" in (
            capsys.readouterr().out)
        assert (tmp_path / target).stat().st_size > 0


def test_a_sixteen_bit_colour_file_is_read_upright_as_its_exif_orientation_says(tmp_path):
    """16-bit colour is read past Pillow (which decodes it at 8 bits), so its EXIF orientation is applied by
    `upright`: the same turn or mirror as Pillow's exif_transpose, for each of the 8 orientations; a 16-bit
    TIFF reads at 16 bits too, and an 8-bit file is not taken for a 16-bit one."""
    from toolkit.data.images import load_for_restoration, png_chunk, stores_sixteen_bit_colour, upright

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        image = Image.fromarray(pixels)
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(tmp_path / f"o{orientation}.png", exif=exif)
        shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / f"o{orientation}.png")))
        assert np.array_equal(upright(pixels, orientation), shown), orientation
    deep = rng.integers(0, 65535, (5, 7, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.tif"), deep)
    read, stored = load_for_restoration(tmp_path / "deep.tif")
    assert stored.bits == 16 and np.array_equal(np.round(read * 65535).astype(np.uint16), deep[..., ::-1])
    assert stores_sixteen_bit_colour(tmp_path / "deep.tif") and not stores_sixteen_bit_colour(tmp_path / "o1.png")
    assert load_for_restoration(tmp_path / "o1.png")[1].bits == 8
    # a 16-bit PNG whose EXIF (an eXIf chunk after the header, as Pillow writes it) says "turn 90 degrees clockwise"
    _, encoded = cv2.imencode(".png", deep)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = exif.tobytes(8).removeprefix(b"Exif\x00\x00")
    (tmp_path / "turned.png").write_bytes(encoded.tobytes()[:33] + png_chunk(b"eXIf", data) + encoded.tobytes()[33:])
    read, stored = load_for_restoration(tmp_path / "turned.png")
    assert stored.bits == 16 and np.array_equal(np.round(read * 65535).astype(np.uint16), np.rot90(deep[..., ::-1], -1))


def test_benchmark_denoiser_reports_our_rows_beside_the_published_ones(tiny_intel, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(tiny_intel / "seg_pred"), "--sigmas", "25",
                         "--nlm", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    row = results["sigmas"]["25.0"]
    # unclipped sigma 25: the noisy input's PSNR is about 20.2 dB (a little above after clamping to [0, 1])
    assert 19.5 < row["noisy"]["psnr"] < 23 and row["nlm"]["psnr"] > row["noisy"]["psnr"]
    text = capsys.readouterr().out
    assert "(published)" not in text and "no published figures for this folder" in text  # a user's own folder
    mcmaster = tmp_path / "McMaster"  # McMaster by name: the published rows come with it
    mcmaster.mkdir()
    for image in sorted((tiny_intel / "seg_pred").iterdir())[:2]:
        (mcmaster / image.name).write_bytes(image.read_bytes())
    assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(mcmaster), "--sigmas", "25", "--self_ensemble",
                         "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "FFDNet (published) | 32.35" in said
    assert "note: --self_ensemble not used: they set how a model denoises, and 'none' scores the noisy input" in said
    # the same in a W&B run (offline here), whose folder beside the JSON keeps it as files: every row in one table,
    # each figure in the summary, the first image's centre clean, noisy and denoised per sigma
    assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(mcmaster), "--sigmas", "25", "--nlm",
                         "--wandb_mode", "offline", "--out", str(tmp_path / "logged.json")]) == 0
    run_dir = tmp_path / "logged-wandb"
    table = json.loads((run_dir / "tables" / "benchmark_results.json").read_text())
    assert table["columns"] == ["method", "sigma", "psnr", "ssim", "source"]
    assert ["FFDNet (published)", 25.0, 32.35, None, "published"] in table["rows"]
    measured = {row[0]: row[2] for row in table["rows"] if row[4] == "measured"}
    assert set(measured) == {"non-local means", "noisy input"} and measured["non-local means"] > 20
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["nlm/psnr_sigma25"] == measured["non-local means"]
    assert summary["published/CBM3D/psnr_sigma25"] == 31.66
    assert json.loads((run_dir / "config.json").read_text())["command"] == "benchmark-denoiser"
    shown = list(run_dir.glob("wandb/offline-run-*/files/media/images/examples/sigma_25*.png"))
    assert len(shown) == 1 and Image.open(shown[0]).size == (3 * 64 + 2 * 4, 64)  # clean | noisy | nlm
    assert "W&B run (offline)" in capsys.readouterr().out
    assert not (tmp_path / "bench-wandb").exists()  # W&B disabled (as in every other test here): no run folder
    from toolkit.denoising_benchmark import centre_crop

    image = torch.rand(3, 300, 200)
    assert np.array_equal(centre_crop(image), to_hwc_uint8(image[:, 54:246, 4:196]))  # a large image's centre
    assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(tmp_path / "empty"), "--out", str(out)]) == 2
    one_image = next(path for path in mcmaster.iterdir() if path.is_file())
    capsys.readouterr()
    assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(one_image), "--out", str(out)]) == 2
    assert "is a file: pass the folder of clean reference images it is in" in capsys.readouterr().err
    # sigma 0 (what a model does to a clean image) is scored: the noisy input's infinite PSNR is written as null,
    # in JSON any reader takes; a negative or undefined noise level is refused
    assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(mcmaster), "--sigmas", "0", "--nlm",
                         "--out", str(out)]) == 0
    strict = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert strict["sigmas"]["0.0"]["noisy"]["psnr"] is None and strict["sigmas"]["0.0"]["noisy"]["ssim"] > 0.99
    assert strict["sigmas"]["0.0"]["noisy"]["per_image_psnr"] == [None, None]
    for sigmas in (["-5"], ["25", "nan"]):
        capsys.readouterr()
        assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(mcmaster), "--sigmas", *sigmas,
                             "--out", str(tmp_path / "refused.json")]) == 2
        assert "--sigmas takes noise stds on the 0-255 scale, 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "refused.json").exists()
    # every image of a folder is scored, or none: what cannot be is said all at once, with the fix
    (mcmaster / "broken.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((8, 40, 3), np.uint8)).save(mcmaster / "strip.png")
    capsys.readouterr()
    assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(mcmaster), "--out", str(out)]) == 2
    said = capsys.readouterr().err
    assert "2 of the 4 images" in said and "broken.png: not an image file" in said and "move these out" in said
    assert "strip.png: 40x8 pixels, under the 11x11 that SSIM's window needs" in said


def test_a_benchmark_killed_on_the_way_continues_where_it_stopped_and_scores_as_an_uninterrupted_one(tmp_path,
                                                                                                       capsys):
    """benchmark-denoiser keeps its scores so far in a progress file beside its JSON, written whole after every
    image: killed (SIGKILL) on the way and run again with the same settings, it continues from that file, says so,
    and writes the same per-image scores as a run that was never stopped (the example crops of W&B denoised again),
    then removes the file; other images or settings start from the first image, saying why."""
    rng = np.random.default_rng(3)
    clean = tmp_path / "clean"
    clean.mkdir()
    ramp = np.linspace(0, 255, 192)[None, :, None]
    for index in range(24):
        pixels = np.clip(ramp + rng.normal(0, 30, (192, 192, 3)).cumsum(axis=0) / 8, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(clean / f"{index:02d}.png")
    arguments = ["benchmark-denoiser", "none", "--clean", str(clean), "--sigmas", "15", "25", "--nlm",
                 "--wandb_mode", "offline"]
    whole, stopped, progress = tmp_path / "whole.json", tmp_path / "stopped.json", tmp_path / "stopped.progress.json"
    assert toolkit_main([*arguments, "--out", str(whole)]) == 0

    process = subprocess.Popen([sys.executable, "-m", "toolkit.cli", *arguments, "--out", str(stopped)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not progress.exists() and process.poll() is None:
        time.sleep(0.005)
    process.kill()  # no handler runs: only what was written whole survives
    process.wait()
    assert not stopped.exists(), "the benchmark finished before it could be stopped: give it more images"
    kept = progress.read_text()
    scored = sum(len(level["scores"]["noisy"]) for level in json.loads(kept)["sigmas"].values())
    assert 1 <= scored < 48

    capsys.readouterr()
    assert toolkit_main([*arguments, "--out", str(stopped)]) == 0
    said = capsys.readouterr().out
    assert f"continuing the stopped benchmark kept in {progress}: sigma 15 at" in said
    assert "scores other than it did before the stop" not in said and not progress.exists()
    for sigma in ("15.0", "25.0"):
        for method in ("noisy", "nlm"):
            before, after = (json.loads(path.read_text())["sigmas"][sigma][method] for path in (whole, stopped))
            assert after["per_image_psnr"] == before["per_image_psnr"] and after["ssim"] == before["ssim"]

    def example_strips(run: str) -> dict:
        strips = (tmp_path / f"{run}-wandb" / "wandb").glob("offline-run-*/files/media/images/examples/*.png")
        return {path.name.split("_0_")[0]: np.asarray(Image.open(path)) for path in strips}

    # W&B's example strips of both levels, the first image (scored before the kill) denoised again for them
    strips, whole_strips = example_strips("stopped"), example_strips("whole")
    assert sorted(strips) == ["sigma_15", "sigma_25"]
    assert all(np.array_equal(strips[name], whole_strips[name]) for name in strips)

    # the progress of other images (here fewer: --max_images) is not continued from, and the reason is said
    progress.write_text(kept)
    assert toolkit_main([*arguments, "--out", str(stopped), "--max_images", "3"]) == 0
    assert "holds the scores of a stopped benchmark of other images, pixels" in capsys.readouterr().out
    assert json.loads(stopped.read_text())["images"] == 3 and not progress.exists()


def test_compare_benchmarks_pairs_two_results_image_by_image(tiny_intel, tmp_path, capsys, monkeypatch):
    """Two real benchmark-denoiser results of the same noisy images: non-local means told the true sigma, and told
    the sigma estimated from each noisy image (--blind), compared image by image; results of other images are
    refused before anything is compared, and results of the same images are not for how the folder was named."""
    folder = tmp_path / "clean"
    folder.mkdir()
    for image in sorted((tiny_intel / "seg_pred").iterdir())[:4]:
        (folder / image.name).write_bytes(image.read_bytes())
    told, blind, halved = tmp_path / "told.json", tmp_path / "blind.json", tmp_path / "halved.json"
    for out, extra in ((told, []), (blind, ["--blind"]), (halved, ["--reduce", "2"])):
        assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(folder), "--sigmas", "15", "25", "--nlm",
                             "--out", str(out), *extra]) == 0
    capsys.readouterr()
    compared = tmp_path / "compared.json"
    assert toolkit_main(["compare-benchmarks", str(told), str(blind), "--method", "nlm", "--out", str(compared),
                         "--wandb_mode", "offline"]) == 0
    text = capsys.readouterr().out
    assert "| σ | told (nlm), dB | blind (nlm), dB | difference | 95% interval over images | images better |" in text
    assert "| mean of the levels |" in text and "Intervals over the 4 images scored" in text
    written = json.loads(compared.read_text())["compared"][str(blind)]
    results = [json.loads(path.read_text())["sigmas"] for path in (told, blind)]
    for level in written["levels"]:
        before, after = (np.array(result[f"{level['sigma']:.1f}"]["nlm"]["per_image_psnr"]) for result in results)
        assert level["images"] == 4 and level["better"] == int((after > before).sum())
        assert level["difference"]["mean"] == pytest.approx(float((after - before).mean()))
        assert level["difference"]["low"] < level["difference"]["mean"] < level["difference"]["high"]
        assert f"| {level['sigma']:g} | {before.mean():.3f} | {after.mean():.3f} |" in text
    # the same in a W&B run (offline here) whose folder beside the JSON keeps the table and the differences as files
    table = json.loads((tmp_path / "compared-wandb" / "tables" / "comparison_paired_psnr.json").read_text())
    assert [row[:2] for row in table["rows"]] == [[str(blind), 15.0], [str(blind), 25.0]]
    summary = json.loads((tmp_path / "compared-wandb" / "summary.json").read_text())
    assert summary["blind/difference_sigma25"] == pytest.approx(written["levels"][1]["difference"]["mean"])
    # two files of one name from different folders keep apart in the labels and the W&B keys, by their folders
    (tmp_path / "again").mkdir()
    shutil.copy(blind, tmp_path / "again" / "blind.json")
    assert toolkit_main(["compare-benchmarks", str(told), str(blind), str(tmp_path / "again" / "blind.json"),
                         "--method", "nlm", "--out", str(compared), "--wandb_mode", "offline"]) == 0
    assert f"| σ | told (nlm), dB | {tmp_path.name}-blind (nlm), dB |" in capsys.readouterr().out
    summary = json.loads((tmp_path / "compared-wandb" / "summary.json").read_text())
    assert summary[f"{tmp_path.name}-blind/difference_sigma25"] == summary["again-blind/difference_sigma25"]
    # --base_method: another row of the base file (here non-local means against the noisy input, the same file)
    assert toolkit_main(["compare-benchmarks", str(told), str(told), "--base_method", "noisy", "--method", "nlm",
                         "--sigmas", "25", "--out", str(tmp_path / "against-noisy.json")]) == 0
    text = capsys.readouterr().out
    assert "| 25 |" in text and "| 15 |" not in text and "mean of the levels" not in text and "4 of 4 |" in text
    # refused with one line that says what is wrong: other images, a row or level not scored, not a result
    (tmp_path / "other.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{")
    for arguments, message in (([str(told), str(halved)], "scored different images (reduction: 1 against 2)"),
                               ([str(told), str(blind), "--method", "bm3d"], "has no 'bm3d' at sigma 15"),
                               ([str(told), str(blind), "--sigmas", "50"], "sigma 50 is not scored in both files"),
                               ([str(told), str(tmp_path / "other.json")], "not a toolkit benchmark-denoiser JSON"),
                               ([str(told), str(tmp_path / "broken.json")], "is not JSON"),
                               ([str(told), str(tmp_path / "missing.json")], "is not a file")):
        assert toolkit_main(["compare-benchmarks", *arguments]) == 2
        assert message in capsys.readouterr().err
    changed = json.loads(blind.read_text())
    changed["sigmas"]["25.0"]["noisy"]["per_image_psnr"][0] += 0.5  # another noisy image where the first was
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    assert toolkit_main(["compare-benchmarks", str(told), str(tmp_path / "changed.json")]) == 2
    assert "hold different noisy images at sigma 25" in capsys.readouterr().err
    # the images are told apart by their names and pixels, not by how the folder's path was written: the same images
    # by a relative path, or copied elsewhere, compare; a copy with one image changed (unclipped noise leaves the
    # noisy input's PSNR as it was) does not; results written before the images' digest fall back on the folder's name
    monkeypatch.chdir(tmp_path)
    shutil.copytree(folder, tmp_path / "moved" / "clean")
    changed_folder = shutil.copytree(folder, tmp_path / "changed" / "clean")
    first = sorted(changed_folder.iterdir())[0]
    pixels = np.asarray(Image.open(first).convert("RGB")).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(first)  # the same name and size, other pixels
    for name in ("relative", "moved", "changed"):
        clean = {"relative": "clean", "moved": str(tmp_path / "moved" / "clean"), "changed": str(changed_folder)}[name]
        assert toolkit_main(["benchmark-denoiser", "none", "--clean", clean, "--sigmas", "15", "--out",
                             f"{name}.json"]) == 0
    capsys.readouterr()
    for name in ("relative", "moved"):
        assert toolkit_main(["compare-benchmarks", str(told), f"{name}.json", "--method", "noisy", "--out",
                             f"{name}-compared.json"]) == 0
    assert toolkit_main(["compare-benchmarks", str(told), "changed.json", "--method", "noisy"]) == 2
    assert "scored different images (the files' names or pixels differ" in capsys.readouterr().err
    older = {key: value for key, value in json.loads(told.read_text()).items() if key != "images_digest"}
    Path("older.json").write_text(json.dumps(older | {"folder": "elsewhere/McMaster"}))
    assert toolkit_main(["compare-benchmarks", "older.json", "relative.json", "--method", "noisy"]) == 2
    assert "scored different folders (elsewhere/McMaster against clean)" in capsys.readouterr().err
    Path("older.json").write_text(json.dumps(older | {"folder": "../somewhere/clean"}))
    assert toolkit_main(["compare-benchmarks", "older.json", "relative.json", "--method", "noisy", "--out",
                         "older-compared.json"]) == 0


def test_paired_differences_against_hand_computed_values(tmp_path):
    from toolkit.denoiser_comparison import comparison_table, paired_differences
    from toolkit.runs import write_json

    def result(model_by_sigma):
        return {"sigmas": {sigma: {"model": {"per_image_psnr": values}} for sigma, values in model_by_sigma.items()}}

    base = result({"15.0": [30.0, 32.0, 34.0], "25.0": [28.0, 29.0, 30.0], "0.0": [50.0, None, 52.0]})
    other = result({"15.0": [30.5, 32.0, 34.4], "25.0": [28.1, 29.3, 29.8], "0.0": [51.0, 55.0, 51.0]})
    compared = paired_differences(base, other, "model", "model", "base", "other")
    zero, fifteen, twenty_five = compared["levels"]  # in order of the noise level
    # sigma 15: differences 0.5, 0, 0.4: mean 0.3, sd sqrt(0.07), t(0.975, 2) = 4.302653
    assert fifteen["difference"]["mean"] == pytest.approx(0.3)
    half = 4.302653 * math.sqrt(0.07) / math.sqrt(3)
    assert (fifteen["difference"]["low"], fifteen["difference"]["high"]) == (pytest.approx(0.3 - half, abs=1e-5),
                                                                            pytest.approx(0.3 + half, abs=1e-5))
    assert fifteen["better"] == 2 and fifteen["images"] == 3 and fifteen["base"] == pytest.approx(32.0)
    # sigma 0: the second image has no finite base PSNR, so it is left out there (and counted) and of the mean
    assert zero["images"] == 2 and zero["left_out"] == 1 and zero["difference"]["mean"] == pytest.approx(0.0)
    # the mean of the levels, per image over the three levels, for the images every level holds (the first, third)
    assert compared["mean"]["images"] == 2
    assert compared["mean"]["difference"]["values"] == pytest.approx([(1.0 + 0.5 + 0.1) / 3, (-1.0 + 0.4 - 0.2) / 3])
    table = comparison_table(compared, "base", "other")
    assert "| 0 | 51.000 | 51.000 | +0.000 |" in table and "1 of 2 (1 left out: infinite) |" in table
    assert "| 15 | 32.000 | 32.300 | +0.300 |" in table and "| mean of the levels | | |" in table
    # a level where no image has two finite PSNRs (the noisy input told sigma 0): said, and written as null, not NaN
    empty = paired_differences(result({"0.0": [None, None]}), result({"0.0": [None, 50.0]}), "model", "model", "a", "b")
    assert empty["levels"][0]["images"] == 0 and "(no images)" in comparison_table(empty, "a", "b")
    write_json(tmp_path / "empty.json", empty)
    strict = json.loads((tmp_path / "empty.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    assert strict["levels"][0]["difference"]["mean"] is None and strict["levels"][0]["base"] is None


def test_blind_conditioned_unet_trains_and_serves_the_published_protocol(tiny_intel, tmp_path, capsys):
    """The README's McMaster model: a noise-conditioned U-Net, sigma drawn per image, unclipped noise."""
    run_dir = tmp_path / "blind"
    summary = run_in_process("autoencoder", [
        f"--data={tiny_intel}", "--model=unet", "--model_kwargs=width=8", "--conditioned", "--sigma=0",
        "--sigma_max=0.2",
        "--clip_noise=false", "--crop=24", f"--run_dir={run_dir}", *TINY_DENOISER, "--max_steps=3"])
    assert summary["gflop_per_image"] > 0 and summary["test_psnr"] > 0
    out = tmp_path / "bench.json"
    assert toolkit_main(["benchmark-denoiser", str(run_dir), "--clean", str(tiny_intel / "seg_pred"),
                         "--sigmas", "15", "50", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    rows = results["sigmas"]
    assert rows["15.0"]["model"]["psnr"] > rows["50.0"]["model"]["psnr"] > 0
    assert "| **this toolkit** |" in capsys.readouterr().out
    image = sorted((tiny_intel / "seg_pred").iterdir())[0]
    capsys.readouterr()
    assert toolkit_main(["denoise", str(run_dir), str(image), str(tmp_path / "clean.png"), "--sigma", "25"]) == 0
    assert Image.open(tmp_path / "clean.png").size == Image.open(image).size
    assert "light enough" not in capsys.readouterr().out
    # light noise (here none) on a folder of images: the note that detail may suffer, said once, not per image
    assert toolkit_main(["denoise", str(run_dir), str(tiny_intel / "seg_pred"), str(tmp_path / "light"),
                         "--sigma", "0"]) == 0
    said = capsys.readouterr().out
    assert said.count("noise below sigma 2/255 is light enough") == 1 and "compare the output with the input" in said
    assert "--light_noise_share=0.15 --light_noise_max=2" in said
    assert len(list((tmp_path / "light").iterdir())) == 12
    # --device: by default the GPU if torch saw one, else the CPU, and said which; the noise is drawn on the CPU,
    # so the CPU scores exactly what the default scored here (a GPU's exact fp32 differs only in summation order)
    gpu = torch.cuda.is_available()
    assert results["device"].startswith("cuda (" if gpu else "cpu (")
    on_cpu = tmp_path / "bench-cpu.json"
    assert toolkit_main(["benchmark-denoiser", str(run_dir), "--clean", str(tiny_intel / "seg_pred"),
                         "--sigmas", "15", "50", "--device", "cpu", "--out", str(on_cpu)]) == 0
    cpu_rows = json.loads(on_cpu.read_text())["sigmas"]
    for sigma in ("15.0", "50.0"):
        assert cpu_rows[sigma]["noisy"] == rows[sigma]["noisy"]  # the same noisy images
        assert cpu_rows[sigma]["model"]["psnr"] == pytest.approx(rows[sigma]["model"]["psnr"], abs=1e-3 if gpu else 0)
    if not gpu:
        capsys.readouterr()
        assert toolkit_main(["denoise", str(run_dir), str(image), str(tmp_path / "gpu.png"), "--sigma", "25",
                             "--device", "cuda"]) == 2
        assert "torch sees no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "gpu.png").exists()
        assert toolkit_main(["denoise", str(run_dir), str(image), str(tmp_path / "gpu.png"), "--device", "tpu"]) == 2
        assert "not a torch device" in capsys.readouterr().err


# ---- the blind denoiser: tiles, patches, the noise estimator, the recipe ------------------------------------

def test_tiles_cover_each_image_and_are_split_by_image(tmp_path, cache_dir):
    from toolkit.data.clean_images import load_clean_images, tile_offsets
    from toolkit.data.settings import CleanImageSettings

    assert tile_offsets(481, 160) == [0, 160, 321] and tile_offsets(321, 160) == [0, 161]
    assert tile_offsets(150, 160) == [] and tile_offsets(250, 160) == [0, 90]  # > half a tile left: overlap
    folder = tmp_path / "clean"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        size = (80, 50) if index % 2 else (50, 80)  # landscape and portrait
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{index}.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / "tiny.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    data = load_clean_images(CleanImageSettings(data=str(folder), tile_size=32, val_fraction=0.34), cache_dir,
                             num_workers=1, log=lambda *_: None)
    assert data.images == 6 and data.stored.num_samples == 6 * 4  # 80 x 50: tiles at 0 and 48 along 80, 0 and 18
    # along 50 (18 px over one tile is more than half a tile: a second, overlapping one)
    skipped = {item["file"]: item["reason"] for item in data.stored.manifest["skipped"]}
    assert "smaller than the 32px tile" in skipped["tiny.png"] and "broken.jpg" in skipped
    with pytest.raises(DataError) as refused:  # every reason said once, with how many images it stopped
        load_clean_images(CleanImageSettings(data=str(folder), tile_size=96), cache_dir, num_workers=1,
                          log=lambda *_: None)
    said = str(refused.value)
    assert said.startswith("none of the 8 images could be stored: ")
    assert said.endswith("Lower --tile_size to the smallest image side at most, or add larger images.")
    assert "1 not an image file (unknown format) (e.g. " in said and "7 smaller than the 96px tile (e.g. " in said
    assert not set(data.source[data.train_indices]) & set(data.source[data.val_indices])  # no image on both sides
    first = np.asarray(Image.open(folder / "0.png"))  # 50 wide, 80 tall: rows 0 and 48, columns 0 and 18
    loader = make_loader(data.stored, np.arange(4), 4, train=False, image_size=32, device=torch.device("cpu"),
                         num_workers=1)
    tiles = next(iter(loader))[0].permute(0, 2, 3, 1).numpy()
    for tile, (top, left) in zip(tiles, [(0, 0), (0, 18), (48, 0), (48, 18)]):  # the pixels, not resampled
        assert np.array_equal(tile, first[top:top + 32, left:left + 32])


def test_reductions_add_each_image_tiled_smaller_on_its_own_side_of_the_split(tmp_path, cache_dir):
    """--reductions=1,2: every image's tiles as it is and halved each way (each 2x2 block averaged), all of an
    image's tiles on one side of the split; the default stores exactly what it stored before the option."""
    from toolkit.data.clean_images import load_clean_images
    from toolkit.data.settings import CleanImageSettings

    folder = tmp_path / "clean"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(5):
        Image.fromarray(rng.integers(0, 255, (65, 97, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "small.png")  # 20 px halved
    settings = CleanImageSettings(data=str(folder), tile_size=32, val_fraction=0.34)
    plain = load_clean_images(settings, cache_dir, num_workers=1, log=lambda *_: None)
    both = load_clean_images(dataclasses.replace(settings, reductions="1,2"), cache_dir, num_workers=1,
                             log=lambda *_: None)
    # 97 x 65: 3 x 2 tiles of 32; halved (49 x 33): 2 x 1; the 40 px image has one tile, and none once halved
    assert plain.stored.num_samples == 5 * 6 + 1 and both.stored.num_samples == 5 * (6 + 2) + 1
    assert all(len(box) == 2 for box in plain.stored.manifest["boxes"])  # as before the option: same cache, split
    assert plain.images == both.images == 6
    halved = [i for i, box in enumerate(both.stored.manifest["boxes"]) if len(box) == 3]
    assert len(halved) == 10 and all(both.stored.manifest["boxes"][i][2] == 2 for i in halved)
    index = halved[0]
    name, (top, left, _) = both.stored.files[index], both.stored.manifest["boxes"][index]
    expected = np.asarray(Image.open(folder / name).reduce(2))[top:top + 32, left:left + 32]
    loader = make_loader(both.stored, np.array([index]), 1, train=False, image_size=32, device=torch.device("cpu"),
                         num_workers=1)
    assert np.array_equal(next(iter(loader))[0][0].permute(1, 2, 0).numpy(), expected)
    sides = [set(both.source[part].tolist()) for part in (both.train_indices, both.val_indices)]
    assert not sides[0] & sides[1] and set(both.source[both.val_indices]) == set(plain.source[plain.val_indices])
    for bad in ("0", "1,x", ""):
        with pytest.raises(ConfigError, match="--reductions takes comma-separated whole factors"):
            CleanImageSettings(data=str(folder), reductions=bad).check_data_settings()
    # --reduced_tile_repeats: each halved training tile visited that often per epoch by the real loader, the
    # whole ones once, the validation tiles never
    assert np.array_equal(both.train_indices_with_repeats(1), both.train_indices)
    repeated = both.train_indices_with_repeats(3)
    turns = np.bincount(repeated, minlength=both.stored.num_samples)
    assert np.array_equal(turns[both.train_indices], np.where(both.tile_reductions()[both.train_indices] > 1, 3, 1))
    assert not turns[both.val_indices].any()
    loader = make_loader(both.stored, repeated, 1, train=True, image_size=32, device=torch.device("cpu"),
                         num_workers=1, seed=5)
    seen = sorted(batch[0][0].numpy().tobytes() for batch in loader)
    in_order = make_loader(both.stored, both.train_indices, 1, train=False, image_size=32, device=torch.device("cpu"),
                           num_workers=1)
    tile_of = {i: batch[0][0].numpy().tobytes() for i, batch in zip(both.train_indices, in_order)}
    assert seen == sorted(tile_of[i] for i in repeated)
    for repeats, reductions, message in ((0, "1,2", "reduced_tile_repeats"), (2, "1", "makes none")):
        with pytest.raises(ConfigError, match=message):
            CleanImageSettings(data=str(folder), reductions=reductions,
                               reduced_tile_repeats=repeats).check_data_settings()


def test_benchmark_scores_images_reduced_as_a_folder_of_reduced_images_would_score(tmp_path, capsys):
    """--reduce 2 scores each image halved (box filter) before the noise: the same figures as a folder of halved
    copies; published rows (for whole images) are not shown."""
    folder, halved = tmp_path / "McMaster", tmp_path / "halved"
    folder.mkdir()
    halved.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        image = Image.fromarray(rng.integers(0, 255, (45, 61, 3), dtype=np.uint8))
        image.save(folder / f"{index}.png")
        image.reduce(2).save(halved / f"{index}.png")
    scores = {}
    for name, clean, reduce in (("reduced", folder, "2"), ("copies", halved, "1")):
        out = tmp_path / f"{name}.json"
        assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(clean), "--sigmas", "25", "--nlm",
                             "--reduce", reduce, "--out", str(out)]) == 0
        scores[name] = json.loads(out.read_text())["sigmas"]["25.0"]
        assert json.loads(out.read_text())["reduction"] == int(reduce)
    assert scores["reduced"] == scores["copies"]
    assert "(published)" not in capsys.readouterr().out  # McMaster by name, but not whole images
    assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(folder), "--reduce", "0"]) == 2


def test_patches_are_cut_turned_and_mirrored_per_image():
    from toolkit.data.augment import random_dihedral, random_patches

    images = torch.arange(4 * 3 * 12 * 12, dtype=torch.float32).view(4, 3, 12, 12)
    patches = random_patches(images, 5, step_generator(torch.device("cpu"), 0, 1))
    assert patches.shape == (4, 3, 5, 5)
    for image, patch in zip(images, patches):  # each patch is a window of its own image
        top, left = [int(v) for v in torch.nonzero(image[0] == patch[0, 0, 0])[0]]
        assert torch.equal(image[:, top:top + 5, left:left + 5], patch)
    turned = random_dihedral(patches, step_generator(torch.device("cpu"), 0, 2))
    symmetries = [torch.rot90(p, k, dims=(1, 2)) for p in patches for k in range(4)]
    for patch, out in zip(patches, turned):
        candidates = [torch.rot90(patch, k, dims=(1, 2)) for k in range(4)]
        candidates += [c.flip(2) for c in candidates]
        assert any(torch.equal(out, c) for c in candidates)
    assert symmetries  # the 8 symmetries of the square


def test_channel_orders_reorder_each_patch_s_colours_and_replay_from_the_step():
    from toolkit.data.augment import CHANNEL_ORDERS, random_channel_order

    images = torch.rand(64, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    images = images.contiguous(memory_format=torch.channels_last)
    reordered = random_channel_order(images, step_generator(torch.device("cpu"), 0, 3))
    assert reordered.is_contiguous(memory_format=torch.channels_last)  # the layout the convolutions want
    seen = set()
    for image, out in zip(images, reordered):
        order = next(order for order in CHANNEL_ORDERS if torch.equal(out, image[list(order)]))
        seen.add(order)
    assert seen == set(CHANNEL_ORDERS)  # all 6 orders occur in 64 patches, each channel kept whole
    again = random_channel_order(images, step_generator(torch.device("cpu"), 0, 3))
    assert torch.equal(reordered, again)  # a pure function of (patches, seed, step): a resumed run replays it
    with pytest.raises(ValueError, match="3 colour channels"):
        random_channel_order(torch.zeros(2, 1, 4, 4), step_generator(torch.device("cpu"), 0, 3))


def test_self_ensemble_averages_the_eight_symmetries_and_is_itself_symmetric():
    from toolkit.data.augment import DIHEDRAL, dihedral, undo_dihedral
    from toolkit.models.denoisers import ResUNet
    from toolkit.train.denoise import denoise

    image = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(0))  # not square, not a multiple of 4
    views = [dihedral(image, turns, mirrored) for turns, mirrored in DIHEDRAL]
    assert len({tuple(view.flatten()[:50].tolist()) for view in views}) == 8  # eight different images
    assert all(torch.equal(undo_dihedral(view, *how), image) for view, how in zip(views, DIHEDRAL))
    torch.manual_seed(0)
    model = ResUNet(widths=(4, 8, 16), blocks=1).eval()  # random weights: not symmetric by itself
    sigmas = torch.full((1,), 25 / 255)
    with torch.no_grad():
        single = denoise(model, image, sigmas, True)
        ensemble = denoise(model, image, sigmas, True, self_ensemble=True)
        assert ensemble.shape == image.shape and not torch.allclose(single, ensemble, atol=1e-4)
        manual = sum(undo_dihedral(model(view, sigmas), *how) for view, how in zip(views, DIHEDRAL)) / 8
        assert torch.allclose(ensemble, manual, atol=1e-6)
        for turns, mirrored in DIHEDRAL:  # turning the input turns the ensemble's output the same way
            turned = denoise(model, dihedral(image, turns, mirrored), sigmas, True, self_ensemble=True)
            assert torch.allclose(turned, dihedral(ensemble, turns, mirrored), atol=1e-5)
        model_free = DnCNN(depth=3, width=8).eval()  # unconditioned models take it as well
        assert denoise(model_free, image, sigmas, False, self_ensemble=True).shape == image.shape


def test_the_noise_estimator_finds_the_level_of_white_noise():
    from toolkit.inference import estimate_noise_sigma

    clean = torch.from_numpy(np.array(Image.fromarray(
        (np.indices((96, 96)).sum(0) % 255).astype(np.uint8)).convert("RGB"))).permute(2, 0, 1).float() / 255
    for sigma in (15, 25, 50):
        noisy = clean + sigma / 255 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(sigma))
        assert estimate_noise_sigma(noisy) * 255 == pytest.approx(sigma, rel=0.12)
    assert estimate_noise_sigma(clean) * 255 < 2 and estimate_noise_sigma(torch.full((3, 64, 64), 0.5)) < 1e-6

    # a saved noisy photograph is clipped to [0, 1]: the noise hidden in its dark and bright parts is not read
    # as less noise (scikit-image's estimate over the whole image falls ~20% short here)
    import skimage.data
    from skimage.restoration import estimate_sigma

    scene = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 255
    for sigma in (25, 50):
        noisy = (scene + sigma / 255 * torch.randn(scene.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        whole = estimate_sigma(noisy.permute(1, 2, 0).double().numpy(), channel_axis=-1, average_sigmas=True)
        ours = estimate_noise_sigma(noisy)
        assert ours * 255 == pytest.approx(sigma, rel=0.08) and abs(ours * 255 - sigma) < abs(whole * 255 - sigma)


def test_the_noise_estimator_reads_fine_texture_as_picture_not_noise(monkeypatch):
    """The patch estimator finds the noise in the smallest eigenvalues of the 7x7 patches' covariance, where fine
    texture does not reach; the wavelet estimator reads such texture as noise (here 50-60 for a clean image)."""
    import toolkit.inference as inference

    rows, cols = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    texture = torch.stack([0.5 + 0.2 * torch.sin(2 * math.pi * (0.37 * cols + 0.21 * rows) + channel)
                           + 0.1 * torch.sin(2 * math.pi * (0.11 * cols - 0.43 * rows) + 2 * channel)
                           for channel in range(3)])
    for sigma in (0, 2, 5, 25, 50):
        noisy = texture + sigma / 255 * torch.randn(texture.shape, generator=torch.Generator().manual_seed(sigma))
        assert inference.estimate_noise_sigma(noisy) * 255 == pytest.approx(sigma, abs=0.1 + 0.02 * sigma)
        assert inference.wavelet_noise_sigma(noisy) * 255 > sigma + 10
    noisy = texture + 5 / 255 * torch.randn(texture.shape, generator=torch.Generator().manual_seed(0))
    # a large photograph is read on a grid of patches (here every second row and column of the 122x122): as right
    monkeypatch.setattr(inference, "NOISE_PATCHES_MAX", 4000)
    assert inference.estimate_noise_sigma(noisy) * 255 == pytest.approx(5, abs=0.3)
    # every patch of a 600x600 image (352,836: 416 MB as one float64 matrix) is read in chunks, in far less memory
    monkeypatch.setattr(inference, "NOISE_PATCHES_MAX", 10 ** 9)
    large = 0.5 + 5 / 255 * torch.randn((3, 600, 600), generator=torch.Generator().manual_seed(3))
    tracemalloc.start()
    try:
        assert inference.estimate_noise_sigma(large) * 255 == pytest.approx(5, abs=0.1)
        assert tracemalloc.get_traced_memory()[1] < 120 * 2 ** 20
    finally:
        tracemalloc.stop()
    monkeypatch.undo()
    # a grey image in three channels: the copies are not read as directions without noise (which would say 0)
    grey = texture[:1] + 5 / 255 * torch.randn((1, 128, 128), generator=torch.Generator().manual_seed(1))
    assert inference.estimate_noise_sigma(grey.expand(3, -1, -1)) * 255 == pytest.approx(5, abs=0.3)
    # too small for the patches' statistics: the wavelet estimate
    assert inference.estimate_noise_sigma(noisy[:, :10, :40]) == inference.wavelet_noise_sigma(noisy[:, :10, :40])


def test_the_noise_estimator_leaves_clipped_values_out_and_hands_strong_clipped_noise_to_the_wavelets():
    """A saved photograph's noise is clipped at black and white: patches holding a 0 or a 1 are left out of the
    covariance, and above 30/255, where clipping reaches into the patches kept, the wavelet estimate is used."""
    import skimage.data

    from toolkit.inference import estimate_noise_sigma, patch_noise_sigma, wavelet_noise_sigma

    scene = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 255
    generator = torch.Generator().manual_seed(2)
    noisy = (scene + 15 / 255 * torch.randn(scene.shape, generator=generator)).clamp(0, 1)
    saved = (noisy * 255).round() / 255
    pixels = saved.double().numpy()
    everything = patch_noise_sigma(pixels, None) * 255  # the clipped values read as less noise
    assert estimate_noise_sigma(saved) * 255 == pytest.approx(15, abs=0.5) and everything < 14.5
    assert estimate_noise_sigma(saved) * 255 == pytest.approx(
        patch_noise_sigma(pixels, ((pixels == 0) | (pixels == 1)).any(axis=0)) * 255)
    strong = (scene + 50 / 255 * torch.randn(scene.shape, generator=generator)).clamp(0, 1)
    assert estimate_noise_sigma(strong) == wavelet_noise_sigma(strong)
    unclipped = scene + 50 / 255 * torch.randn(scene.shape, generator=generator)  # the benchmark's protocol
    assert estimate_noise_sigma(unclipped) != wavelet_noise_sigma(unclipped)
    assert estimate_noise_sigma(unclipped) * 255 == pytest.approx(50, abs=1)


def test_blind_denoiser_recipe_trains_resumes_exactly_and_is_served_blind(tmp_path, capsys):
    args = ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4", "--eval_batch_size=8",
            "--epochs=2", "--eval_every=40", "--checkpoint_every=4", "--num_workers=1", "--grid_images=2",
            "--model_kwargs=widths=(8,16,32),blocks=1", "--reductions=1,2"]  # the images halved too
    whole = run_in_process("blind_denoiser", [*args, f"--run_dir={tmp_path / 'whole'}"])
    assert whole["val_psnr_25"] > whole["val_noisy_psnr_25"]  # it denoises, even this little
    assert {"val_psnr_15", "val_psnr_50", "val_psnr"} <= set(whole)
    assert (tmp_path / "whole" / "plots" / "validation_psnr.png").is_file()
    # validation chooses on the held-out images' tiles as they are (what val_psnr means without --reductions);
    # their halved tiles are scored beside, apart
    from toolkit.data.clean_images import load_clean_images
    from toolkit.data.settings import CleanImageSettings

    data = load_clean_images(CleanImageSettings(data="synthetic", tile_size=48, reductions="1,2"), num_workers=1,
                             log=lambda *_: None)
    boxes = data.stored.manifest["boxes"]
    assert whole["val_tiles"] == sum(len(boxes[i]) == 2 for i in data.val_indices) > 0
    assert whole["val_x2_tiles"] == sum(len(boxes[i]) == 3 for i in data.val_indices) > 0
    assert whole["val_x2_psnr_25"] > whole["val_x2_noisy_psnr_25"] and "val_x2_psnr" in whole
    # --reduced_tile_repeats=2: the halved training tiles twice per epoch (the loader's visits: test above)
    capsys.readouterr()
    run_in_process("blind_denoiser", [*args, f"--run_dir={tmp_path / 'repeats'}", "--reduced_tile_repeats=2",
                                      "--max_steps=2"])
    turns = len(data.train_indices) + sum(len(boxes[i]) == 3 for i in data.train_indices)
    assert f"each reduced training tile 2 times per epoch: {turns} tile turns per epoch" in capsys.readouterr().out
    logged = read_metrics(tmp_path / "whole")
    assert len(series(logged, "val/x2/psnr")) == len(series(logged, "val/psnr")) > 2
    # toolkit report reads it as a denoiser run: its validation table per noise level and its figures
    assert toolkit_main(["report", str(tmp_path / "whole"), "--out", str(tmp_path / "report"),
                         "--wandb_mode=disabled"]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "validation, σ (of 255)" in page and f"{whole['val_psnr_25']:.2f}" in page
    assert f"<td>25, reduced x2</td><td>{whole['val_x2_psnr_25']:.2f}</td>" in page
    assert "validation PSNR per noise level" in page and "clean / noisy / denoised" in page
    # the norm before clipping, logged at log steps
    norms = [norm for _, norm in series(read_metrics(tmp_path / "whole"), "grad_norm")]
    assert norms and all(np.isfinite(norm) and norm > 0 for norm in norms)
    with pytest.raises(UserError, match="max_grad_norm"):
        run_in_process("blind_denoiser", [*args, f"--run_dir={tmp_path / 'bad'}", "--max_grad_norm=-1"])
    run_in_process("blind_denoiser", [*args, f"--run_dir={tmp_path / 'split'}", "--max_steps=5"])
    resumed = run_in_process("blind_denoiser", [*args, f"--run_dir={tmp_path / 'split'}", "--resume"])
    assert_same_final_weights(tmp_path / "whole", tmp_path / "split")
    assert resumed["val_psnr"] == whole["val_psnr"]
    source = tmp_path / "noisy.png"
    clean = np.asarray(Image.open(sorted((Path(__import__("os").environ["SCENE_TOOLKIT_CACHE"]) /
                                          "synthetic-scenes" / "seg_pred").iterdir())[0]))
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(source)
    assert toolkit_main(["denoise", str(tmp_path / "whole"), str(source), str(tmp_path / "out.png")]) == 0
    said = capsys.readouterr().out
    assert "estimated noise sigma" in said and Image.open(tmp_path / "out.png").size == Image.open(source).size
    assert "above the noise levels" not in said
    # noise stronger than the run drew in training (--sigma_max, 50 by default) is said, and still denoised
    assert toolkit_main(["denoise", str(tmp_path / "whole"), str(source), str(tmp_path / "strong.png"),
                         "--sigma=75"]) == 0
    assert "--sigma=75 is above the noise levels this model trained on (0-50/255)" in capsys.readouterr().out
    from toolkit.inference import trained_sigma_max

    assert trained_sigma_max(tmp_path / "whole") == 50.0
    bare = tmp_path / "bare-checkpoint"  # a checkpoint folder copied on its own: nothing to say, no error
    shutil.copytree(sorted((tmp_path / "whole" / "checkpoints").glob("step-*"))[-1], bare)
    assert trained_sigma_max(bare) is None
    result = run_toolkit_without_heavy_imports(["denoise", str(tmp_path / "whole"), str(source),
                                                str(tmp_path / "x8.png"), "--sigma=25", "--self_ensemble"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(tmp_path / "x8.png").size == Image.open(source).size
    # a large image in tiles (--tile_size; each with 64 px of context): its size kept, the whole pass' output to a
    # level; the tiles' progress and count said
    big = tmp_path / "big.png"
    Image.fromarray(np.tile(noisy, (2, 2, 1))).save(big)  # 300 x 300: more than a tile of 96 and its margins
    assert toolkit_main(["denoise", str(tmp_path / "whole"), str(big), str(tmp_path / "big-tiled.png"), "--sigma=25",
                         "--tile_size=96"]) == 0
    assert "big.png: 300x300, denoised in 16 tiles of at most 96 px" in capsys.readouterr().out
    assert toolkit_main(["denoise", str(tmp_path / "whole"), str(big), str(tmp_path / "big-whole.png"), "--sigma=25",
                         "--tile_size=0"]) == 0
    assert "tiles" not in capsys.readouterr().out
    tiled_pixels, whole_pixels = (np.asarray(Image.open(tmp_path / f"big-{kind}.png")).astype(int)
                                  for kind in ("tiled", "whole"))
    assert tiled_pixels.shape == whole_pixels.shape == (300, 300, 3)
    assert np.abs(tiled_pixels - whole_pixels).max() <= 1
    assert toolkit_main(["denoise", str(tmp_path / "whole"), str(big), str(tmp_path / "bad.png"),
                         "--tile_size=-1"]) == 2
    assert "--tile_size takes a side in pixels" in capsys.readouterr().err and not (tmp_path / "bad.png").exists()
    # --tile_margin: no context shows the seams (a deeper model's user would raise it); a negative one is refused
    assert toolkit_main(["denoise", str(tmp_path / "whole"), str(big), str(tmp_path / "big-seams.png"), "--sigma=25",
                         "--tile_size=96", "--tile_margin=0"]) == 0
    seams = np.asarray(Image.open(tmp_path / "big-seams.png")).astype(int)
    assert np.abs(seams - whole_pixels).max() > np.abs(tiled_pixels - whole_pixels).max()
    assert toolkit_main(["denoise", str(tmp_path / "whole"), str(big), str(tmp_path / "bad.png"),
                         "--tile_margin=-1"]) == 2
    assert "--tile_margin takes the pixels of context" in capsys.readouterr().err
    assert toolkit_main(["denoise", str(tmp_path / "whole"), str(big), str(tmp_path / "bad.png"), "--sigma=-1"]) == 2
    assert "--sigma takes the noise std on the 0-255 scale, 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()
    # the memory figures of docs/commands.md: each command in its own process, its peak memory read from the system
    script = Path(__file__).resolve().parents[1] / "scripts" / "denoise_memory.py"
    done = run_script([sys.executable, str(script), str(tmp_path / "whole"), "--megapixels", "0.1", "--tile_sizes",
                       "0", "96", "--out", str(tmp_path / "memory.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads((tmp_path / "memory.json").read_text())
    assert [row["tile_size"] for row in measured] == [0, 96] and all(row["peak_gb"] > 0.1 for row in measured)
    assert "| 0.1 | 365x274 | 96 |" in done.stdout and "x |" in done.stdout  # the ratios against the whole pass
    done = run_script([sys.executable, str(script), str(tmp_path / "nothing")])
    assert done.returncode == 2 and "nothing does not exist" in done.stderr
    # the benchmark on a folder of large images: the model sees them in tiles as `denoise` does, labelled; the clean
    # references are held as 8-bit pixels (a quarter of float32's memory) and each noisy image drawn when scored
    large = tmp_path / "large-clean"
    large.mkdir()
    Image.fromarray(np.tile(clean, (2, 2, 1))).save(large / "big.png")
    Image.fromarray(clean).save(large / "small.png")
    assert all(image.dtype == torch.uint8 for image in clean_reference_images(large)[1])
    for tile_size in (96, 0):
        assert toolkit_main(["benchmark-denoiser", str(tmp_path / "whole"), "--clean", str(large), "--sigmas", "25",
                             "--tile_size", str(tile_size), "--out", str(tmp_path / f"large-{tile_size}.json")]) == 0
    tiled, whole_images = (json.loads((tmp_path / f"large-{size}.json").read_text()) for size in (96, 0))
    assert tiled["tiled_images"] == 1 and "the model saw 1 of the 2 images in tiles of 96 px" in tiled["protocol"]
    assert whole_images["tiled_images"] == 0 and "whole images" in whole_images["protocol"]
    assert tiled["sigmas"]["25.0"]["model"]["psnr"] == pytest.approx(whole_images["sigmas"]["25.0"]["model"]["psnr"],
                                                                      abs=0.01)
    assert tiled["sigmas"]["25.0"]["noisy"] == whole_images["sigmas"]["25.0"]["noisy"]  # the same noisy images
    assert toolkit_main(["benchmark-denoiser", str(tmp_path / "whole"), "--clean", str(large), "--sigmas", "25",
                         "--tile_size", "96", "--tile_margin", "0", "--out", str(tmp_path / "large-seams.json")]) == 0
    seams = json.loads((tmp_path / "large-seams.json").read_text())
    assert seams["tile_margin"] == 0 and tiled["tile_margin"] == 64 and "with 0 px of context" in seams["protocol"]

    # the benchmark on the run's own validation images (where inference options are chosen), with the ensemble
    folder = Path(__import__("os").environ["SCENE_TOOLKIT_CACHE"]) / "synthetic-scenes" / "seg_pred"
    out = tmp_path / "held-out.json"
    assert toolkit_main(["benchmark-denoiser", str(tmp_path / "whole"), "--clean", str(folder), "--sigmas", "25",
                         "--validation_images", "--self_ensemble", "--out", str(out)]) == 0
    scored = json.loads(out.read_text())
    val_images = int(whole["data"].split(" other images")[0].rsplit(" ", 1)[1])  # "... tiles of K other images"
    assert scored["images"] == val_images < len(list(folder.iterdir())) and scored["validation_images"]
    assert scored["self_ensemble"] and "(x8 self-ensemble)" in scored["table"]
    assert scored["sigmas"]["25.0"]["model"]["psnr"] > scored["sigmas"]["25.0"]["noisy"]["psnr"]
    assert scored["mixed_precision"] == "no"  # fp32 unless asked: the protocol of the published figures
    # the noise estimator's figures on the same held-out images (scripts/noise_estimates.py --validation_images_of)
    script = Path(__file__).resolve().parents[1] / "scripts" / "noise_estimates.py"
    done = run_script([sys.executable, str(script), str(folder), "--sigmas", "15", "--validation_images_of",
                       str(tmp_path / "whole"), "--out", str(tmp_path / "estimates.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"noise estimates on {val_images} images" in done.stdout
    assert json.loads((tmp_path / "estimates.json").read_text())["15.0"]["unclipped"]["toolkit"]["error"] < 2
    done = run_script([sys.executable, str(script), str(folder), "--validation_images_of", str(tmp_path / "nothing")])
    assert done.returncode == 2 and "nothing does not exist" in done.stderr and "Traceback" not in done.stderr
    # what tiles change against whole images, per margin of context, on the same held-out images
    # (scripts/tile_seams.py): no context shows the seams; a margin that holds the image whole changes nothing
    script = Path(__file__).resolve().parents[1] / "scripts" / "tile_seams.py"
    done = run_script([sys.executable, str(script), str(tmp_path / "whole"), str(folder), "--validation_images_of",
                       str(tmp_path / "whole"), "--sigmas", "25", "--tile_size", "32", "--margins", "0", "64",
                       "--out", str(tmp_path / "seams.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"tiles of 32 px on {val_images} images" in done.stdout and "| 25 |" in done.stdout
    seams = json.loads((tmp_path / "seams.json").read_text())["25.0"]
    assert seams["0"]["pixels_changed"] > 0 and seams["0"]["tiles"] == 25  # 150 px: 5 x 5 tiles of 32 (30)
    assert seams["64"]["psnr"] == seams["whole"] and seams["64"]["tiles"] == 1  # 150 <= 32 + 2 x 64: one piece
    done = run_script([sys.executable, str(script), str(tmp_path / "whole"), str(folder), "--margins", "-1"])
    assert done.returncode == 2 and "--margins at least 0" in done.stderr
    # what the network changes in brightness and in colour, clean (sigma 0) and noisy, on the same held-out images
    script = Path(__file__).resolve().parents[1] / "scripts" / "colour_changes.py"
    done = run_script([sys.executable, str(script), str(tmp_path / "whole"), str(folder), "--validation_images_of",
                       str(tmp_path / "whole"), "--sigmas", "0", "25", "--out", str(tmp_path / "colour.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"changes on {val_images} images" in done.stdout and "| 0 | ∞ / ∞ |" in done.stdout
    colour = json.loads((tmp_path / "colour.json").read_text())
    assert colour["0.0"]["noisy"] == {"psnr_y": None, "psnr_cbcr": None, "colour_share": None}  # nothing to change
    assert colour["0.0"]["model"]["psnr_y"] > 20 and 0 < colour["0.0"]["model"]["colour_share"] < 1
    noisy, model = colour["25.0"]["noisy"], colour["25.0"]["model"]  # white noise: about two thirds in colour
    assert 0.6 < noisy["colour_share"] < 0.7 and model["psnr_y"] > noisy["psnr_y"]
    done = run_script([sys.executable, str(script), str(tmp_path / "nothing"), str(folder)])
    assert done.returncode == 2 and "nothing does not exist" in done.stderr and "Traceback" not in done.stderr
    # the same held-out images halved, as the run also trained and validated on them
    assert toolkit_main(["benchmark-denoiser", str(tmp_path / "whole"), "--clean", str(folder), "--sigmas", "25",
                         "--validation_images", "--reduce", "2", "--out", str(tmp_path / "halved.json")]) == 0
    halved = json.loads((tmp_path / "halved.json").read_text())
    assert halved["images"] == val_images and halved["reduction"] == 2
    # bf16 inference (about 2x faster where the CPU has it): the same images, nearly the same scores, labelled
    assert toolkit_main(["benchmark-denoiser", str(tmp_path / "whole"), "--clean", str(folder), "--sigmas", "25",
                         "--validation_images", "--self_ensemble", "--mixed_precision=bf16",
                         "--out", str(tmp_path / "bf16.json")]) == 0
    in_bf16 = json.loads((tmp_path / "bf16.json").read_text())
    assert in_bf16["mixed_precision"] == "bf16" and "(x8 self-ensemble, bf16 inference)" in in_bf16["table"]
    assert in_bf16["sigmas"]["25.0"]["model"]["psnr"] == pytest.approx(scored["sigmas"]["25.0"]["model"]["psnr"],
                                                                       abs=0.1)
    assert in_bf16["sigmas"]["25.0"]["model"]["psnr"] != scored["sigmas"]["25.0"]["model"]["psnr"]  # it did run bf16
    assert toolkit_main(["denoise", str(tmp_path / "whole"), str(source), str(tmp_path / "bf16.png"), "--sigma=25",
                         "--mixed_precision=auto"]) == 0
    assert Image.open(tmp_path / "bf16.png").size == Image.open(source).size
    other = tmp_path / "other-folder"  # not the folder the run trained on: its split would mean nothing
    other.mkdir()
    for file in sorted(folder.iterdir())[:6]:
        (other / file.name).write_bytes(file.read_bytes())
    assert toolkit_main(["benchmark-denoiser", str(tmp_path / "whole"), "--clean", str(other), "--validation_images",
                         "--out", str(tmp_path / "x.json")]) == 2
    assert "is not the folder" in capsys.readouterr().err
    assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(folder), "--validation_images",
                         "--out", str(tmp_path / "x.json")]) == 2


def test_noise_level_weights_count_the_levels_above_the_floor_alike(tmp_path):
    sigmas = torch.tensor([0.0, 10.0, 15.0, 60.0, 240.0]) / 255
    assert noise_level_weights(sigmas, 15 / 255).tolist() == pytest.approx([1, 1, 1, 0.5, 0.25])
    with pytest.raises(ValueError, match="floor"):
        noise_level_weights(sigmas, 0.0)

    # in the recipe: the first step's loss (same weights, same patches) is the plain one with every patch
    # under the floor, and smaller with a floor under some of the patches' noise levels
    args = ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4", "--eval_every=0",
            "--checkpoint_every=0", "--num_workers=1", "--grid_images=0", "--max_steps=1", "--log_every=1",
            "--model_kwargs=widths=(8,16,32),blocks=1"]

    def first_loss(name: str, *extra: str) -> float:
        run_in_process("blind_denoiser", [*args, *extra, f"--run_dir={tmp_path / name}"])
        return dict(series(read_metrics(tmp_path / name), "train/loss"))[1]

    plain = first_loss("plain")
    assert first_loss("floor-at-the-top", "--sigma_weight_floor=50") == pytest.approx(plain, rel=1e-6)
    assert first_loss("floor-15", "--sigma_weight_floor=15") < 0.99 * plain
    with pytest.raises(UserError, match="sigma_weight_floor"):
        run_in_process("blind_denoiser", [*args, "--sigma_weight_floor=-1", f"--run_dir={tmp_path / 'bad'}"])


def test_a_time_budget_chooses_the_epochs_once_and_trains_as_those_epochs_would(tmp_path, capsys):
    args = ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4", "--eval_batch_size=8",
            "--eval_every=0", "--checkpoint_every=4", "--num_workers=1", "--grid_images=0",
            "--model_kwargs=widths=(8,16,32),blocks=1", "--channel_orders"]  # channel orders replay on resume too
    # a budget shorter than one epoch trains one; the timing steps leave no trace: the same weights as --epochs=1
    budget = run_in_process("blind_denoiser", [*args, "--train_minutes=0.0001", f"--run_dir={tmp_path / 'budget'}"])
    said = capsys.readouterr().out
    assert "shorter than one epoch" in said
    assert "(median of 20 timed)" in said  # the timing takes no more than 2% of a budget: here, the 20 steps
    chosen = budget["budget"]
    assert chosen["epochs"] == 1 and chosen["steps"] == budget["steps"] and chosen["seconds_per_step"] > 0
    assert json.loads((tmp_path / "budget" / "config.json").read_text())["budget"] == chosen  # W&B's config too
    run_in_process("blind_denoiser", [*args, "--epochs=1", f"--run_dir={tmp_path / 'epochs'}"])
    assert_same_final_weights(tmp_path / "budget", tmp_path / "epochs")

    # stopped and resumed: the choice comes from the checkpoint, nothing is measured again, the run is exact
    split = [*args, "--train_minutes=0.0001", f"--run_dir={tmp_path / 'split'}"]
    run_in_process("blind_denoiser", [*split, "--max_steps=5"])
    capsys.readouterr()
    resumed = run_in_process("blind_denoiser", [*split, "--resume"])
    assert "as planned when the run started (kept on resume)" in capsys.readouterr().out
    assert resumed["budget"] == json.loads((tmp_path / "split" / "config.json").read_text())["budget"]
    assert_same_final_weights(tmp_path / "budget", tmp_path / "split")

    # a longer budget: the whole epochs that fit at the measured time per iteration; 20 tiny steps span far less
    # than the 6 s (2% of 5 minutes) the timing may take, so it times on, up to 100 steps (then 1 step trains)
    capsys.readouterr()
    summary = run_in_process("blind_denoiser", [*args, "--train_minutes=5", "--max_steps=1",
                                                f"--run_dir={tmp_path / 'longer'}"])
    assert "(median of 100 timed)" in capsys.readouterr().out
    chosen = summary["budget"]
    per_epoch = chosen["steps"] // chosen["epochs"]
    fastest, slowest = chosen["seconds_per_step"] - 5e-5, chosen["seconds_per_step"] + 5e-5  # recorded to 0.1 ms
    assert 1 < int(5 * 60 / (slowest * per_epoch)) <= chosen["epochs"] <= int(5 * 60 / (fastest * per_epoch))
    with pytest.raises(UserError, match="train_minutes"):
        run_in_process("blind_denoiser", [*args, "--train_minutes=-1", f"--run_dir={tmp_path / 'bad'}"])


def test_progressive_patches_start_small_switch_on_plan_and_resume_exactly(tmp_path, capsys):
    """--early_patch_size: the first --early_patch_share of the iterations crop smaller patches, the rest
    --patch_size; a time budget times both sizes and plans with their share-weighted time; a run stopped in the
    small-patch phase resumes into the switch bit-exactly."""
    recipe = load_recipe("blind_denoiser")
    plan = parse_config(recipe.Config, ["--patch_size=32", "--early_patch_size=16", "--early_patch_share=0.25"])
    assert recipe.patch_plan(plan) == [(16, 0.25), (32, 0.75)]
    assert [recipe.patch_size_at(i, 8, plan) for i in range(8)] == [16, 16, 32, 32, 32, 32, 32, 32]
    plain = parse_config(recipe.Config, ["--patch_size=32"])
    assert recipe.patch_plan(plain) == [(32, 1.0)] and {recipe.patch_size_at(i, 8, plain) for i in range(8)} == {32}
    tiles = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    clean, noisy, sigmas = recipe.noisy_patches(tiles, 16, plan, step_generator(torch.device("cpu"), 0, 1))
    assert clean.shape == noisy.shape == (4, 3, 16, 16) and sigmas.shape == (4,)

    args = ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--early_patch_size=16", "--batch_size=4",
            "--eval_batch_size=8", "--eval_every=0", "--checkpoint_every=3", "--num_workers=1", "--grid_images=0",
            "--model_kwargs=widths=(8,16,32),blocks=1", "--train_minutes=0.0001"]
    capsys.readouterr()
    whole = run_in_process("blind_denoiser", [*args, f"--run_dir={tmp_path / 'whole'}"])
    said = capsys.readouterr().out
    chosen = whole["budget"]
    switch = round(0.5 * chosen["steps"]) + 1  # the first iteration (counted from 1) of patches of 32
    assert f"[patches] from iteration {switch} of {chosen['steps']}: patches of 32" in said
    assert "patches of 16 for 50% of them" in said and "patches of 32 for 50% of them" in said
    phases = chosen["phase_seconds_per_step"]
    assert set(phases) == {"patches of 16", "patches of 32"}
    assert chosen["seconds_per_step"] == pytest.approx(0.5 * phases["patches of 16"] + 0.5 * phases["patches of 32"],
                                                       abs=2e-4)  # each recorded to 0.1 ms
    run_in_process("blind_denoiser", [*args, f"--run_dir={tmp_path / 'split'}", f"--max_steps={switch - 2}"])
    resumed = run_in_process("blind_denoiser", [*args, f"--run_dir={tmp_path / 'split'}", "--resume"])
    assert resumed["steps"] == whole["steps"]  # a budget under one epoch trains one, timed again or not
    assert resumed["budget"] == json.loads((tmp_path / "split" / "config.json").read_text())["budget"]
    assert_same_final_weights(tmp_path / "whole", tmp_path / "split")
    with pytest.raises(UserError, match="early_patch_size"):
        run_in_process("blind_denoiser", [*args, "--early_patch_size=64", f"--run_dir={tmp_path / 'bad'}"])
    with pytest.raises(UserError, match="early_patch_share"):
        run_in_process("blind_denoiser", [*args, "--early_patch_share=1", f"--run_dir={tmp_path / 'bad'}"])


def test_a_time_budget_is_a_limit_when_the_steps_run_slower_than_they_were_timed(tmp_path, capsys, monkeypatch):
    """A host that slows down after the timing (here: the timing reads 30x too fast, so far too many epochs are
    planned) cannot make a --train_minutes run overrun: once the minutes are spent, after the first epoch,
    training ends, says so, exports the weight average and records where; --resume then trains nothing more."""
    import toolkit.train.loop as loop_module

    measured, pace = loop_module.typical_step_seconds, loop_module.pace_so_far  # the re-plan too reads 30x fast
    monkeypatch.setattr(loop_module, "typical_step_seconds", lambda seconds: measured(seconds) / 30)
    monkeypatch.setattr(loop_module, "pace_so_far", lambda seconds, steps: pace(seconds, steps) / 30)
    args = ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4", "--eval_batch_size=8",
            "--eval_every=0", "--checkpoint_every=0", "--num_workers=1", "--grid_images=0",
            "--model_kwargs=widths=(8,16,32),blocks=1", "--train_minutes=0.05", f"--run_dir={tmp_path / 'run'}"]
    summary = run_in_process("blind_denoiser", args)
    budget = summary["budget"]
    per_epoch = budget["replans"][0]["steps_before"] // budget["epochs"]
    assert budget["epochs"] > 1 and budget["stopped_at"] == summary["steps"]
    assert per_epoch <= summary["steps"] < budget["steps"]  # the first epoch whole, then stopped by the clock
    assert summary["train_seconds"] >= 0.05 * 60
    said = capsys.readouterr().out
    assert f"min of training spent at iteration {summary['steps']} of {budget['steps']}" in said
    assert "of the last re-plan): training ends here" in said
    assert json.loads((tmp_path / "run" / "config.json").read_text())["budget"] == budget
    checkpoint = Path(summary["checkpoint"])
    assert json.loads((checkpoint / "trainer_state.json").read_text())["extra"]["budget"] == budget
    exported = load_file(checkpoint / "model.safetensors")  # the weight average, as after a whole schedule
    average = torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)["model"]
    assert exported.keys() == average.keys() and all(torch.equal(exported[k], average[k]) for k in exported)

    resumed = run_in_process("blind_denoiser", [*args, "--resume"])
    assert resumed["steps"] == summary["steps"] and resumed["budget"] == budget
    assert "kept on resume" in capsys.readouterr().out


def test_a_time_budget_re_plans_from_the_pace_of_its_steps(tmp_path, capsys, monkeypatch):
    """Ten seconds of timing can read a host's pace several percent off, and a shared host drifts. Here the
    timing reads 3x too slow, so the first plan holds about a third of what fits; once a tenth of it is trained
    the loop plans again, to the iteration, from the pace of the steps since the first log step, then again
    each time a tenth of the minutes is spent since the re-plan before, from the pace of those steps, until the
    last tenth (each step's seconds are in metrics.jsonl, so the arithmetic is checked exactly, whatever this
    host's speed), and trains the last plan."""
    import toolkit.train.loop as loop_module

    measured = loop_module.typical_step_seconds
    monkeypatch.setattr(loop_module, "typical_step_seconds", lambda seconds: measured(seconds) * 3)
    args = ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4", "--eval_batch_size=8",
            "--eval_every=0", "--checkpoint_every=0", "--num_workers=1", "--grid_images=0", "--log_every=1",
            "--model_kwargs=widths=(8,16,32),blocks=1", "--train_minutes=0.1", f"--run_dir={tmp_path / 'run'}"]
    summary = run_in_process("blind_denoiser", args)
    budget, said = summary["budget"], capsys.readouterr().out
    first_plan, replans = budget["epochs"] * 63, budget["replans"]  # 63 iterations per epoch of 4 synthetic tiles
    # the first at a tenth of the iterations, or of the minutes if sooner (the first step's start-up counts in them)
    assert replans[0]["steps_before"] == first_plan and 2 <= replans[0]["at_step"] <= budget["replan_at"]
    assert budget["replan_at"] == round(first_plan / 10) and 1 <= len(replans) <= 9
    seconds = dict(series(read_metrics(tmp_path / "run"), "seconds"))  # each step's training seconds
    plans = [replan["steps_before"] for replan in replans[1:]] + [budget["steps"]]  # what each re-plan chose
    since, previous_spent = 1, seconds[1]  # the first log step
    for replan, plan in zip(replans, plans):
        at = replan["at_step"]
        pace = sum(seconds[step] for step in range(since + 1, at + 1)) / (at - since)
        spent = sum(seconds[step] for step in range(1, at + 1))
        assert replan["seconds_per_step"] == pytest.approx(pace, abs=5e-5)
        assert replan["train_seconds"] == pytest.approx(spent, abs=1e-3)
        assert replan["share"] == int(spent / 0.6)  # the tenth of the minutes it was made in
        assert spent < 5.4 + 1e-3  # none in the last tenth
        assert at == budget["replan_at"] or spent - previous_spent > 0.6 - 2e-3  # or a whole tenth since
        previous_spent = spent
        assert plan == max(63, at, at + int((0.1 * 60 - spent) / pace))  # what the minutes hold, to the iteration
        assert f"[budget] re-planned at iteration {at} (" in said
        since = at
    assert f"s per iteration over the {replans[0]['at_step'] - 1} since the first log step (timed before " \
        f"training: {budget['seconds_per_step']:.4f}), so {plans[0]} iterations" in said
    assert summary["steps"] == budget.get("stopped_at", budget["steps"])  # the last plan trained (or the limit)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["budget"] == budget  # W&B's config too


def test_a_re_planned_budget_follows_the_new_total_and_resumes_exactly(tmp_path, capsys, monkeypatch):
    """The re-plan's machinery, made deterministic: the first plan is set to 2 epochs (126 iterations) and the
    re-plan to 73 (an epoch and 10 iterations: the last epoch ends part-way). The one-cycle schedule follows the
    new total from the re-plan on, with no jump; a run stopped before the re-plan, or after it, resumes
    bit-exactly."""
    import toolkit.train.loop as loop_module
    from toolkit.train.schedule import one_cycle_lr, stretched_position

    assert loop_module.pace_so_far(30.0, 100) == 0.3
    # 100 of them in 30 s, the rest of 60 s at 0.25 s each: 220; rounded down to whole accumulations of 4: 220;
    # of 3: 219; never under the floor given
    assert loop_module.iterations_within(1.0, 30.0, 100, 0.25, at_least=63, multiple_of=4) == 220
    assert loop_module.iterations_within(1.0, 30.0, 100, 0.25, at_least=63, multiple_of=3) == 219
    assert loop_module.iterations_within(1.0, 70.0, 100, 0.25, at_least=150) == 150  # over the minutes already
    # when a re-plan is due, in a 1-minute budget (tenths of 6 s) planned at 126 iterations, the first sooner at
    # 13: a tenth of the minutes after the first log step (here at 0.5 s: the loader's start-up), or a tenth of
    # the plan; then a whole tenth after the re-plan before; none in the last tenth
    due, planned = loop_module.TrainingLoop._replan_due, {"minutes": 1.0, "replan_every": 0.1, "replan_at": 13}
    first = planned | {"replans": []}
    assert not due(12, 6.4, first, 0.5) and due(10, 6.5, first, 0.5) and due(13, 1.0, first, 0.5)
    after_early = planned | {"replans": [{"at_step": 13, "train_seconds": 5.2}]}  # an early first, just before 6 s
    assert not due(20, 6.1, after_early, 5.2) and not due(60, 11.1, after_early, 5.2)
    assert due(61, 11.3, after_early, 5.2)
    assert not due(335, 52.9, after_early, 47.0) and due(340, 53.5, after_early, 47.0)
    assert not due(341, 54.0, after_early, 47.0)  # 54 s: the last tenth has begun
    assert not due(500, 50.0, {"minutes": 1.0, "replans": []}, 0.0)  # a budget chosen with no re-plans

    # 2 epochs planned; the re-plans at every tenth of 5 minutes come after these runs' few seconds: one re-plan
    monkeypatch.setattr(loop_module, "typical_step_seconds", lambda seconds: 5 * 60 / (2.5 * 63))
    monkeypatch.setattr(loop_module, "iterations_within", lambda *args, at_least, multiple_of: 63 + 10)
    args = ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4", "--eval_batch_size=8",
            "--eval_every=0", "--checkpoint_every=5", "--num_workers=1", "--grid_images=0", "--lr=1e-3",
            "--model_kwargs=widths=(8,16,32),blocks=1", "--train_minutes=5"]
    whole = run_in_process("blind_denoiser", [*args, f"--run_dir={tmp_path / 'whole'}"])
    budget = whole["budget"]
    assert budget["epochs"] == 2 and budget["replan_at"] == 13  # a tenth of 126, at the next log step: 15
    assert [(replan["at_step"], replan["steps_before"], replan["share"]) for replan in budget["replans"]] == \
        [(15, 126, 0)]
    assert budget["steps"] == whole["steps"] == 73 and "stopped_at" not in budget
    lr = dict(series(read_metrics(tmp_path / "whole"), "lr"))
    assert lr[15] == pytest.approx(one_cycle_lr(14, 126, 1e-3, 0.05))  # set before the re-plan at its end
    # then the 111 iterations left of the first plan's schedule are spread over the 58 the re-plan left
    assert lr[20] == pytest.approx(one_cycle_lr(15 + 111 * 4 / 58, 126, 1e-3, 0.05))  # on from where it stood
    assert lr[73] == pytest.approx(one_cycle_lr(126 - 111 / 58, 126, 1e-3, 0.05))  # it ends where the plan does
    assert lr[73] < 1.05 * 0.02 * 1e-3  # annealed: within 5% of its final 2% of the peak
    assert stretched_position(19, 126, [(15, 73)]) == 15 + 111 * 4 / 58

    def plan_only(chosen: dict) -> dict:  # less the pace and seconds each run measured
        return chosen | {"replans": [{k: v for k, v in replan.items() if k not in ("seconds_per_step", "train_seconds")}
                                     for replan in chosen["replans"]]}

    # stopped before the re-plan (the resumed run re-plans: at its first log step, 15, or at a later one, 15 again
    # after 10, each reading all the steps since training began, as the uninterrupted run read all but its first
    # 5), and after it (kept)
    for stop in (5, 10, 20):
        split = [*args, f"--run_dir={tmp_path / f'split{stop}'}"]
        run_in_process("blind_denoiser", [*split, f"--max_steps={stop}"])
        capsys.readouterr()
        resumed = run_in_process("blind_denoiser", [*split, "--resume"])
        said = capsys.readouterr().out
        assert resumed["steps"] == 73 and plan_only(resumed["budget"]) == plan_only(budget)
        assert ("and re-planned at iteration 15 (kept on resume)" in said) == (stop == 20)
        assert ("s per iteration over the 15 since the start of training" in said) == (stop < 15)  # all its steps
        assert_same_final_weights(tmp_path / "whole", tmp_path / f"split{stop}")


@pytest.mark.skipif(not __import__("toolkit.train.denoise", fromlist=["x"]).bm3d_available(),
                    reason="the optional bm3d package is not installed (pip install bm3d; non-commercial licence)")
def test_bm3d_is_scored_beside_the_model_on_any_folder(tiny_intel, tmp_path):
    out = tmp_path / "bench.json"
    folder = tmp_path / "five"
    folder.mkdir()
    for image in sorted((tiny_intel / "seg_pred").iterdir())[:5]:
        (folder / image.name).write_bytes(image.read_bytes())
    assert toolkit_main(["benchmark-denoiser", "none", "--clean", str(folder), "--sigmas", "25",
                         "--baselines", "bm3d", "nlm", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["sigmas"]["25.0"]
    assert row["bm3d"]["psnr"] > row["noisy"]["psnr"] + 3 and len(row["bm3d"]["per_image_psnr"]) == 5
    # CBM3D got the images a few at a time (two per core: here more than one chunk on two cores), each its own
    # noisy image: the same scores as each image denoised alone
    from toolkit.train.denoise import bm3d_denoiser

    _, cleans = clean_reference_images(folder)
    noise = NoiseSpec(25 / 255, 25 / 255, clip=False, seed=1234)
    with bm3d_denoiser(workers=1) as denoise_each:  # in this process
        for image_id, pixels in enumerate(cleans):
            clean = to_unit_range(pixels)
            noisy, sigmas = seeded_noisy(clean, [image_id], noise)
            alone = image_quality(denoise_each([noisy[0]], [float(sigmas[0])])[0][None], clean)["psnr"]
            assert float(alone) == pytest.approx(row["bm3d"]["per_image_psnr"][image_id], abs=1e-3)


@pytest.mark.skipif(not __import__("toolkit.train.denoise", fromlist=["x"]).bm3d_available(),
                    reason="the optional bm3d package is not installed (pip install bm3d; non-commercial licence)")
def test_bm3d_denoises_each_image_with_its_own_sigma_on_workers_started_once():
    from toolkit.train.denoise import bm3d_denoiser

    clean = torch.linspace(0, 1, 32)[None, None, :, None].expand(2, 3, 32, 32).contiguous()
    noise = NoiseSpec(15 / 255, 50 / 255, clip=False, seed=3)
    noisy, sigmas = seeded_noisy(clean, [0, 1], noise)
    with bm3d_denoiser(workers=2) as denoise_each:
        pool = multiprocessing.active_children()
        both = denoise_each(list(noisy), sigmas.tolist())
        again = denoise_each([noisy[1]], [float(sigmas[1])])
        assert len(pool) == 2 and multiprocessing.active_children() == pool  # the same two workers, not new ones
    assert not multiprocessing.active_children()  # and gone after the block
    with bm3d_denoiser(workers=1) as denoise_each:
        alone = denoise_each([noisy[1]], [float(sigmas[1])])
    # (in either worker or in this process: equal up to the FFT library's rounding)
    assert torch.allclose(both[1], alone[0], atol=1e-4) and torch.allclose(both[1], again[0], atol=1e-4)
    assert float(sigmas[0]) != float(sigmas[1])  # a sigma per image, each given to its own image
    for output, image in zip(both, noisy):
        assert image_quality(output[None], clean[:1])["psnr"] > image_quality(image[None], clean[:1])["psnr"] + 3


def test_a_blind_denoiser_joins_the_latent_study_as_is_and_fine_tuned(tiny_intel, tmp_path):
    blind = tmp_path / "blind"
    kwargs = "--model_kwargs=widths=(8,16,32),blocks=1"
    run_in_process("blind_denoiser", ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4",
                                      "--eval_batch_size=8", "--epochs=1", "--max_steps=3", "--eval_every=0",
                                      "--num_workers=1", "--grid_images=0", kwargs, f"--run_dir={blind}"])
    args = [f"--data={tiny_intel}", f"--run_dir={tmp_path / 'study'}", "--models=AE38,resunet", "--image_size=48",
            "--num_workers=1", "--max_steps=2", "--grid_images=2", "--nlm=false", f"--pretrained={blind}",
            "--ae_args=--batch_size=8 --grid_images=0", "--other_args=--batch_size=8 --crop=24 --grid_images=0",
            f"--model_args=resunet: --init_from={blind} --conditioned {kwargs} --lr=2e-4"]
    result = run_in_process("latent_study", args)
    assert {"AE38", "resunet"} <= set(result["models"])
    assert list(result["pretrained"]) == ["resunet (pretrained: blind)"]  # used as is, on the same noisy images
    assert np.isfinite(result["pretrained"]["resunet (pretrained: blind)"]["psnr"])
    config = json.loads((tmp_path / "study" / "resunet" / "seed-0" / "config.json").read_text())
    assert config["init_from"] == str(blind) and config["conditioned"] is True
    table = (tmp_path / "study" / "latent_study.md").read_text()
    assert "| resunet (pretrained: blind) |" in table and "| resunet |" in table
    # served blind on a folder: the noise level estimated per image, not told
    folder, told, estimated = tmp_path / "two", tmp_path / "told.json", tmp_path / "estimated.json"
    folder.mkdir()
    for image in sorted((tiny_intel / "seg_pred").iterdir())[:2]:
        (folder / image.name).write_bytes(image.read_bytes())
    for out, extra in ((told, []), (estimated, ["--blind"])):
        assert toolkit_main(["benchmark-denoiser", str(blind), "--clean", str(folder), "--sigmas", "25",
                             "--baselines", "nlm", "--out", str(out), *extra]) == 0
    told, estimated = json.loads(told.read_text()), json.loads(estimated.read_text())
    assert estimated["blind"] is True and told["blind"] is False
    for method in ("model", "nlm"):  # the baselines are told what the model is: the estimate, on the same images
        assert estimated["sigmas"]["25.0"][method]["psnr"] != told["sigmas"]["25.0"][method]["psnr"]
        assert "estimated_sigma_255" not in told["sigmas"]["25.0"][method]
    assert estimated["sigmas"]["25.0"]["noisy"] == told["sigmas"]["25.0"]["noisy"]
    levels = estimated["sigmas"]["25.0"]["model"]["estimated_sigma_255"]  # one per image, near the true 25
    assert len(levels) == 2 and all(15 < level < 35 for level in levels)
    assert estimated["sigmas"]["25.0"]["nlm"]["estimated_sigma_255"] == levels
    assert "blind: each method told the sigma estimated" in estimated["protocol"] and "blind" not in told["protocol"]
    assert "| **non-local means (blind: sigma estimated)** |" in estimated["table"]
    assert "| **non-local means** |" in told["table"] and "| **noisy input** |" in estimated["table"]
    from toolkit.inference import estimate_noise_sigma
    from toolkit.train.denoise import nlm_denoise

    pixels = clean_reference_images(folder)[1][1]  # the second image: non-local means told its estimate by hand
    noisy, _ = seeded_noisy(to_unit_range(pixels), [1], NoiseSpec(25 / 255, 25 / 255, clip=False, seed=1234))
    assert estimate_noise_sigma(noisy[0]) * 255 == pytest.approx(levels[1])
    by_hand = image_quality(nlm_denoise(noisy, torch.tensor([levels[1] / 255])), to_unit_range(pixels))["psnr"]
    assert float(by_hand) == pytest.approx(estimated["sigmas"]["25.0"]["nlm"]["per_image_psnr"][1], abs=1e-4)
    # a model not told the noise level (the study's AE38) is benchmarked blind beside non-local means: only the
    # baseline is told the estimates, and the model's JSON entry does not claim them
    ae38 = next((tmp_path / "study" / "AE38").rglob("config.json")).parent
    assert toolkit_main(["benchmark-denoiser", str(ae38), "--clean", str(folder), "--sigmas", "25", "--blind",
                         "--nlm", "--out", str(tmp_path / "ae38.json")]) == 0
    ae38_row = json.loads((tmp_path / "ae38.json").read_text())["sigmas"]["25.0"]
    assert "estimated_sigma_255" not in ae38_row["model"] and ae38_row["nlm"]["estimated_sigma_255"] == levels


def test_a_run_launched_with_torch_compile_records_it_and_keeps_plain_checkpoints(tmp_path, monkeypatch):
    """`accelerate launch --dynamo_backend=...` (here the eager backend: dynamo's tracing without inductor's
    minutes of compiling) compiles the model in Accelerate's prepare: the run says so in its config, and its
    checkpoints hold the plain model's weights, the same as an uncompiled run's."""
    args = ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4", "--eval_batch_size=8",
            "--epochs=1", "--max_steps=4", "--eval_every=0", "--checkpoint_every=0", "--num_workers=1",
            "--grid_images=0", "--model_kwargs=widths=(8,16),blocks=1", "--wandb_mode=disabled"]
    run_in_process("blind_denoiser", [*args, f"--run_dir={tmp_path / 'plain'}"])
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "EAGER")  # what `accelerate launch --dynamo_backend` sets
    run_in_process("blind_denoiser", [*args, f"--run_dir={tmp_path / 'compiled'}"])
    configs = {name: json.loads((tmp_path / name / "config.json").read_text()) for name in ("plain", "compiled")}
    assert configs["plain"]["torch_compile"] == "no" and configs["compiled"]["torch_compile"] == "eager"
    assert_same_final_weights(tmp_path / "plain", tmp_path / "compiled")
