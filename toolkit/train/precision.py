"""Choosing the mixed-precision mode: what `auto` picks, and obeying an explicit choice.

The one rule, measured where it could be (README, "Precision"):

    explicit choice      --mixed_precision=no|bf16|fp16 on the recipe, or `accelerate launch
                         --mixed_precision X` / `mixed_precision: X` in an Accelerate config file:
                         always obeyed (a warning says when it will be slow or cannot apply)
    auto on a CPU        bf16 where the CPU computes it natively AND faster than fp32 (AMX; AVX512-BF16
                         on AMD), unless the recipe prefers fp32 there (EfficientNet's depthwise
                         convolutions); else fp32. Emulated bf16 (AVX2-only CPUs) is about 10x slower than
                         fp32; native bf16 on an Intel CPU without AMX (AVX512-BF16 only) was measured at
                         0.6x fp32: neither is chosen.
    auto on a GPU        fp32 with TF32 matmuls while a step is small: at every recipe's batch an H200
                         ran fp32/TF32 faster than bf16 or fp16 autocast (results/gpu_h200), the casts
                         costing more than they save in launch-bound steps. From
                         BF16_MIN_FORWARD_GFLOP_PER_STEP of forward work per step and process, bf16
                         where the GPU has it in hardware (Ampere and newer), else fp16 with a loss
                         scaler (V100, T4). Emulated bf16 is never chosen.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "no", "fp16", "bf16")
# Forward GFLOP per step and process above which autocast pays on a GPU. The recipes' steps are 3-115
# GFLOP and ran slower under autocast on an H200; the threshold is set an order of magnitude above the
# largest of them, where matmuls dominate (an assumption, not a measurement: no GPU larger step was timed).
BF16_MIN_FORWARD_GFLOP_PER_STEP = 1000.0
_ISA_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX512_CORE", "AVX512_CORE_VNNI")

PRECISION_NAMES = {"no": "fp32"}  # Accelerate's name for "no mixed precision", as people say it


def precision_name(precision: str) -> str:
    """A precision as people name it: fp32 for Accelerate's 'no', bf16 and fp16 as they are."""
    return PRECISION_NAMES.get(precision, precision)


def _cpuinfo_field(name: str) -> str:
    """The first `name : value` line's value in /proc/cpuinfo ('' where there is none, or no Linux)."""
    if platform.system() != "Linux":
        return ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next((line for line in cpuinfo if line.split(":", 1)[0].strip() == name), "")
    except OSError:
        return ""
    return line.split(":", 1)[1].strip() if ":" in line else ""


@lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str]:
    return frozenset(_cpuinfo_field("flags").split())


@lru_cache(maxsize=1)
def _cpu_vendor() -> str:
    """'GenuineIntel', 'AuthenticAMD', ... ('' where unknown)."""
    return _cpuinfo_field("vendor_id")


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX) and nothing caps the kernels below it.

    SCENE_TOOLKIT_CPU_BF16=0/1 overrides the answer; ONEDNN_MAX_CPU_ISA or ATEN_CPU_CAPABILITY set to an ISA
    without bf16 (e.g. AVX2, to check an AMX machine's AVX2 path) counts as no native bf16.
    """
    override = os.environ.get("SCENE_TOOLKIT_CPU_BF16", "").strip()
    if override in ("0", "1"):
        return override == "1"
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ISA_WITHOUT_BF16:
        return False
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2", "avx512"):
        return False
    flags = _cpuinfo_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_int8_dot_products() -> bool:
    """True where the CPU sums int8 products in 32 bits (AVX512-VNNI, AVX-VNNI or AMX-INT8). Without it (AVX2 only,
    AVX512 without VNNI) onnxruntime's uint8 x int8 kernels add pairs of products in 16 bits, which can saturate:
    an int8 graph whose weights use all 8 bits may then score lower there than where it was checked."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & _cpuinfo_flags())


def cpu_bf16_is_faster() -> bool:
    """True where bf16 autocast trains faster than fp32 on this CPU: native bf16 with AMX, or AVX512-BF16 on AMD.

    Measured (`toolkit benchmark`, docs/results.md): AMX Xeon and AVX512-BF16 AMD EPYC (Zen 4) about 2x fp32 on
    the denoiser's step. An Intel Xeon with AVX512-BF16 but no AMX (an Emerald Rapids whose hypervisor hides AMX)
    computes bf16 natively at 0.6x fp32's speed (its bf16 dot products issue at half the rate of fp32 FMAs);
    other Intel CPUs without AMX (Cooper Lake) are assumed alike. SCENE_TOOLKIT_CPU_BF16=0/1 overrides this too.
    """
    if os.environ.get("SCENE_TOOLKIT_CPU_BF16", "").strip() in ("0", "1"):
        return cpu_has_native_bf16()
    return cpu_has_native_bf16() and ("amx_bf16" in _cpuinfo_flags() or _cpu_vendor() == "AuthenticAMD")


def runs_fast(precision: str, device_type: str) -> bool:
    """True where `device_type` computes `precision` at least as fast as fp32: 'no' anywhere, bf16 on a CPU
    where cpu_bf16_is_faster() and on a GPU with bf16 hardware, fp16 on CUDA GPUs (autocast has no CPU fp16 that
    Accelerate runs). Not fast: emulated bf16, Intel's AVX512-BF16 without AMX, anything unknown."""
    if precision == "no":
        return True
    if precision == "bf16":
        return cpu_bf16_is_faster() if device_type == "cpu" else device_type == "cuda" and cuda_bf16_in_hardware()
    return precision == "fp16" and device_type == "cuda"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name ('bf16', 'fp16'); None for 'no' (fp32) and anything else."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def cpu_model_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cuda_bf16_in_hardware() -> bool:
    """bf16 computed by the GPU itself (compute capability 8.0+), not emulated as torch's default answer allows."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before 2.3 has no including_emulation and answers for the hardware
        return bool(torch.cuda.is_bf16_supported())


def training_device_type() -> str:
    """What Accelerate will train on: 'cuda', 'mps' or 'cpu' (ACCELERATE_USE_CPU=true forces the CPU)."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def launcher_precision(environ: dict | None = None, launcher_argv: list[str] | None = None) -> str | None:
    """The precision `accelerate launch` was explicitly given, or None when it was left unset.

    Accelerate exports ACCELERATE_MIXED_PRECISION='no' both for `--mixed_precision no` and for nothing
    at all, so 'no' alone is ambiguous: it counts as a choice only when the launcher's command line
    names --mixed_precision or its config file sets mixed_precision (the launcher is this process's
    parent: `accelerate launch` runs the script, or torchrun inside it runs the workers).
    """
    environ = os.environ if environ is None else environ
    value = environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    if value in ("fp16", "bf16"):
        return value
    if value != "no":
        return None
    argv = _launcher_argv() if launcher_argv is None else launcher_argv
    if argv is None:
        return None
    for position, argument in enumerate(argv):
        name, _, inline = argument.partition("=")
        if name in ("--mixed_precision", "--mixed-precision"):
            return (inline or (argv[position + 1] if position + 1 < len(argv) else "no")).lower()
    config = _config_file_of(argv, environ)
    if config is not None and _config_sets_precision(config):
        return "no"
    return None


def _launcher_argv() -> list[str] | None:
    """The command line of the nearest ancestor that is `accelerate launch`, if any (Linux only)."""
    pid = os.getppid()
    for _ in range(4):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        words = [part.decode(errors="replace") for part in argv if part]
        if "launch" in words and any(Path(w).name in ("accelerate", "accelerate-launch") or w.endswith(
                "accelerate/commands/accelerate_cli.py") for w in words[:3]):
            return words[words.index("launch") + 1:]
        parent = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "0")
        if parent in ("0", "1"):
            return None
        pid = int(parent)
    return None


def _config_file_of(argv: list[str], environ) -> Path | None:
    for position, argument in enumerate(argv):
        name, _, inline = argument.partition("=")
        if name in ("--config_file", "--config-file"):
            return Path(inline or (argv[position + 1] if position + 1 < len(argv) else ""))
    if environ.get("ACCELERATE_CONFIG_FILE"):
        return Path(environ["ACCELERATE_CONFIG_FILE"])
    try:
        from accelerate.commands.config.config_args import default_config_file
    except ImportError:
        return None
    return Path(default_config_file)


def _config_sets_precision(path: Path) -> bool:
    try:
        text = path.read_text()
    except OSError:
        return False
    return any(line.split("#", 1)[0].strip().startswith("mixed_precision:") for line in text.splitlines())


def choose_mixed_precision(requested: str, device_type: str, *, launcher: str | None = None,
                           prefer_bf16_on_cpu: bool = True,
                           forward_gflop_per_step: Callable[[], float] | float | None = None,
                           log=print) -> str:
    """The precision to give Accelerate: 'no' (fp32; TF32 matmuls on GPUs), 'fp16' or 'bf16'.

    requested: the recipe's --mixed_precision ('auto' defers to `launcher`, then to the rule above).
    prefer_bf16_on_cpu=False: a recipe measured slower in bf16 on CPUs keeps fp32 there under auto.
    forward_gflop_per_step: the forward work of one step on one process (a number, or a function that
    computes it; only called on a GPU under auto).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {requested!r}")
    choice = launcher if requested == "auto" and launcher else requested
    if choice == "auto":
        if device_type == "cuda":
            work = forward_gflop_per_step() if callable(forward_gflop_per_step) else (forward_gflop_per_step or 0.0)
            if work < BF16_MIN_FORWARD_GFLOP_PER_STEP:
                choice = "no"
            else:
                choice = "bf16" if cuda_bf16_in_hardware() else "fp16"
        elif device_type == "cpu" and cpu_bf16_is_faster() and prefer_bf16_on_cpu:
            choice = "bf16"
        else:
            choice = "no"
        return choice
    # an explicit choice: obeyed wherever the device can run it at all
    if device_type == "cpu" and choice == "fp16":
        log("[precision] warning: fp16 autocast does not exist on the CPU (Accelerate runs fp32): running fp32")
        return "no"
    if device_type == "mps" and choice == "bf16":
        log("[precision] warning: bf16 autocast is not supported on MPS: running fp32")
        return "no"
    if device_type == "cpu" and choice == "bf16" and not cpu_has_native_bf16():
        log("[precision] warning: bf16 as asked, on a CPU that only emulates it (no AVX512-BF16/AMX): "
            "expect steps about 10x slower than fp32 (--mixed_precision=auto would pick fp32 here)")
    elif device_type == "cpu" and choice == "bf16" and not cpu_bf16_is_faster():
        log("[precision] warning: bf16 as asked, on a CPU that computes it natively but no faster than fp32 "
            "(AVX512-BF16 without AMX on Intel: measured 0.6x fp32; --mixed_precision=auto would pick fp32 here)")
    if device_type == "cuda" and choice == "bf16" and not cuda_bf16_in_hardware():
        log("[precision] warning: bf16 as asked, on a GPU without bf16 hardware (emulated, slow): "
            "fp16 is this GPU's fast half precision")
    return choice


def describe_cpu() -> str:
    """'<model>, N cores, native bf16: yes/no' for logs, benchmarks and CI."""
    native = cpu_has_native_bf16()
    slow = " but no faster than fp32 (no AMX): auto keeps fp32" if native and not cpu_bf16_is_faster() else ""
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "?")()
    return (f"{cpu_model_name()}, {os.cpu_count()} cores, native bf16: {'yes' if native else 'no'}{slow} "
            f"(PyTorch CPU kernels: {capability})")
