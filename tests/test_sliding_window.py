import itertools

import numpy as np
import pytest
import torch

from flareseg.config import Fingerprint, get_preset
from flareseg.errors import ConfigError
from flareseg.model.folder import ModelConfig, channel_labels_for
from flareseg.model.network import build_network
from flareseg.model.device import resolve_device
from flareseg.model.predictor import ModelPredictor, downsample
from flareseg.model.sliding_window import (
    count_tiles,
    gaussian_weights,
    mirror_combinations,
    flipped,
    mirrored,
    network_predictor,
    resolve_precision,
    sliding_window_argmax,
    sliding_window_logits,
    tile_starts,
)


def identity(tiles):
    return tiles


@pytest.mark.parametrize("size,patch,step", [(100, 32, 0.5), (64, 32, 1.0), (65, 32, 1.0), (33, 32, 0.5), (20, 32, 0.5), (32, 32, 0.25)])
def test_tile_starts_cover_the_axis_evenly(size, patch, step):
    starts = tile_starts(size, patch, step)
    assert starts[0] == 0
    if size <= patch:
        assert starts == [0]
        return
    assert starts[-1] == size - patch
    gaps = np.diff(starts)
    assert gaps.max() <= patch * step + 1 and gaps.max() - gaps.min() <= 1
    # nnU-Net's count: ceil((size - patch) / (patch * step)) + 1
    assert len(starts) == int(np.ceil((size - patch) / (patch * step))) + 1


def test_tile_starts_rejects_bad_step():
    with pytest.raises(ConfigError, match="step"):
        tile_starts(100, 32, 0.0)
    with pytest.raises(ConfigError, match="step"):
        tile_starts(100, 32, 1.5)


def test_count_tiles():
    assert count_tiles((100, 64, 20), (32, 32, 32), 1.0) == 4 * 2 * 1


@pytest.mark.parametrize("step", [0.5, 0.8, 1.0])
def test_identity_model_reconstructs_the_image_exactly(step):
    # Odd sizes, one axis shorter than the patch (padded), several tiles along Z (slab bookkeeping).
    image = np.random.default_rng(0).normal(size=(37, 20, 75)).astype(np.float32)
    out = sliding_window_logits(image, identity, patch_size=(16, 24, 16), step=step)
    assert out.shape == (1, 37, 20, 75)
    np.testing.assert_allclose(out[0].numpy(), image, rtol=0, atol=1e-5)


def test_constant_model_gives_the_constant_everywhere():
    image = np.zeros((30, 30, 50), np.float32)

    def constant(tiles):
        return torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(tiles.shape[0], 3, *tiles.shape[2:]) + 0.5

    out = sliding_window_logits(image, constant, patch_size=(16, 16, 16), step=0.3, tile_batch_size=4)
    for c in range(3):
        np.testing.assert_allclose(out[c].numpy(), c + 0.5, rtol=1e-5)  # exact up to float32 rounding


def test_gaussian_weights():
    w = gaussian_weights((16, 20, 12)).numpy()
    assert w.shape == (16, 20, 12) and w.dtype == np.float32
    # Centred at (p - 1) / 2, sigma = p / 8: the product of three 1-D Gaussians, clamped at 1e-3.
    axes = [np.exp(-((np.arange(p) - (p - 1) / 2) ** 2) / (2 * (p / 8) ** 2)) for p in (16, 20, 12)]
    expected = np.maximum(axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :], 1e-3)
    np.testing.assert_allclose(w, expected, rtol=1e-5)
    assert w.min() >= 1e-3
    for axis in range(3):
        np.testing.assert_allclose(np.flip(w, axis), w, rtol=1e-6)


def test_overlapping_tiles_are_blended_with_gaussian_weights():
    """Each tile predicts a constant (its start along X): the output is the Gaussian-weighted mean."""
    size, patch = 24, 16
    image = np.broadcast_to(np.arange(size, dtype=np.float32)[:, None, None], (size, 16, 16)).copy()

    def tile_start(tiles):
        return tiles[:, :, :1, :1, :1].expand_as(tiles).clone()

    out = sliding_window_logits(image, tile_start, patch_size=(patch, 16, 16), step=0.5)[0].numpy()
    starts = tile_starts(size, patch, 0.5)
    assert starts == [0, 8]
    w = gaussian_weights((patch, 16, 16)).numpy()
    for x in range(size):
        for y, z in [(3, 3), (8, 8)]:
            num = sum(w[x - s, y, z] * s for s in starts if s <= x < s + patch)
            den = sum(w[x - s, y, z] for s in starts if s <= x < s + patch)
            assert out[x, y, z] == pytest.approx(num / den, rel=1e-5)


def test_mirror_combinations():
    assert mirror_combinations(()) == [()]
    combos = mirror_combinations((0, 1, 2))
    assert len(combos) == 8 and combos[0] == () and set(combos) == {c for n in range(4) for c in itertools.combinations((0, 1, 2), n)}
    with pytest.raises(ConfigError):
        mirror_combinations((0, 0))
    with pytest.raises(ConfigError):
        mirror_combinations((3,))


def test_mirroring_averages_over_all_flips():
    """A model whose output is a fixed pattern: mirroring gives the mean of the pattern's flips."""
    shape = (8, 6, 4)
    pattern = torch.from_numpy(np.random.default_rng(1).normal(size=shape).astype(np.float32))

    def fixed(tiles):
        return pattern.expand(tiles.shape[0], 1, *shape).clone()

    for axes in [(0,), (1, 2), (0, 1, 2)]:
        out = mirrored(fixed, axes)(torch.zeros(2, 1, *shape))
        expected = torch.stack([torch.flip(pattern, [a for a in combo]) for combo in mirror_combinations(axes)]).mean(0)
        torch.testing.assert_close(out[0, 0], expected)
        torch.testing.assert_close(out[1, 0], expected)
    # Flip-equivariant models are unchanged by mirroring.
    x = torch.randn(1, 1, *shape)
    torch.testing.assert_close(mirrored(identity, (0, 1, 2))(x), x)
    assert mirrored(fixed, ()) is fixed


def test_flipped_tiles_equal_the_network_on_the_flipped_volume():
    """A network that is not flip-equivariant, its tiles flipped along F, gives the flip along F of its
    output on the volume flipped along F (the tile starts lie symmetrically on this shape)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 3, 3, padding=1)
    net = lambda t: conv(t)  # noqa: E731
    image = np.random.default_rng(0).normal(size=(40, 24, 30)).astype(np.float32)
    kwargs = dict(patch_size=(24, 16, 16), step=0.5)
    for axes in [(0,), (0, 1), (1, 2)]:
        with torch.no_grad():
            got = sliding_window_logits(image, flipped(net, axes), **kwargs)
            on_flipped = sliding_window_logits(np.ascontiguousarray(np.flip(image, axes)), net, **kwargs)
            plain = sliding_window_logits(image, net, **kwargs)
        dims = [1 + a for a in axes]
        torch.testing.assert_close(got, torch.flip(on_flipped, dims), rtol=1e-5, atol=1e-5)
        assert (got - plain).abs().max() > 1e-2  # the flip changes what this network sees
    assert flipped(net, ()) is net
    with pytest.raises(ConfigError, match="mirror axes"):
        flipped(net, (3,))


def test_mirrored_sliding_window_of_identity_is_exact():
    image = np.random.default_rng(2).normal(size=(20, 18, 30)).astype(np.float32)
    out = sliding_window_logits(image, mirrored(identity, (0, 1, 2)), patch_size=(16, 16, 16), step=0.5)
    np.testing.assert_allclose(out[0].numpy(), image, atol=1e-5)


def test_slab_wise_argmax_equals_argmax_of_full_logits():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 5, 3, padding=1).eval()
    image = np.random.default_rng(3).normal(size=(21, 17, 50)).astype(np.float32)
    kwargs = dict(patch_size=(16, 16, 16), step=0.6)
    full = sliding_window_logits(image, conv, **kwargs)
    labels = sliding_window_argmax(image, conv, **kwargs)
    assert labels.dtype == np.uint8 and labels.shape == image.shape
    np.testing.assert_array_equal(labels, full.argmax(0).numpy())


def test_predictor_output_shape_is_checked():
    with pytest.raises(ValueError, match="returned shape"):
        sliding_window_logits(np.zeros((16, 16, 16), np.float32), lambda t: t[:, :, :8], patch_size=(16, 16, 16))


def test_precision_resolution():
    assert resolve_precision("auto", "cpu") == torch.float32
    assert resolve_precision("fp32", "cpu") == torch.float32
    assert resolve_precision("auto", "cuda") == torch.float16
    assert resolve_precision("bf16", "cuda") == torch.bfloat16
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("fp8", "cpu")


def _tiny_predictor(task="organ", seed=0):
    p = get_preset("tiny", task)
    torch.manual_seed(seed)
    net = build_network(p.network)
    cfg = ModelConfig(task, "tiny", p.network, p.preprocess, Fingerprint(-100.0, 300.0, 50.0, 80.0), p.train, channel_labels_for(task))
    return ModelPredictor(cfg, net, "cpu")


def test_model_predictor_predicts_inside_the_box_only():
    predictor = _tiny_predictor("tumor")
    image = np.random.default_rng(4).normal(size=(40, 36, 20)).astype(np.float32)
    box = ((4, 30), (0, 36), (5, 15))
    label = predictor.predict_labels(image, box=box, step=1.0)
    assert label.shape == image.shape and label.dtype == np.uint8
    outside = np.ones(image.shape, bool)
    outside[4:30, :, 5:15] = False
    assert not label[outside].any()
    assert set(np.unique(label)) <= {0, 14}
    assert predictor.count_tiles((26, 36, 10), 1.0, (0, 1, 2)) == 1 * 2 * 1 * 8


def test_network_predictor_matches_plain_forward():
    predictor = _tiny_predictor()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = predictor.network(x)
        got = network_predictor(predictor.network)(x)
    torch.testing.assert_close(got, expected)


def test_downsample():
    image = np.arange(8 * 6 * 5, dtype=np.float32).reshape(8, 6, 5)
    assert downsample(image, 1) is image
    small = downsample(image, 2)
    assert small.shape == (4, 3, 2)  # round(5 / 2) = 2 (banker's rounding)
    assert small.mean() == pytest.approx(image.mean(), rel=0.05)


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_a_position_free_model_gives_the_same_label_across_tile_borders():
    """A pointwise network (1x1x1 convolution: the output depends on the voxel's intensity only) must
    give exactly the pointwise labels everywhere, at tile borders, in overlaps and in padded margins:
    a lesion pattern that follows the tile grid would be the tiler's doing, not the model's."""
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():
        network.weight[:] = torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1, 1)
        network.bias[:] = torch.tensor([0.0, -0.5])  # lesion where intensity > 0.25
    rng = np.random.default_rng(0)
    image = rng.normal(size=(70, 45, 53)).astype(np.float32)
    expected = (image > 0.25).astype(np.int64)
    for step in (0.5, 0.8, 1.0):
        labels = sliding_window_argmax(image, network_predictor(network), patch_size=(32, 32, 32), step=step, pad_value=-3.0)
        np.testing.assert_array_equal(labels, expected)
    constant = torch.nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias[:] = torch.tensor([0.0, 1.0])
    labels = sliding_window_argmax(image, network_predictor(constant), patch_size=(32, 32, 32), step=0.5, pad_value=-3.0)
    assert (labels == 1).all()


@pytest.mark.parametrize("patch", [(64, 48, 48), (48, 48, 48), (7, 1, 13), (128, 128, 128)])
def test_gaussian_weights_are_monais_importance_map(patch):
    """The map written out in flareseg (so that inference need not import MONAI) is MONAI's, bit for bit."""
    from monai.data.utils import compute_importance_map

    expected = compute_importance_map(patch, mode="gaussian", sigma_scale=0.125)
    assert torch.equal(gaussian_weights(patch), expected)
