"""The study's convolutional denoising autoencoders, from one small definition.

Each is a list of encoder convolutions and decoder transposed convolutions, ReLU between
layers and a Sigmoid at the end. The three of the study differ only in those lists:

    AE10: 150 -> 75 -> 38 -> 19 -> 10, latent 128 x 10 x 10 = 12,800 values
    AE38: 150 -> 75 -> 38,              latent  32 x 38 x 38 = 46,208 values
    AE71: 150 -> 146 -> 71,             latent  32 x 71 x 71 = 161,312 values
(the input holds 3 x 150 x 150 = 67,500 values: only AE10 compresses.)

Each transposed convolution is asked for the size of the matching encoder input, which makes
PyTorch pick its output padding: at 150 x 150 that is exactly the study's (0/1) paddings, and
any other size (a 500 x 500 benchmark image) maps back to itself too.
"""

from __future__ import annotations

import torch
from torch import nn

# (in, out, kernel, stride, padding) per encoder conv; decoder: (in, out, kernel, stride, padding, output_padding)
STUDY_AUTOENCODERS = {
    "AE10": {"encoder": [[3, 16, 3, 2, 1], [16, 32, 3, 2, 1], [32, 64, 3, 2, 1], [64, 128, 3, 2, 1]],
             "decoder": [[128, 64, 3, 2, 1, 0], [64, 32, 3, 2, 1, 1], [32, 16, 3, 2, 1, 0], [16, 3, 3, 2, 1, 1]]},
    "AE38": {"encoder": [[3, 16, 3, 2, 1], [16, 32, 3, 2, 1]],
             "decoder": [[32, 16, 3, 2, 1, 0], [16, 3, 3, 2, 1, 1]]},
    "AE71": {"encoder": [[3, 16, 5, 1, 0], [16, 32, 5, 2, 0]],
             "decoder": [[32, 16, 5, 2, 0, 1], [16, 3, 5, 1, 0, 0]]},
}


def mirrored(encoder: list[list[int]]) -> dict:
    """An autoencoder spec whose decoder mirrors `encoder` (output paddings are chosen in forward)."""
    return {"encoder": encoder, "decoder": [[o, i, k, s, p, 0] for i, o, k, s, p in reversed(encoder)]}


_S2 = [[3, 16, 3, 2, 1], [16, 32, 3, 2, 1], [32, 64, 3, 2, 1], [64, 128, 3, 2, 1], [128, 128, 3, 2, 1]]
# The latent-size family: the study's layer types (3x3 stride-2 convs doubling the channels, or the
# 5x5 valid convs of AE71), latents at 150 px from 0.05x to 5x the input's 67,500 values.
AUTOENCODER_FAMILY = {
    "AE5": mirrored(_S2),  # 128 x 5 x 5 = 3,200 (0.05x)
    "AE10": STUDY_AUTOENCODERS["AE10"],  # 128 x 10 x 10 = 12,800 (0.19x)
    "AE19": mirrored(_S2[:3]),  # 64 x 19 x 19 = 23,104 (0.34x)
    "AE38": STUDY_AUTOENCODERS["AE38"],  # 32 x 38 x 38 = 46,208 (0.68x)
    "AE75": mirrored(_S2[:1]),  # 16 x 75 x 75 = 90,000 (1.33x)
    "AE71": STUDY_AUTOENCODERS["AE71"],  # 32 x 71 x 71 = 161,312 (2.39x)
    "AE146": mirrored([[3, 16, 5, 1, 0]]),  # 16 x 146 x 146 = 341,056 (5.05x)
}


class ConvAutoencoder(nn.Module):
    """encoder convs (ReLU after each) -> latent -> decoder transposed convs (ReLU between, Sigmoid last)."""

    def __init__(self, encoder: list[list[int]], decoder: list[list[int]]):
        super().__init__()
        if len(encoder) != len(decoder):
            raise ValueError("the decoder must mirror the encoder: one transposed conv per conv")
        self.encoder = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for i, o, k, s, p in encoder)
        self.decoder = nn.ModuleList(nn.ConvTranspose2d(i, o, k, stride=s, padding=p, output_padding=op)
                                     for i, o, k, s, p, op in decoder)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Size]]:
        """(B, 3, H, W) -> latent, and the input size of each encoder layer (for the decoder)."""
        sizes = []
        for conv in self.encoder:
            sizes.append(images.shape[-2:])
            images = torch.relu(conv(images))
        return images, sizes

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> same
        latent, sizes = self.encode(noisy)
        for position, deconv in enumerate(self.decoder):
            latent = deconv(latent, output_size=sizes[-1 - position])
            latent = torch.relu(latent) if position < len(self.decoder) - 1 else torch.sigmoid(latent)
        return latent


def family_autoencoder(name: str) -> ConvAutoencoder:
    """One member of AUTOENCODER_FAMILY (the study's AE10, AE38 and AE71 among them)."""
    if name not in AUTOENCODER_FAMILY:
        raise ValueError(f"unknown autoencoder {name!r}; choose from {', '.join(AUTOENCODER_FAMILY)}")
    return ConvAutoencoder(**AUTOENCODER_FAMILY[name])


@torch.no_grad()
def latent_shape(model: ConvAutoencoder, image_size: int = 150) -> tuple[int, int, int]:
    """(C, H, W) of the latent for a square input of image_size."""
    device = next(model.parameters()).device
    latent, _ = model.encode(torch.zeros(1, 3, image_size, image_size, device=device))
    return tuple(latent.shape[1:])
