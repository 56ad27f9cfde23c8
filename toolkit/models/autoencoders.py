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


def study_autoencoder(name: str) -> ConvAutoencoder:
    if name not in STUDY_AUTOENCODERS:
        raise ValueError(f"unknown study autoencoder {name!r}; choose from {', '.join(STUDY_AUTOENCODERS)}")
    return ConvAutoencoder(**STUDY_AUTOENCODERS[name])


@torch.no_grad()
def latent_shape(model: ConvAutoencoder, image_size: int = 150) -> tuple[int, int, int]:
    """(C, H, W) of the latent for a square input of image_size."""
    device = next(model.parameters()).device
    latent, _ = model.encode(torch.zeros(1, 3, image_size, image_size, device=device))
    return tuple(latent.shape[1:])
