"""Choosing a mixed-precision mode that is actually faster on the machine at hand."""

from __future__ import annotations

import os
import platform
from functools import lru_cache

import torch

PRECISIONS = ("auto", "no", "fp16", "bf16")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX). Without it, PyTorch
    emulates bf16 and autocast runs about 10x slower than fp32 (measured on AMD EPYC / AVX2)."""
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_device_type() -> str:
    """What Accelerate will train on: 'cuda', 'mps' or 'cpu' (ACCELERATE_USE_CPU=true forces the CPU)."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def choose_mixed_precision(requested: str, device_type: str, force: bool = False, log=print,
                           cpu_bf16_pays: bool = True) -> str:
    """The precision to hand to Accelerator: 'no', 'fp16' or 'bf16'.

    'auto' takes what `accelerate launch` / accelerate_config.yaml asked for, else bf16 on a GPU
    that supports it (fp16 on older GPUs), bf16 on a CPU with native bf16 (AMX / AVX512-BF16:
    measured 2.1x faster training steps than fp32 for the study CNN on a Xeon with AMX) and fp32
    on other CPUs. On a CPU, fp16 autocast is not available and bf16 is only used with hardware
    support, unless `force` is set. cpu_bf16_pays=False keeps 'auto' at fp32 on every CPU, for
    networks measured slower in bf16 there (depthwise convolutions: EfficientNet trains 2x faster
    in fp32 on the same Xeon).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {requested!r}")
    choice = requested
    if requested == "auto":
        from_launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
        if from_launcher in ("fp16", "bf16"):
            choice = from_launcher
        elif device_type == "cuda":
            choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device_type == "cpu" and cpu_has_native_bf16() and cpu_bf16_pays:
            choice = "bf16"
        else:
            choice = "no"
    if device_type == "cpu" and choice == "fp16":
        log("[precision] warning: fp16 autocast is not available on the CPU; running fp32")
        return "no"
    if device_type == "cpu" and choice == "bf16" and not cpu_has_native_bf16():
        if force:
            log("[precision] warning: forcing bf16 on a CPU without native bf16: expect ~10x slower steps")
            return "bf16"
        log("[precision] warning: this CPU has no native bf16 (no AVX512-BF16/AMX), where bf16 autocast runs "
            "about 10x slower than fp32; running fp32. Pass --force_precision=true to use bf16 anyway")
        return "no"
    if device_type == "mps" and choice == "bf16":
        log("[precision] warning: bf16 autocast is not supported on MPS; running fp32")
        return "no"
    return choice
