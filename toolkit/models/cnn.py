"""The study's custom CNN: twelve 3x3 conv-BN-ReLU blocks whose width grows linearly."""

from __future__ import annotations

from torch import nn

POOL_AFTER = (1, 4, 8, 12)  # 2x2 max-pool after these convs: 80 -> 40 -> 20 -> 10 -> 5


class SceneCNN(nn.Module):
    """Conv k (k = 1..12) outputs k * width channels; a 2x2 max-pool follows convs 1, 4, 8, 12.

    At width 20, 80x80 inputs and 6 classes: 2,972,826 parameters, 12*20 x 5 x 5 = 6,000
    features into the head Linear(6000,150)-BN-ReLU-Dropout-Linear(150,50)-BN-ReLU-Dropout-Linear(50,6).
    """

    def __init__(self, num_classes: int = 6, width: int = 20, image_size: int = 80, dropout: float = 0.5):
        super().__init__()
        self.image_size = image_size  # the head's input size is fixed by it
        layers: list[nn.Module] = []
        channels, side = 3, image_size
        for k in range(1, 13):
            layers += [nn.Conv2d(channels, k * width, 3, padding=1), nn.BatchNorm2d(k * width), nn.ReLU(inplace=True)]
            if k in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            channels = k * width
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for four 2x2 pools (need at least 16)")
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),  # (B, 12w, side, side) -> (B, 12w * side^2)
            nn.Linear(channels * side * side, 150), nn.BatchNorm1d(150), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(150, 50), nn.BatchNorm1d(50), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(50, num_classes),
        )

    def forward(self, images):  # (B, 3, H, W) normalised -> (B, num_classes) logits
        return self.head(self.features(images))
