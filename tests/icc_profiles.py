"""ICC colour profiles built byte by byte for tests, each with colours worked out by hand: no profile files ship
with Pillow or these machines, and LittleCMS makes only sRGB, Lab and XYZ ones itself.

Every profile here is ICC version 2 with the XYZ connection space (D50), as the specification lays it out: a
128-byte header, a tag table, then the tags, each starting on a 4-byte boundary.
"""

from __future__ import annotations

import itertools
import struct

import numpy as np

D50 = (0.9642, 1.0, 0.8249)
# linear sRGB to XYZ under D50 (Bradford-adapted, as the ICC's own sRGB profile has it): columns are R, G, B
SRGB_TO_XYZ_D50 = np.array([[0.4360, 0.3851, 0.1431],
                            [0.2225, 0.7169, 0.0606],
                            [0.0139, 0.0971, 0.7141]])


def srgb_encoded(linear: np.ndarray | float) -> np.ndarray:
    """sRGB's transfer curve: linear light in [0, 1] to the values an sRGB file stores, in [0, 1]."""
    linear = np.asarray(linear, dtype=np.float64)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


def _s15_fixed16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15_fixed16(v) for v in xyz)


def _description_tag(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return (b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text
            + bytes(4) + bytes(4) + bytes(2) + bytes(1) + bytes(67))  # no Unicode, no ScriptCode text


def _gamma_tag(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)


def _profile(device_class: bytes, colour_space: bytes, tags: dict[bytes, bytes]) -> bytes:
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries, data = [], b""
    for signature, tag in tags.items():
        entries.append(struct.pack(">4sII", signature, offset + len(data), len(tag)))
        data += tag + bytes(-len(tag) % 4)
    header = (struct.pack(">I", 128 + table_size + len(data)) + bytes(4) + struct.pack(">I", 0x02100000)
              + device_class + colour_space + b"XYZ " + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp"
              + bytes(4 + 4 + 4 + 4 + 8 + 4) + b"".join(_s15_fixed16(v) for v in D50) + bytes(4 + 16 + 28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + data


def linear_rgb_profile(description: str = "Linear sRGB primaries (test)") -> bytes:
    """sRGB's primaries and white with no transfer curve: a file carrying it stores linear light, so its value v
    is the sRGB file value srgb_encoded(v)."""
    columns = SRGB_TO_XYZ_D50.T
    return _profile(b"mntr", b"RGB ", {
        b"desc": _description_tag(description), b"wtpt": _xyz_tag(D50),
        b"rXYZ": _xyz_tag(columns[0]), b"gXYZ": _xyz_tag(columns[1]), b"bXYZ": _xyz_tag(columns[2]),
        b"rTRC": _gamma_tag(1.0), b"gTRC": _gamma_tag(1.0), b"bTRC": _gamma_tag(1.0),
        b"cprt": b"text" + bytes(4) + b"No copyright, test data\0"})


def linear_grey_profile(description: str = "Linear grey (test)") -> bytes:
    """Grey that stores linear light (gamma 1): its value v is the sRGB grey srgb_encoded(v)."""
    return _profile(b"mntr", b"GRAY", {b"desc": _description_tag(description), b"wtpt": _xyz_tag(D50),
                                       b"kTRC": _gamma_tag(1.0)})


def ideal_inks_cmyk_profile(description: str = "Ideal inks (test)") -> bytes:
    """CMYK whose inks each take away their share of linear light: cyan c (0-1) leaves (1 - c) of red, magenta of
    green, yellow of blue, and black k leaves (1 - k) of all three. A 2-point grid per ink holds that exactly at
    the corners and multilinear interpolation between them is exact too (the model is linear in each ink)."""
    grid = []
    for cyan, magenta, yellow, black in itertools.product((0, 1), repeat=4):  # the first ink varies slowest
        linear = np.array([1 - cyan, 1 - magenta, 1 - yellow]) * (1 - black)
        xyz = SRGB_TO_XYZ_D50 @ linear
        grid += [min(65535, round(v * 32768)) for v in xyz]  # the 16-bit XYZ encoding: 1.0 is 0x8000
    identity_matrix = b"".join(_s15_fixed16(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lut = (b"mft2" + bytes(4) + struct.pack(">BBBB", 4, 3, 2, 0) + identity_matrix + struct.pack(">HH", 2, 2)
           + struct.pack(">8H", *[0, 65535] * 4) + struct.pack(f">{len(grid)}H", *grid)
           + struct.pack(">6H", *[0, 65535] * 3))
    return _profile(b"prtr", b"CMYK", {b"desc": _description_tag(description), b"wtpt": _xyz_tag(D50),
                                       b"A2B0": lut})
