"""Loading a trained model from a checkpoint (or a run directory) on its own, for inference.

A checkpoint written by the recipes is self-contained: model.safetensors holds the weights and
trainer_state.json the constructor call, the class list and the preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from toolkit.errors import CheckpointError
from toolkit.models.build import build_model
from toolkit.train.checkpoint import latest_checkpoint, read_trainer_state


def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint folder, or the newest checkpoint of a run directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: pass a run directory (runs/<name>) or one of its "
                              "checkpoints (runs/<name>/checkpoints/step-N)")
    if (path / "trainer_state.json").is_file():
        return path
    newest = latest_checkpoint(path)
    if newest is None:
        raise CheckpointError(f"{path} holds no complete checkpoint (expected {path}/checkpoints/step-N/)")
    return newest


def load_trained_model(path: Path | str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on `device`, trainer state) from a checkpoint or run directory."""
    checkpoint = resolve_checkpoint(path)
    state = read_trainer_state(checkpoint)
    if "model_spec" not in state:
        raise CheckpointError(f"{checkpoint} does not record which model it holds (no model_spec)")
    model = build_model(state["model_spec"])
    weights_file = checkpoint / "model.safetensors"
    if not weights_file.is_file():
        raise CheckpointError(f"{checkpoint} has no model.safetensors: the checkpoint is incomplete")
    weights = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in load_file(weights_file).items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"the weights in {checkpoint} do not fit {state['model_spec']['name']}: "
                              f"{str(error).splitlines()[0]}") from None
    return model.to(device).eval(), state


DENOISER_NAMES = ("ConvAutoencoder", "UNetDenoiser", "DnCNN")


@torch.no_grad()
def denoise_files(checkpoint: Path | str, source: Path | str, destination: Path | str, sigma_255: float | None = None,
                  log=print) -> dict:
    """Denoise one image or every image below a folder with a trained denoiser, writing PNG images of
    the same size (a folder mirrors the source's layout). Unreadable files are reported and skipped."""
    from PIL import Image

    from toolkit.data.folders import list_image_files
    from toolkit.data.images import UnreadableImage, load_rgb
    from toolkit.errors import UserError
    from toolkit.train.denoise import denoise, to_hwc_uint8

    model, state = load_trained_model(checkpoint)
    if state["model_spec"]["name"] not in DENOISER_NAMES:
        raise UserError(f"{checkpoint} holds a {state['model_spec']['name']}, not a denoiser; "
                        "classify images with `toolkit predict` instead")
    conditioned = state.get("conditioned", False)
    if conditioned and sigma_255 is None:
        raise UserError("this denoiser is told the noise level: pass --sigma=S (noise std on the 0-255 scale)")
    source, destination = Path(source), Path(destination)
    if source.is_dir():
        pairs = [(file, destination / file.relative_to(source).with_suffix(".png"))
                 for file in list_image_files(source)]
        if not pairs:
            raise UserError(f"{source} holds no images")
    elif source.is_file():
        target = destination / (source.stem + ".png") if destination.is_dir() else destination
        pairs = [(source, target if target.suffix else target.with_suffix(".png"))]
    else:
        raise UserError(f"{source} does not exist")
    written, skipped = 0, []
    for file, target in pairs:
        try:
            clean = torch.from_numpy(load_rgb(file)).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
        except UnreadableImage as error:
            skipped.append(str(error))
            log(f"[denoise] skipped {error}")
            continue
        sigmas = torch.full((1,), (sigma_255 or 0.0) / 255)
        output = denoise(model, clean, sigmas, conditioned)[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_hwc_uint8(output)).save(target)
        written += 1
    log(f"[denoise] wrote {written} image(s) to {destination}" + (f"; skipped {len(skipped)}" if skipped else ""))
    return {"written": written, "skipped": skipped}
