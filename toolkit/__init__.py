"""scene-toolkit: fast, honest image classification and denoising on FFCV + Accelerate + W&B."""

__version__ = "0.1.0"
