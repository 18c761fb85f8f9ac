"""The image encoders: token shapes, determinism, gradients to every parameter, keypoint geometry."""

import pytest
import torch
from ceed_vla.policy.config import ConfigError, VisionConfig, spatial_vision
from ceed_vla.policy.vision import SpatialSoftmax, build_vision_encoder


@pytest.mark.parametrize(
    "config, image, tokens",
    [
        (spatial_vision(), 64, 32 + 16),
        (spatial_vision(image_size=48), 80, 32 + 16),  # resized first: any input size works
        (spatial_vision(keypoints=8, grid=0), 40, 8),
        (spatial_vision(channels=(8, 16), keypoints=5, grid=3), 33, 5 + 9),
        (VisionConfig(), 64, 16),
        (VisionConfig(coords=True), 64, 16),
        (spatial_vision(channels=(8, 16), keypoints=4, grid=2, coords=True), 32, 4 + 4),
    ],
)
def test_encoder_token_shapes(config, image, tokens):
    enc = build_vision_encoder(config)
    out = enc(torch.rand(3, 3, image, image))
    assert out.shape == (3, tokens, enc.out_dim)
    assert enc.num_tokens == tokens == config.num_patches
    assert enc.out_dim == config.channels[-1]


def test_spatial_encoder_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    a = build_vision_encoder(spatial_vision(channels=(8, 16), keypoints=4))
    torch.manual_seed(0)
    b = build_vision_encoder(spatial_vision(channels=(8, 16), keypoints=4))
    images = torch.rand(4, 3, 32, 32)
    a.eval(), b.eval()
    with torch.no_grad():
        out = a(images)
        assert torch.equal(out, b(images))  # same seed, same weights, same output
        assert torch.equal(out, a(images))  # no hidden state between calls
        single = a(images[2:3])
    torch.testing.assert_close(single, out[2:3], rtol=1e-5, atol=1e-6)  # a row does not see its batch


def test_gradient_reaches_every_parameter_of_the_spatial_encoder():
    enc = build_vision_encoder(spatial_vision(channels=(8, 16, 16), keypoints=6, grid=2))
    enc(torch.rand(2, 3, 32, 32)).square().mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reached {missing}"


def test_keypoint_coordinates_follow_a_bright_spot():
    """With a head that scores the map's only channel, the keypoint sits where that channel peaks."""
    head = SpatialSoftmax(channels=1, keypoints=1)
    with torch.no_grad():
        head.logits.weight.fill_(1.0)
        head.logits.bias.zero_()
        head.log_temperature.fill_(-3.0)  # sharp softmax
    seen = {}
    head.coords.register_forward_hook(lambda _m, inp, _out: seen.__setitem__("xy", inp[0]))
    feats = torch.zeros(2, 1, 9, 9)
    feats[0, 0, 0, 8] = 1.0  # row 0 (top), column 8 (right)
    feats[1, 0, 8, 0] = 1.0  # bottom left
    head(feats)
    xy = seen["xy"][:, 0]  # [B, 2] as (x, y) in [-1, 1]
    torch.testing.assert_close(xy, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), atol=0.02, rtol=0)


@pytest.mark.parametrize(
    "kwargs, quoted",
    [
        (dict(kind="spatial", keypoints=0), "keypoints must be positive"),
        (dict(kind="spatial", keypoints=4, grid=-1), "grid must be >= 0"),
        (dict(kind="conv", grid=0), "grid must be positive"),
        (dict(kind="resnet"), "'resnet'"),
    ],
)
def test_vision_config_refuses_bad_values(kwargs, quoted):
    with pytest.raises(ConfigError, match=quoted):
        VisionConfig(**kwargs)


def test_coord_channels_are_the_pixel_position_and_reach_the_first_conv():
    from ceed_vla.policy.vision import with_coords

    x = with_coords(torch.zeros(2, 3, 5, 7))  # [B, 5, H, W]
    assert x.shape == (2, 5, 5, 7)
    assert torch.equal(x[0, 3, 2], torch.linspace(-1, 1, 7))  # x runs along a row
    assert torch.equal(x[1, 4, :, 6], torch.linspace(-1, 1, 5))  # y runs down a column
    torch.manual_seed(0)
    enc = build_vision_encoder(VisionConfig(channels=(8, 16), grid=2, coords=True))
    assert enc.net[0].in_channels == 5
    enc(torch.rand(2, 3, 32, 32)).square().mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reached {missing}"
    assert torch.any(enc.net[0].weight.grad[:, 3:] != 0)  # the coordinate channels are read


def test_coords_are_refused_for_a_pretrained_tower():
    with pytest.raises(ConfigError, match="coords"):
        VisionConfig(kind="pretrained", tower_path="/some/tower", coords=True)
