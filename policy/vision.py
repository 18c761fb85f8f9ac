"""Image encoders: camera image [B, 3, H, W] in [0, 1] -> patch embeddings [B, T, C] (projected later).

`ConvEncoder` is the embedded default: strided 3x3 convs, each halving the resolution, then an
adaptive average pool to a fixed grid, so any image size gives `grid * grid` tokens with a learned
position embedding. `PretrainedTower` wraps a local `transformers` vision model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or (images.shape[-2] == size and images.shape[-1] == size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class ConvEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in config.channels:
            layers += [
                nn.Conv2d(
                    in_ch, out_ch, kernel_size=3, stride=2, padding=1, bias=False
                ),  # GroupNorm cancels a bias
                nn.GroupNorm(min(8, out_ch), out_ch),
                nn.GELU(),
            ]
            in_ch = out_ch
        self.net = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(config.grid)
        self.pos = nn.Parameter(torch.zeros(config.num_patches, in_ch))
        nn.init.normal_(self.pos, std=0.02)
        self.image_size = config.image_size
        self.out_dim = in_ch
        self.num_tokens = config.num_patches

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _resize(images, self.image_size) * 2.0 - 1.0  # x: [B, 3, H, W] in [-1, 1]
        x = self.pool(self.net(x))  # x: [B, C, G, G]
        return x.flatten(2).transpose(1, 2) + self.pos  # [B, G*G, C]


class PretrainedTower(nn.Module):
    """Any local `transformers` vision model whose output has `last_hidden_state` [B, T, C].

    Built from the tower's config (`from_config`) when `weights=False`, which is how a checkpoint is
    restored: the tower's weights then come from the checkpoint's own `model.safetensors`.
    """

    def __init__(self, config: VisionConfig, weights: bool = True, tower_config: dict | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if weights:
            self.model = AutoModel.from_pretrained(config.tower_path, local_files_only=True)
        else:
            cfg = (
                AutoConfig.for_model(**tower_config)
                if tower_config
                else AutoConfig.from_pretrained(config.tower_path)
            )
            self.model = AutoModel.from_config(cfg)
        mcfg = self.model.config
        self.image_size = int(getattr(mcfg, "image_size", config.image_size or 224))
        self.out_dim = int(mcfg.hidden_size)
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.image_size, self.image_size)
            self.num_tokens = int(self.model(pixel_values=probe).last_hidden_state.shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _resize(images, self.image_size) * 2.0 - 1.0
        return self.model(pixel_values=x).last_hidden_state  # [B, T, C]


def build_vision_encoder(
    config: VisionConfig, weights: bool = True, tower_config: dict | None = None
) -> nn.Module:
    if config.kind == "conv":
        return ConvEncoder(config)
    return PretrainedTower(config, weights=weights, tower_config=tower_config)
