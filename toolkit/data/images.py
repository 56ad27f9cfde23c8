"""Decoding one image file into RGB pixels, converting what can be converted.

Every entry point (preprocessing, the data doctor, predict, denoise) reads images through
`load_rgb`, so a file is judged the same way everywhere.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from toolkit.errors import DataError

# Pillow refuses images over ~179 Mpixel as decompression bombs; we keep that guard.
_FORMAT_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg"},
    "PNG": {".png"},
    "BMP": {".bmp"},
    "GIF": {".gif"},
    "TIFF": {".tif", ".tiff"},
    "WEBP": {".webp"},
    "PPM": {".ppm", ".pgm", ".pbm", ".pnm"},
}


class UnreadableImage(DataError):
    """A file that cannot be decoded as an image (truncated, empty, not an image, too large)."""


def extension_matches_format(path: Path, image_format: str | None) -> bool:
    """False when e.g. a PNG is named .jpg (decodable, but a sign of a messy collection)."""
    expected = _FORMAT_EXTENSIONS.get(image_format or "")
    return expected is None or Path(path).suffix.lower() in expected


def open_image(path: Path | str) -> Image.Image:
    """Open and fully decode an image, or raise UnreadableImage saying why."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise UnreadableImage(f"{path}: cannot read ({error.strerror or error})") from None
    if size == 0:
        raise UnreadableImage(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()  # decode now: truncation only shows up here
    except UnidentifiedImageError:
        raise UnreadableImage(f"{path}: not an image file (unknown format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableImage(f"{path}: too large to decode safely (decompression-bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImage(f"{path}: cannot decode ({error})") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any colour mode to RGB: alpha is composited onto white, 16-bit is scaled to 8-bit."""
    image = ImageOps.exif_transpose(image)  # phone photos store rotation in EXIF
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if pixels.max() > 255 else 1.0
        return Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def pixel_hash(pixels: np.ndarray) -> str:
    """A hash of decoded (H, W, 3) pixels: equal for copies of an image whatever their file bytes."""
    return hashlib.blake2b(pixels.tobytes() + str(pixels.shape).encode(), digest_size=16).hexdigest()


def load_rgb(path: Path | str, size: int | None = None) -> np.ndarray:
    """Decode a file to an (H, W, 3) uint8 array; with `size`, resized (squashed) to size x size.

    The resize is PIL's antialiased bilinear, the same as torchvision's Resize((size, size))
    on PIL images, so stored pixels match the study's pipeline.
    """
    return rgb_pixels(open_image(path), size)


def rgb_pixels(image: Image.Image, size: int | None = None) -> np.ndarray:
    """An opened image as (H, W, 3) uint8 RGB pixels, optionally squashed to size x size."""
    image = to_rgb(image)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.array(image, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)
