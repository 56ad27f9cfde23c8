"""What the measuring scripts (colour_changes.py, noise_estimates.py, tile_seams.py) take and do alike: a folder of
clean images, or only the images a blind denoiser run held out of it; a JSON file for their figures; and a bad
folder or run said in one line, not a traceback. Imported by its neighbours (`python scripts/...` puts this folder
on the import path)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from toolkit.denoising_benchmark import validation_images_of
from toolkit.errors import UserError


def add_folder_arguments(parser: argparse.ArgumentParser, folder_help: str = "a folder of clean images") -> None:
    """FOLDER, --validation_images_of RUN and --out."""
    parser.add_argument("folder", type=Path, help=folder_help)
    parser.add_argument("--validation_images_of", metavar="RUN",
                        help="only the images this blind denoiser run (recipes/blind_denoiser.py) held out of FOLDER")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")


def measure_folder(measure, args: argparse.Namespace):
    """measure(only), only being the images args.validation_images_of held out of args.folder (None: all of them);
    None, after saying why on stderr, when the folder or run is missing or the run did not train on the folder."""
    try:
        only = validation_images_of(args.validation_images_of, args.folder) if args.validation_images_of else None
        return measure(only)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def write_figures(results: dict, args: argparse.Namespace) -> None:
    """The figures to args.out as JSON, when given."""
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
