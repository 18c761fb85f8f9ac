"""Image encoders: camera image [B, 3, H, W] in [0, 1] -> patch embeddings [B, T, C] (projected later).

`SpatialEncoder` (kind "spatial") is the embedded default: a residual conv trunk, then two kinds of
tokens read off its last feature map:
- keypoints (as robomimic's and Diffusion Policy's spatial softmax): each of `keypoints` 1x1-conv
  heads is a softmax over the map's positions; its token is the feature vector under that softmax
  plus a projection of its expected (x, y) in [-1, 1]. "Where" survives to the LM at sub-pixel
  precision, which average pooling to a coarse grid throws away;
- an average-pooled `grid x grid` of the same map with learned position embeddings (the layout).

`ConvEncoder` (kind "conv") is the earlier default: strided 3x3 convs, each halving the resolution,
then an adaptive average pool to a fixed grid. `PretrainedTower` wraps a local `transformers`
vision model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig


def with_coords(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C + 2, H, W]: the pixel's x and y in [-1, 1] appended (CoordConv)."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # [2, H, W]: x, y
    return torch.cat([x, grid.expand(b, -1, -1, -1)], dim=1)


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or (images.shape[-2] == size and images.shape[-1] == size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _stride2_stages(config: VisionConfig, residual: bool) -> tuple[list[nn.Module], int]:
    """One stride-2 conv + GroupNorm + GELU (and a residual block when `residual`) per entry of
    `config.channels`; the first takes RGB, plus x and y channels with `config.coords`. Returns the
    layers, flat (a checkpoint's parameter names follow their order), and the last width."""
    layers: list[nn.Module] = []
    in_ch = 5 if config.coords else 3
    for out_ch in config.channels:
        conv = nn.Conv2d(
            in_ch, out_ch, kernel_size=3, stride=2, padding=1, bias=False
        )  # GroupNorm cancels a bias
        layers += [conv, nn.GroupNorm(min(8, out_ch), out_ch), nn.GELU()]
        if residual:
            layers.append(ResidualBlock(out_ch))
        in_ch = out_ch
    return layers, in_ch


def _encoder_input(images: torch.Tensor, size: int | None, coords: bool) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> resized, in [-1, 1], with x and y channels appended when `coords`."""
    x = _resize(images, size) * 2.0 - 1.0  # x: [B, 3, H, W]
    return with_coords(x) if coords else x  # [B, 3 or 5, H, W]


class ConvEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.coords = config.coords
        layers, width = _stride2_stages(config, residual=False)
        self.net = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(config.grid)
        self.pos = nn.Parameter(torch.zeros(config.num_patches, width))
        nn.init.normal_(self.pos, std=0.02)
        self.image_size = config.image_size
        self.out_dim = width
        self.num_tokens = config.num_patches

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.net(_encoder_input(images, self.image_size, self.coords)))  # x: [B, C, G, G]
        return x.flatten(2).transpose(1, 2) + self.pos  # [B, G*G, C]


class ResidualBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and a skip connection; shape-preserving."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(min(8, channels), channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(min(8, channels), channels),
        )
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class SpatialSoftmax(nn.Module):
    """Feature map [B, C, h, w] -> keypoint tokens [B, K, C].

    Head k is a softmax over the h*w positions of a 1x1-conv logit map (temperature learnt, as in
    robomimic); its token is the softmax-weighted feature vector plus a linear map of the expected
    coordinates (x, y) in [-1, 1] and a learned identity embedding.
    """

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.logits = nn.Conv2d(channels, keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.coords = nn.Linear(2, channels)
        self.ident = nn.Parameter(torch.zeros(keypoints, channels))
        nn.init.normal_(self.ident, std=0.02)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feats.shape
        logits = self.logits(feats).flatten(2) / self.log_temperature.exp()  # [B, K, h*w]
        attn = logits.softmax(dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=feats.device, dtype=attn.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=feats.device, dtype=attn.dtype)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2)  # [h*w, 2]
        xy = attn @ grid  # [B, K, 2]: expected (x, y)
        pooled = attn @ feats.flatten(2).transpose(1, 2)  # [B, K, C]
        return pooled + self.coords(xy.to(pooled.dtype)) + self.ident


class SpatialEncoder(nn.Module):
    """Residual conv trunk -> [keypoint tokens (K)][grid tokens (G*G)], each of width channels[-1].

    Each entry of `channels` is one stride-2 conv followed by a residual block, so the last map is
    image_size / 2**len(channels) on a side (16 x 16 for 128 px and three stages).
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.coords = config.coords
        stages, in_ch = _stride2_stages(config, residual=True)
        self.trunk = nn.Sequential(*stages)
        self.keypoints = SpatialSoftmax(in_ch, config.keypoints)
        self.grid = config.grid
        if self.grid:
            self.pool = nn.AdaptiveAvgPool2d(self.grid)
            self.pos = nn.Parameter(torch.zeros(self.grid * self.grid, in_ch))
            nn.init.normal_(self.pos, std=0.02)
        self.image_size = config.image_size
        self.out_dim = in_ch
        self.num_tokens = config.keypoints + self.grid * self.grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.trunk(_encoder_input(images, self.image_size, self.coords))  # [B, C, h, w]
        tokens = [self.keypoints(feats)]  # [B, K, C]
        if self.grid:
            tokens.append(self.pool(feats).flatten(2).transpose(1, 2) + self.pos)  # [B, G*G, C]
        return torch.cat(tokens, dim=1)


def vision_part(model: nn.Module) -> nn.Module:
    """A full image-text model (CLIP, SigLIP: a `vision_config` beside a text one) -> its vision
    model alone (its own `*VisionModel`, the same weights); any other model as it is."""
    if getattr(model.config, "vision_config", None) is None or not hasattr(model, "vision_model"):
        return model
    return model.vision_model  # transformers 5 keeps it as a full CLIPVisionModel / SiglipVisionModel


def tower_normalisation(tower_path: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(image_mean, image_std) from the tower's preprocessor_config.json, None when it has none."""
    import json
    from pathlib import Path

    path = Path(tower_path or "") / "preprocessor_config.json"
    if not tower_path or not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    if "image_mean" not in cfg or "image_std" not in cfg:
        return None
    return tuple(cfg["image_mean"]), tuple(cfg["image_std"])


class PretrainedTower(nn.Module):
    """Any local `transformers` vision model whose output has `last_hidden_state` [B, T, C]; of a full
    CLIP or SigLIP folder its vision model. Images are normalised with the tower's own image
    processor settings (mean and std from preprocessor_config.json, kept in `VisionConfig`).

    Built from the tower's config (`from_config`) when `weights=False`, which is how a checkpoint is
    restored: the tower's weights then come from the checkpoint's own `model.safetensors`.
    """

    def __init__(self, config: VisionConfig, weights: bool = True, tower_config: dict | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if weights:
            self.model = vision_part(AutoModel.from_pretrained(config.tower_path, local_files_only=True))
            if config.image_mean is None:  # first build: the tower's own processor settings
                norm = tower_normalisation(config.tower_path)
                if norm is not None:
                    config.image_mean, config.image_std = norm
        else:
            cfg = (
                AutoConfig.for_model(**tower_config)
                if tower_config
                else AutoConfig.from_pretrained(config.tower_path)
            )
            self.model = vision_part(AutoModel.from_config(cfg))
        mcfg = self.model.config
        self.image_size = int(getattr(mcfg, "image_size", config.image_size or 224))
        self.out_dim = int(mcfg.hidden_size)
        mean = config.image_mean or (0.5, 0.5, 0.5)
        std = config.image_std or (0.5, 0.5, 0.5)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.image_size, self.image_size)
            self.num_tokens = int(self.model(pixel_values=probe).last_hidden_state.shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (_resize(images, self.image_size) - self.mean) / self.std
        return self.model(pixel_values=x).last_hidden_state  # [B, T, C]


def build_vision_encoder(
    config: VisionConfig, weights: bool = True, tower_config: dict | None = None
) -> nn.Module:
    if config.kind == "conv":
        return ConvEncoder(config)
    if config.kind == "spatial":
        return SpatialEncoder(config)
    return PretrainedTower(config, weights=weights, tower_config=tower_config)
