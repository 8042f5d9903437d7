"""The shared decoder on awkward real images: EXIF orientation, transparency, palette, 16-bit, CMYK,
animation. What TensorFlow computes must match PIL's view of the upright, flattened picture."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from imgclf.components.lib import images
from tests.conftest import sample_files


def _photo(size=(40, 30)) -> Image.Image:
    """A real image, asymmetric so any wrong rotation or flip shows."""
    rgb = Image.open(sample_files("Ankle_boot", 1)[0]).convert("RGB").resize(size)
    a = np.asarray(rgb).copy()
    a[:4, :6] = [255, 0, 0]  # a red corner: any wrong rotation or flip moves it
    return Image.fromarray(a)


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def _exif_le(orientation: int) -> bytes:
    """A little-endian ('II') EXIF block, as many cameras write it (PIL writes big-endian)."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    return b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _tf(data: bytes, size: int, channels: int = 3) -> np.ndarray:
    return images.tf_decode_resize(tf.constant(data), size, channels).numpy()


def _pil(data: bytes, size: int) -> np.ndarray:
    up = images.upright_rgb(Image.open(io.BytesIO(data)))
    return np.asarray(up.resize((size, size), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("byte_order", ["big", "little"])
@pytest.mark.unit
def test_exif_orientation_is_applied_like_pil(orientation, byte_order):
    photo = _photo()
    if byte_order == "big":
        ex = Image.Exif()
        ex[0x0112] = orientation
        data = _enc(photo, "JPEG", quality=95, exif=ex.tobytes())
    else:
        data = _with_app1(_enc(photo, "JPEG", quality=95), _exif_le(orientation))
    assert int(images.tf_exif_orientation(tf.constant(data))) == orientation
    assert ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size == ((40, 30) if orientation < 5 else (30, 40))
    ours, pils = _tf(data, 32).astype(int), _pil(data, 32).astype(int)
    assert np.abs(ours - pils).mean() < 6, "EXIF-rotated pixels differ from PIL's upright image"
    ignored = _tf(_enc(photo, "JPEG", quality=95), 32).astype(int)
    if orientation != 1:  # and it really moved: the same picture with its EXIF ignored looks different
        assert np.abs(ours - ignored).mean() > 3 * np.abs(ours - pils).mean()


@pytest.mark.unit
def test_no_exif_and_non_jpeg_mean_orientation_1():
    photo = _photo()
    for data in (_enc(photo, "JPEG"), _enc(photo, "PNG"), b"\xff\xd8short"):
        assert int(images.tf_exif_orientation(tf.constant(data))) == 1


@pytest.mark.unit
def test_transparency_palette_16bit_cmyk_and_gif_match_pil():
    photo = _photo()
    rgba = photo.convert("RGBA")
    alpha = np.asarray(rgba).copy()
    alpha[:, :20, 3] = 0          # left half fully transparent
    alpha[:, 20:30, 3] = 128      # a half-transparent band
    rgba = Image.fromarray(alpha)
    cases = {
        "rgba": _enc(rgba, "PNG"),
        "la": _enc(rgba.convert("LA"), "PNG"),
        "palette": _enc(photo.convert("P"), "PNG"),
        "png16": _enc(Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257), "PNG"),
        "cmyk": _enc(photo.convert("CMYK"), "JPEG", quality=95),
        "gif": _enc(photo.convert("P"), "GIF"),
    }
    for name, data in cases.items():
        ours, pils = _tf(data, 24).astype(int), _pil(data, 24).astype(int)
        assert ours.shape == (24, 24, 3)
        assert np.abs(ours - pils).mean() < 6, name
    left = _tf(cases["rgba"], 40)[:, :15]
    assert left.min() == 255, "fully transparent pixels are white, not the hidden colour"


@pytest.mark.unit
def test_inspect_animation_policy_and_hash():
    frames = [_photo().rotate(a) for a in (0, 10, 20)]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=100)
    info = images.inspect(b.getvalue())
    assert info.frames == 3 and len(info.dhash) == 64
    with pytest.raises(images.ImageRejected, match="animated image"):
        images.inspect(b.getvalue(), animated="refuse")
    # the perceptual hash barely moves under re-encoding, and moves a lot for another picture
    png, jpg = _enc(_photo(), "PNG"), _enc(_photo(), "JPEG", quality=80)
    other = _enc(Image.open(sample_files("Trouser", 1)[0]).convert("RGB").resize((40, 30)), "PNG")

    def dist(a, b):
        return bin(int(images.inspect(a).dhash, 16) ^ int(images.inspect(b).dhash, 16)).count("1")
    assert dist(png, jpg) <= 10 < 40 < dist(png, other)


@pytest.mark.parametrize("seed", range(6))
def test_batch_decoder_matches_one_at_a_time_and_isolates_bad_images(seed):
    """Generated batches of JPEG/PNG/RGBA/grey/EXIF-rotated images with corrupt ones mixed in: the
    batch call gives each image exactly the pixels of the single-image decoder, and each bad image its
    own cause while the good ones around it still pass."""
    rng = np.random.default_rng(seed)
    photo = _photo()
    kinds = [lambda: _enc(photo, "JPEG", quality=90), lambda: _enc(photo, "PNG"),
             lambda: _enc(photo.convert("RGBA"), "PNG"), lambda: _enc(photo.convert("L"), "PNG"),
             lambda: _with_app1(_enc(photo, "JPEG", quality=95), _exif_le(int(rng.integers(1, 9)))),
             lambda: _enc(photo, "PNG")[:int(rng.integers(20, 200))], lambda: b"not an image at all"]
    datas = [kinds[int(k)]() for k in rng.integers(0, len(kinds), int(rng.integers(1, 40)))]
    size, channels = int(rng.choice([16, 28, 33])), int(rng.choice([1, 3]))
    single = images.decoder(size, channels)
    got = images.batch_decoder(size, channels)(datas)
    assert len(got) == len(datas)
    for data, (pixels, cause) in zip(datas, got):
        try:
            want = single(tf.constant(data)).numpy()
        except Exception as e:  # noqa: BLE001
            assert pixels is None and cause == images.decode_error_cause(e) and cause
            continue
        assert cause == "" and pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels, want)
