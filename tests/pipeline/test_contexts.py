import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.contexts import context_window, context_windows, crop_patches, global_view
from pipeline.grid import make_grid
from utils.errors import ConfigError

TOL_MAX = 2 / 255
TOL_MEAN = 0.5 / 255


def smooth_uint8(height, width, seed=0):
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 9, 7, generator=gen)
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    noise = 0.1 * torch.rand(1, 3, height, width, generator=gen)
    return ((fine + noise).clamp(0, 1)[0] * 255).round().to(torch.uint8)


def to_pil(image_u8):
    return Image.fromarray(image_u8.permute(1, 2, 0).numpy())


def from_pil(pil):
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255


def pil_medium(image_u8, tops, lefts, p, c):
    """The released way: pad the whole uint8 image with black by s, crop the c*p window, PIL-resize."""
    s = (c - 1) * p // 2
    height, width = image_u8.shape[1:]
    padded = Image.new("RGB", (width + 2 * s + p, height + 2 * s + p))
    padded.paste(to_pil(image_u8), (s, s))
    windows = [padded.crop((l, t, l + c * p, t + c * p)).resize((p, p), Image.BILINEAR) for t, l in zip(tops, lefts)]
    return torch.stack([from_pil(w) for w in windows])


def test_crop_patches_values_and_bounds():
    image = torch.arange(3 * 100 * 90, dtype=torch.float32).reshape(3, 100, 90)
    patches = crop_patches(image, torch.tensor([0, 36]), [26, 0], 64)
    assert patches.shape == (2, 3, 64, 64)
    assert torch.equal(patches[0], image[:, 0:64, 26:90])
    assert torch.equal(patches[1], image[:, 36:100, 0:64])
    assert torch.equal(crop_patches(image[None], [0], [0], 64)[0], image[:, :64, :64])
    with pytest.raises(ValueError):
        crop_patches(image, [40], [0], 64)


@pytest.mark.parametrize("c,p", [(3, 64), (2, 64), (2, 63), (4, 64), (5, 52), (1, 64)])
def test_medium_contexts_match_pil(c, p):
    image_u8 = smooth_uint8(150, 130)
    grid = make_grid(150, 130, p)
    # first, middle and last rows and columns: patches on every border and one inside
    rows = sorted({grid.tops[0], grid.tops[len(grid.tops) // 2], grid.tops[-1]})
    cols = sorted({grid.lefts[0], grid.lefts[len(grid.lefts) // 2], grid.lefts[-1]})
    boxes = [(t, l) for t in rows for l in cols]
    tops, lefts = [t for t, _ in boxes], [l for _, l in boxes]
    ours = context_windows(image_u8.float() / 255, tops, lefts, p, c)
    ref = pil_medium(image_u8, tops, lefts, p, c)
    assert ours.shape == ref.shape == (len(boxes), 3, p, p)
    err = (ours - ref).abs()
    assert err.max() <= TOL_MAX, err.max() * 255
    assert err.mean() <= TOL_MEAN, err.mean() * 255


def test_medium_context_zero_outside_and_centred():
    image = torch.ones(3, 96, 96)
    p = 32
    ctx = context_windows(image, [0, 32], [0, 32], p, 3)
    # corner patch: the window's top-left third is outside the image -> black there
    assert ctx[0, :, :10, :10].max() == 0
    assert ctx[0, :, 12:, 12:].min() > 0.99
    # the centre patch's window is exactly the image
    assert torch.allclose(ctx[1], torch.ones(3, p, p))
    assert context_window(100, 200, 508, 3) == (100 - 508, 200 - 508, 3 * 508)
    assert context_window(100, 200, 508, 4) == (100 - 762, 200 - 762, 4 * 508)
    assert context_window(100, 200, 63, 2) == (100 - 31, 200 - 31, 126)


def test_context_one_is_the_patch():
    image = torch.rand(3, 80, 70)
    assert torch.equal(context_windows(image, [16], [6], 64, 1), crop_patches(image, [16], [6], 64))


def test_unsupported_context():
    with pytest.raises(ConfigError):
        context_windows(torch.rand(3, 64, 64), [0], [0], 64, 6)
    with pytest.raises(ConfigError):
        context_windows(torch.rand(3, 64, 64), [0], [0], 64, 0)


@pytest.mark.parametrize("shape,g", [((150, 130), 64), ((120, 120), 50), ((60, 90), 100)])
def test_global_view_matches_pil(shape, g):
    image_u8 = smooth_uint8(*shape, seed=1)
    ours = global_view(image_u8.float() / 255, g)
    ref = from_pil(to_pil(image_u8).resize((g, g), Image.BILINEAR))[None]
    assert ours.shape == (1, 3, g, g)
    err = (ours - ref).abs()
    assert err.max() <= TOL_MAX, err.max() * 255
    assert err.mean() <= TOL_MEAN, err.mean() * 255


def test_uint8_images_give_the_float_results():
    torch.manual_seed(3)
    image = torch.randint(0, 256, (3, 150, 131), dtype=torch.uint8)
    as_float = image.float() / 255
    tops, lefts = [0, 40, 86], [0, 67, 30]
    torch.testing.assert_close(context_windows(image, tops, lefts, 64, 3), context_windows(as_float, tops, lefts, 64, 3))
    torch.testing.assert_close(global_view(image, 48), global_view(as_float, 48))


def test_strip_resize_of_large_images_matches_the_direct_resize():
    from pipeline.contexts import resize_in_strips

    torch.manual_seed(4)
    image = torch.randint(0, 256, (3, 1500, 1100), dtype=torch.uint8)
    direct = global_view(image.float() / 255, 96)
    strips = resize_in_strips(lambda top, bottom: image[:, top:bottom], 3, 1500, 1100, (96, 96))
    torch.testing.assert_close(strips, direct, rtol=0, atol=2e-5)


def test_rows_of_the_resize_matrix_do_not_depend_on_the_range_asked_for():
    from pipeline.contexts import resize_weights

    whole = resize_weights(3000, 97)
    for start, stop in ((0, 5), (1023, 1025), (1700, 3000), (2999, 3000)):
        assert torch.equal(resize_weights(3000, 97, start=start, stop=stop), whole[start:stop])
