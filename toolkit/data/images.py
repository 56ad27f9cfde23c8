"""Decoding one image file into RGB pixels, converting what can be converted.

Every entry point (preprocessing, the data doctor, predict, the denoiser benchmark) reads images through
`load_rgb`, and `toolkit denoise` through `load_for_restoration` (which keeps grey, 16 bits and alpha to write
them back: 16-bit colour, which Pillow decodes at 8 bits, through OpenCV); both open files with `open_image`, so a
file is judged the same way everywhere.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from toolkit.errors import DataError, UserError

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


@dataclass(frozen=True)
class StoredAs:
    """How an image file stored its pixels, so that a restored image is written back the same way.

    mode: the file's own colour mode (PIL's name); grey: one channel; bits: 8 or 16 per channel; alpha: the
    transparency channel as stored ((H, W) uint8, uint16 in a 16-bit colour file), or None; converted: the mode
    cannot be written back (a palette, CMYK, YCbCr, ...), so the result is RGB."""
    mode: str
    grey: bool = False
    bits: int = 8
    alpha: np.ndarray | None = None
    converted: bool = False


_SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I")


# EXIF orientation (tag 274) -> what makes the stored pixels upright, as ImageOps.exif_transpose does, on (H, W, C)
_UPRIGHT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) pixels turned and mirrored as an EXIF orientation asks (1 or unknown: as they are)."""
    return np.ascontiguousarray(_UPRIGHT.get(orientation, lambda a: a)(pixels))


def stores_sixteen_bit_colour(path: Path | str) -> bool:
    """The file stores 16 bits per colour channel (a PNG or TIFF in RGB or RGBA), which Pillow decodes at 8."""
    try:
        with Image.open(path) as header:  # the header only: how the pixels are stored, before any decoding
            mode, rawmode = header.mode, header.tile[0][3] if header.tile else ""
    except (OSError, SyntaxError, ValueError):
        return False
    rawmode = rawmode[0] if isinstance(rawmode, tuple) and rawmode else rawmode
    return mode in ("RGB", "RGBA") and isinstance(rawmode, str) and ";16" in rawmode


def read_sixteen_bit_colour(path: Path | str) -> np.ndarray:
    """A 16-bit colour file's pixels as stored, (H, W, 3) or with alpha (H, W, 4) uint16, RGB(A), read with
    OpenCV (Pillow has no 16-bit colour mode). Raises UnreadableImage."""
    import cv2

    pixels = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise UnreadableImage(f"{path}: cannot decode its 16-bit colour")
    return pixels[..., [2, 1, 0, 3][:pixels.shape[2]]]  # OpenCV's BGR(A) as RGB(A)


def load_for_restoration(path: Path | str) -> tuple[np.ndarray, StoredAs]:
    """An image file's pixels as (H, W, 3) float32 in [0, 1], for a model that restores them, and how the file
    stored them (save_restored writes the result back alike). Unlike load_rgb, nothing is lost on the way in:
    grey is its one channel repeated three times; 16-bit grey and colour are read at 16 bits (32-bit integer
    grey, `I`, too when its values pass 255); alpha is set aside, not composited, and the colour under it
    restored as stored. Other modes (a palette without transparency, CMYK, YCbCr, ...) are converted to RGB.
    Raises UnreadableImage."""
    decoded = open_image(path)  # judged as everywhere: unreadable files are said so
    if decoded.mode in ("RGB", "RGBA") and stores_sixteen_bit_colour(path):
        orientation = decoded.getexif().get(0x0112, 1)
        pixels = upright(read_sixteen_bit_colour(path), orientation)
        alpha = pixels[..., 3].copy() if pixels.shape[2] == 4 else None
        return (pixels[..., :3] / 65535).astype(np.float32), StoredAs(decoded.mode, bits=16, alpha=alpha)
    image = ImageOps.exif_transpose(decoded)  # upright, as every viewer shows it
    mode = image.mode
    if mode in _SIXTEEN_BIT_GREY:
        pixels = np.asarray(image, dtype=np.float64)
        bits = 16 if mode != "I" or pixels.max() > 255 else 8
        grey = np.clip(pixels / (2**bits - 1), 0, 1)
        return np.repeat(grey[..., None], 3, axis=2).astype(np.float32), StoredAs(mode, grey=True, bits=bits)
    if mode in ("1", "L", "LA", "La"):
        grey_alpha = np.asarray(image.convert("LA"))
        alpha = grey_alpha[..., 1].copy() if mode in ("LA", "La") else None
        grey = grey_alpha[..., 0].astype(np.float32) / 255
        return np.repeat(grey[..., None], 3, axis=2), StoredAs(mode, grey=True, alpha=alpha)
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"))
        return rgba[..., :3].astype(np.float32) / 255, StoredAs(mode, alpha=rgba[..., 3].copy())
    return np.asarray(image.convert("RGB")).astype(np.float32) / 255, StoredAs(mode, converted=mode != "RGB")


def save_restored(pixels: np.ndarray, stored: StoredAs, path: Path | str) -> None:
    """Write (H, W, 3) float pixels in [0, 1] as the file `stored` describes stored its own: grey as one channel
    (the mean of the three), 16-bit grey and colour at 16 bits, the alpha channel as it was; RGB otherwise.
    Raises UserError when the file's format cannot hold that (alpha or 16 bits in a JPEG): PNG holds every one."""
    pixels = np.clip(np.asarray(pixels, dtype=np.float32), 0, 1)  # float32 is exact to 16 bits' levels
    if stored.bits == 16 and not stored.grey:
        write_sixteen_bit_colour((pixels * 65535 + 0.5).astype(np.uint16), stored.alpha, path)
        return
    if stored.grey:
        grey = pixels.mean(axis=2)
        if stored.bits == 16:
            image = Image.fromarray((grey * 65535 + 0.5).astype(np.uint16))  # mode I;16
        else:
            image = Image.fromarray((grey * 255 + 0.5).astype(np.uint8), mode="L")
        if stored.alpha is not None:
            image = Image.merge("LA", (image, Image.fromarray(stored.alpha, mode="L")))
    else:
        image = Image.fromarray((pixels * 255 + 0.5).astype(np.uint8), mode="RGB")
        if stored.alpha is not None:
            image.putalpha(Image.fromarray(stored.alpha, mode="L"))
    try:
        image.save(path)
    except OSError as error:
        if error.errno is not None:  # the file system's refusal (permissions, a full disk), not the format's
            raise UserError(f"cannot write {path}: {error.strerror}") from None
        Path(path).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {error} (a {image.mode} image). Name it .png, which holds grey, "
                        f"16-bit and transparent images alike") from None
    except (KeyError, ValueError) as error:  # a name whose format PIL does not know
        raise UserError(f"cannot write {path}: {error}. Name it .png, which holds grey, 16-bit and transparent "
                        "images alike") from None


def write_sixteen_bit_colour(rgb: np.ndarray, alpha: np.ndarray | None, path: Path | str) -> None:
    """Write (H, W, 3) uint16 RGB, with an (H, W) uint16 alpha channel if given, as a 16-bit PNG or TIFF (OpenCV:
    Pillow has no 16-bit colour mode). Raises UserError for another format or a refusal to write."""
    import cv2

    path = Path(path)
    if path.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise UserError(f"cannot write {path}: a 16-bit colour image needs a format that holds 16 bits per channel. "
                        "Name it .png, which holds grey, 16-bit and transparent images alike")
    channels = [rgb[..., 2], rgb[..., 1], rgb[..., 0]] + ([alpha] if alpha is not None else [])  # OpenCV: BGR(A)
    encoded, data = cv2.imencode(path.suffix.lower(), np.dstack(channels))
    if not encoded:
        raise UserError(f"cannot write {path}: OpenCV could not encode it as {path.suffix}")
    try:
        path.write_bytes(data.tobytes())
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None


def reduced_size(length: int, reduction: int) -> int:
    """A side of `length` pixels once reduce_image has made it `reduction` times smaller (a partial block counts)."""
    return -(-length // reduction)


def box_reduction(box: Sequence[int]) -> int:
    """The reduction of a tile's box: (top, left) is cut from the image as it is, (top, left, reduction) from the
    image reduce_image made that many times smaller."""
    return box[2] if len(box) == 3 else 1


def reduce_image(image: Image.Image, reduction: int) -> Image.Image:
    """An image made `reduction` times smaller each way by averaging each reduction x reduction block of its RGB
    pixels (a box filter: PIL's Image.reduce; a partial block at the right or bottom edge averages what it has)."""
    return to_rgb(image).reduce(reduction) if reduction > 1 else image


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
