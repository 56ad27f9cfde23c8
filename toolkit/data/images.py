"""Decoding one image file into RGB pixels, converting what can be converted.

Every entry point (preprocessing, the data doctor, predict, the denoiser benchmark) reads images through
`load_rgb`, and `toolkit denoise` through `load_for_restoration` (which keeps grey, 16 bits and alpha to write
them back: 16-bit colour, which Pillow decodes at 8 bits, through OpenCV); both open files with `open_image`, so a
file is judged the same way everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from toolkit.errors import DataError, UserError
from toolkit.runs import written_whole

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


# the colour space a profile's header names (bytes 16-19) for each mode LittleCMS converts from
# (a palette's colours are RGB: to_rgb converts it first)
_PROFILE_SPACE_OF_MODE = {"RGB": b"RGB ", "RGBA": b"RGB ", "P": b"RGB ", "PA": b"RGB ", "CMYK": b"CMYK", "L": b"GRAY",
                          "LA": b"GRAY", "I;16": b"GRAY", "I;16B": b"GRAY", "I;16L": b"GRAY", "I": b"GRAY"}
# the mode whose pixels LittleCMS takes to sRGB for each (grey with alpha and 16-bit grey go as 8-bit grey: in_srgb)
_TRANSFORMED_MODE = {"P": "RGB", "PA": "RGBA", "LA": "L", "I;16": "L", "I;16B": "L", "I;16L": "L", "I": "L"}


@functools.lru_cache(maxsize=1)
def srgb_profile() -> ImageCms.ImageCmsProfile:
    """LittleCMS's own sRGB profile: what pixels read without a profile are taken to be."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.lru_cache(maxsize=16)
def _to_srgb_transform(profile: bytes, mode: str) -> tuple[ImageCms.ImageCmsTransform, str]:
    """The transform from `mode` pixels described by `profile` to sRGB (RGBA keeps its alpha) and the profile's
    description, made once per profile: a collection's photos tend to share a few. Raises PyCMSError (or OSError)
    when LittleCMS cannot use the profile."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    transform = ImageCms.buildTransform(source, srgb_profile(), mode, "RGBA" if mode == "RGBA" else "RGB",
                                        renderingIntent=ImageCms.Intent.PERCEPTUAL)
    return transform, ImageCms.getProfileDescription(source).strip()


def colour_profile(image: Image.Image) -> tuple[str, str]:
    """(description, problem) of an image's embedded colour profile, the one through which its pixels are read as
    sRGB: ("", "") when it has none or sRGB's own (nothing to convert); (its description, "") when its pixels go
    through it (Display P3, Adobe RGB, a CMYK press profile, a grey gamma, ...); ("", why not) when it is there but
    cannot be used (LittleCMS cannot read it, or it describes another colour space than the image's), in which
    case the pixels are read as they are stored, as sRGB."""
    profile = image.info.get("icc_profile")
    if not profile:
        return "", ""
    if profile[36:40] != b"acsp":  # every ICC profile's signature
        return "", "a colour profile that cannot be read, not used"
    expected = _PROFILE_SPACE_OF_MODE.get(image.mode)
    if expected is None:
        return "", f"a colour profile on {image.mode} pixels, not used"
    if profile[16:20] != expected:
        return "", f"a {profile[16:20].decode('latin-1').strip()} colour profile on {image.mode} pixels, not used"
    try:
        description = _to_srgb_transform(profile, _TRANSFORMED_MODE.get(image.mode, image.mode))[1]
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return "", "a colour profile that cannot be read, not used"
    if description.lower().startswith("srgb"):  # "sRGB IEC61966-2.1", "sRGB built-in", "sRGB v4 ICC preference"
        return "", ""
    return description or "unnamed colour profile", ""


def without_palette(image: Image.Image) -> Image.Image:
    """A palette image as the RGB colours it indexes (RGBA when it has transparency), keeping its profile and EXIF
    data; any other image as it is."""
    if image.mode not in ("P", "PA"):
        return image
    return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")


def in_srgb(image: Image.Image) -> Image.Image:
    """The image's pixels as sRGB through its embedded colour profile (RGB, RGBA with its alpha, CMYK or grey, to
    RGB or RGBA), so that a photo from a wide-gamut camera or a press file shows a model the colours a colour-managed
    viewer shows; the image itself when it has no profile to go through (colour_profile). EXIF data is kept."""
    if not colour_profile(image)[0]:
        return image
    image = without_palette(image)
    transform = _to_srgb_transform(image.info["icc_profile"], _TRANSFORMED_MODE.get(image.mode, image.mode))[0]
    if image.mode == "LA":  # the grey through the profile, the alpha as it is
        converted = transform.apply(image.getchannel("L"))
        converted.putalpha(image.getchannel("A"))
    elif image.mode in _SIXTEEN_BIT_GREY:  # LittleCMS in Pillow takes 8-bit grey
        converted = transform.apply(eight_bit_grey(image))
    else:
        converted = transform.apply(image)
    converted.info = {key: value for key, value in image.info.items() if key != "icc_profile"}
    return converted


def eight_bit_grey(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit integer grey image as 8-bit grey (L): 16-bit levels scaled down (rounded down, as the
    images' stored pixel hashes were), values that stay within 0-255 (an 8-bit image stored in a wider mode) kept."""
    pixels = np.asarray(image, dtype=np.float64)
    scale = 255.0 / 65535.0 if pixels.max() > 255 else 1.0
    return Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any colour mode to sRGB's RGB: through the image's colour profile when it carries one (in_srgb),
    alpha composited onto white, 16-bit scaled to 8-bit."""
    image = in_srgb(without_palette(ImageOps.exif_transpose(image)))  # phone photos store rotation in EXIF
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_GREY:
        return eight_bit_grey(image).convert("RGB")
    if image.mode == "F":  # (a plain conversion reads floats in [0, 1] as black)
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scaled = pixels * (255.0 / float_full_scale(pixels))
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):  # (a palette is RGB or RGBA by now: without_palette)
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def integer_full_scale(pixels: np.ndarray) -> float:
    """What white is in a 32-bit integer grey image whose levels leave 16 bits' (a TIFF of counts, say): the
    smallest 2**k - 1 at or above its largest value, k at least 16, so that its levels keep their proportions."""
    top = max(float(pixels.max()), 1.0) if pixels.size else 1.0
    return float(2 ** max(16, int(np.ceil(np.log2(top + 1)))) - 1)


def float_full_scale(pixels: np.ndarray) -> float:
    """What white is in a floating-point image's numbers, which no file format records: 1 when its values stay
    at or below 2 (floats in [0, 1], noise included), 255 when at or below 510 (8-bit levels kept as floats),
    else 65535."""
    top = float(pixels.max()) if pixels.size else 0.0
    return 1.0 if top <= 2.0 else 255.0 if top <= 510.0 else 65535.0


@dataclass(frozen=True)
class StoredAs:
    """How an image file stored its pixels, so that a restored image is written back the same way.

    mode: the file's own colour mode (PIL's name); grey: one channel; bits: 8 or 16 per channel; alpha: the
    transparency channel as stored ((H, W) uint8, uint16 in a 16-bit colour file), or None; converted: the mode
    cannot be written back (a palette, CMYK, YCbCr, ...), so the result is RGB. icc_profile: the file's colour
    profile (what its numbers mean as colours: Display P3, Adobe RGB, ...) when it describes the pixels written
    back, else None; dropped_profile: the colour space of a profile that does not (a CMYK file's that LittleCMS
    cannot use, written as RGB by a plain conversion), else ""; converted_through: the description of the profile
    through which the pixels were converted to sRGB (a CMYK file's), written with an sRGB profile, else "". exif:
    the file's EXIF data (capture time, camera, ...) without its orientation, since the pixels are read upright, or
    None. frames: the images the file holds (an animation's frames, a TIFF's pages); the first is restored.
    full_scale: of a 32-bit grey file (bits 32: floating-point, mode F, or integer levels beyond 16 bits, mode I), the
    value its white has (float_full_scale, integer_full_scale)."""
    mode: str
    grey: bool = False
    bits: int = 8
    full_scale: float = 1.0
    alpha: np.ndarray | None = None
    converted: bool = False
    icc_profile: bytes | None = None
    dropped_profile: str = ""
    converted_through: str = ""
    exif: bytes | None = None
    frames: int = 1


# what a colour profile's header says its pixels are (bytes 16-19, the "data colour space"), against what is written
_PROFILE_SPACE_OF_OUTPUT = {True: b"GRAY", False: b"RGB "}  # grey output or not


def photo_metadata(image: Image.Image, grey: bool) -> dict:
    """What load_for_restoration keeps of a file besides its pixels, as StoredAs fields: its colour profile when
    it describes `grey` or RGB pixels (else the colour space it does describe, as dropped_profile), its EXIF data
    with the orientation taken out, and how many frames it holds."""
    profile = image.info.get("icc_profile") or None
    space = profile[16:20] if profile else b""
    kept = profile if space == _PROFILE_SPACE_OF_OUTPUT[grey] else None
    try:
        exif = image.getexif()
        exif.pop(0x0112, None)  # the pixels are read upright: an orientation kept would turn them again
        exif_bytes = exif.tobytes() if len(exif) else None
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error):  # EXIF Pillow cannot parse or write
        exif_bytes = None  # the pixels matter, not the capture notes
    return {"icc_profile": kept, "dropped_profile": space.decode("latin-1").strip() if profile and not kept else "",
            "exif": exif_bytes, "frames": getattr(image, "n_frames", 1)}


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
    """An image file's pixels as (H, W, 3) float32 in [0, 1], for a model that restores them, and how the file stored
    them (save_restored writes the result back alike). Unlike load_rgb, nothing is lost on the way in: grey is its one
    channel repeated three times; 16-bit grey and colour are read at 16 bits (32-bit integer grey, `I`, too when its
    values pass 255; when they pass 16 bits' levels, or 0, divided by its own white, integer_full_scale, values below 0
    kept); 32-bit floating-point grey (`F`, TIFF) as floats, divided by its white (float_full_scale), values
    below 0 or above white kept; alpha is set aside, not composited, and the colour under it restored as stored; the
    colour profile and EXIF data are kept for the output (photo_metadata), the pixels left in the colours it describes.
    Other modes (a palette without transparency, CMYK, YCbCr, ...) are converted to RGB: CMYK through its colour profile
    to sRGB when it has one LittleCMS can use (the output then carries sRGB's), else plainly. Of a file holding several
    frames, the first. Raises UnreadableImage."""
    decoded = open_image(path)  # judged as everywhere: unreadable files are said so
    if decoded.mode in ("RGB", "RGBA") and stores_sixteen_bit_colour(path):
        orientation = decoded.getexif().get(0x0112, 1)
        pixels = upright(read_sixteen_bit_colour(path), orientation)
        alpha = pixels[..., 3].copy() if pixels.shape[2] == 4 else None
        return (pixels[..., :3] / 65535).astype(np.float32), StoredAs(decoded.mode, bits=16, alpha=alpha,
                                                                        **photo_metadata(decoded, grey=False))
    image = ImageOps.exif_transpose(decoded)  # upright, as every viewer shows it
    mode = image.mode
    grey = mode in _SIXTEEN_BIT_GREY or mode in ("1", "L", "LA", "La", "F")
    metadata = photo_metadata(decoded, grey)
    if mode == "F":  # floats as stored, not clipped (the noise of a noisy image may pass 0 and white)
        pixels = np.asarray(image, dtype=np.float32)
        if not np.isfinite(pixels).all():
            raise UnreadableImage(f"{path}: {int((~np.isfinite(pixels)).sum())} of its floating-point pixels are not "
                                  "numbers (NaN or infinite); replace them (with 0, or their neighbours' values)")
        full_scale = float_full_scale(pixels)
        return (np.repeat((pixels / full_scale)[..., None], 3, axis=2),
                StoredAs(mode, grey=True, bits=32, full_scale=full_scale, **metadata))
    if mode in _SIXTEEN_BIT_GREY:
        pixels = np.asarray(image, dtype=np.float64)
        if mode == "I" and pixels.size and (pixels.min() < 0 or pixels.max() > 65535):  # 32-bit integer levels
            full_scale = integer_full_scale(pixels)
            return (np.repeat((pixels / full_scale).astype(np.float32)[..., None], 3, axis=2),
                    StoredAs(mode, grey=True, bits=32, full_scale=full_scale, **metadata))
        bits = 16 if mode != "I" or pixels.max() > 255 else 8
        grey_pixels = np.clip(pixels / (2**bits - 1), 0, 1)
        return (np.repeat(grey_pixels[..., None], 3, axis=2).astype(np.float32),
                StoredAs(mode, grey=True, bits=bits, **metadata))
    if grey:
        grey_alpha = np.asarray(image.convert("LA"))
        alpha = grey_alpha[..., 1].copy() if mode in ("LA", "La") else None
        grey_pixels = grey_alpha[..., 0].astype(np.float32) / 255
        return np.repeat(grey_pixels[..., None], 3, axis=2), StoredAs(mode, grey=True, alpha=alpha, **metadata)
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"))
        return rgba[..., :3].astype(np.float32) / 255, StoredAs(mode, alpha=rgba[..., 3].copy(), **metadata)
    through = colour_profile(image)[0] if mode == "CMYK" else ""
    if through:  # press colours, to sRGB through the file's own profile
        metadata.update(icc_profile=srgb_profile().tobytes(), dropped_profile="", converted_through=through)
        return np.asarray(in_srgb(image)).astype(np.float32) / 255, StoredAs(mode, converted=True, **metadata)
    return (np.asarray(image.convert("RGB")).astype(np.float32) / 255,
            StoredAs(mode, converted=mode != "RGB", **metadata))


# the formats whose files Pillow writes a colour profile and EXIF data into
_METADATA_FORMATS = {"PNG", "JPEG", "TIFF", "WEBP"}


def save_restored(pixels: np.ndarray, stored: StoredAs, path: Path | str) -> list[str]:
    """Write (H, W, 3) float pixels in [0, 1] as the file `stored` describes stored its own: grey as one channel (the
    mean of the three), 16-bit grey and colour at 16 bits, floating-point grey as floats on its own scale, the alpha
    channel as it was, with its colour profile and EXIF data; RGB otherwise. Returns what the target's format could not
    keep (a colour profile in a BMP, ...), as sentences to tell the user; [] when nothing was left out. Raises UserError
    when the format cannot hold the pixels themselves (alpha or 16 bits in a JPEG): PNG holds every one, and every kind
    of metadata."""
    path = Path(path)
    pixels = np.clip(np.asarray(pixels, dtype=np.float32), 0, 1)  # float32 is exact to 16 bits' levels
    if stored.bits == 16 and not stored.grey:
        return write_sixteen_bit_colour((pixels * 65535 + 0.5).astype(np.uint16), stored.alpha, path,
                                        stored.icc_profile, stored.exif)
    if stored.grey:
        grey = pixels.mean(axis=2, dtype=np.float64)  # (exact for three equal channels, as float32 is not)
        if stored.bits == 32 and stored.mode == "I":
            image = Image.fromarray(np.round(grey * stored.full_scale).astype(np.int32))  # mode I
        elif stored.bits == 32:
            image = Image.fromarray((grey * np.float32(stored.full_scale)).astype(np.float32), mode="F")
        elif stored.bits == 16:
            image = Image.fromarray((grey * 65535 + 0.5).astype(np.uint16))  # mode I;16
        else:
            image = Image.fromarray((grey * 255 + 0.5).astype(np.uint8), mode="L")
        if stored.alpha is not None:
            image = Image.merge("LA", (image, Image.fromarray(stored.alpha, mode="L")))
    else:
        image = Image.fromarray((pixels * 255 + 0.5).astype(np.uint8), mode="RGB")
        if stored.alpha is not None:
            image.putalpha(Image.fromarray(stored.alpha, mode="L"))
    metadata = {key: value for key, value in (("icc_profile", stored.icc_profile), ("exif", stored.exif)) if value}
    fix = naming_advice(".tif" if stored.bits == 32 else ".png")
    try:
        with written_whole(path) as temporary:
            image.save(temporary, **metadata)
    except OSError as error:
        if error.errno is not None:  # the file system's refusal (permissions, a full disk), not the format's
            raise UserError(f"cannot write {path}: {error.strerror}") from None
        raise UserError(f"cannot write {path}: {error} (a {image.mode} image). {fix}") from None
    except (KeyError, ValueError) as error:  # a name whose format PIL does not know
        raise UserError(f"cannot write {path}: {str(error).replace(str(temporary), str(path))}. {fix}") from None
    if metadata and Image.registered_extensions().get(path.suffix.lower()) not in _METADATA_FORMATS:
        return [metadata_left_out(metadata, f"a {path.suffix.lstrip('.').upper()} file cannot hold")]
    return []


def naming_advice(suffix: str) -> str:
    """What to name a restored image whose target format cannot hold it, for the suffix restored_suffix gives it."""
    if suffix == ".tif":
        return "Name it .tif, which holds floating-point and 32-bit integer images"
    return "Name it .png, which holds grey, 16-bit and transparent images alike"


def restored_suffix(path: Path | str) -> str:
    """The extension a restored copy of an image file is given when the user names none: .tif for 32-bit grey
    (floating-point, or a TIFF's integers, which PNG cannot hold), .png for every other image (PNG holds the rest
    losslessly)."""
    try:
        with Image.open(path) as header:  # the header only
            return ".tif" if header.mode == "F" or (header.mode == "I" and header.format == "TIFF") else ".png"
    except (OSError, SyntaxError, ValueError):  # said when the image is read
        return ".png"


def writes_images(path: Path | str) -> bool:
    """Pillow writes images in the format `path`'s extension names (.png, .jpg, .tif, .webp, .bmp, ...)."""
    Image.init()
    return Image.registered_extensions().get(Path(path).suffix.lower()) in Image.SAVE



def metadata_left_out(metadata: dict, why: str) -> str:
    """One sentence saying which of the source's colour profile and EXIF data an output was written without."""
    what = " and ".join(("its colour profile" if key == "icc_profile" else "its EXIF data") for key in metadata)
    return f"{what} not kept: {why} {'them' if len(metadata) > 1 else 'it'}; name the output .png to keep everything"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: its length, its 4-letter kind, the data and the CRC of kind and data."""
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def write_sixteen_bit_colour(rgb: np.ndarray, alpha: np.ndarray | None, path: Path | str,
                             icc_profile: bytes | None = None, exif: bytes | None = None) -> list[str]:
    """Write (H, W, 3) uint16 RGB, with an (H, W) uint16 alpha channel if given, as a 16-bit PNG or TIFF (OpenCV:
    Pillow has no 16-bit colour mode). A PNG gets the colour profile and EXIF data as chunks after its header
    (iCCP and eXIf, which OpenCV does not write); a TIFF is written without them, and the returned sentence says so
    ([] otherwise). Raises UserError for another format or a refusal to write."""
    import cv2

    path = Path(path)
    if path.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise UserError(f"cannot write {path}: a 16-bit colour image needs a format that holds 16 bits per channel. "
                        + naming_advice(".png"))
    channels = [rgb[..., 2], rgb[..., 1], rgb[..., 0]] + ([alpha] if alpha is not None else [])  # OpenCV: BGR(A)
    encoded, data = cv2.imencode(path.suffix.lower(), np.dstack(channels))
    if not encoded:
        raise UserError(f"cannot write {path}: OpenCV could not encode it as {path.suffix}")
    data, left_out = data.tobytes(), []
    metadata = {key: value for key, value in (("icc_profile", icc_profile), ("exif", exif)) if value}
    if path.suffix.lower() == ".png":
        header_end = 8 + 25  # the signature, then the IHDR chunk (13 bytes of data): iCCP and eXIf go before IDAT
        chunks = b""
        if icc_profile:
            chunks += png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile))  # name, method 0
        if exif:
            chunks += png_chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00"))  # PNG keeps the TIFF structure only
        data = data[:header_end] + chunks + data[header_end:]
    elif metadata:
        left_out = [metadata_left_out(metadata, "a 16-bit TIFF written here cannot hold")]
    try:
        with written_whole(path) as temporary:
            temporary.write_bytes(data)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    return left_out


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


DIGEST_CHARS = 16  # pixel-hash prefix kept per image in a checkpoint's split record (64 bits: no collisions here)


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
