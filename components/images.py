"""Image decoding rules shared by ingest, preprocess, serving and predict.

Two halves with one contract:
- `inspect` (PIL) fully decodes a file once at ingest to decide whether it is usable, and why not.
- `tf_decode_resize` (TensorFlow ops) turns encoded bytes into the uint8 pixels the model sees. It is
  the *same function* in preprocess (eagerly) and inside the exported SavedModel (in the graph), so a
  served image is bit-for-bit what training saw; PIL and TF disagree on JPEG IDCT and antialiasing.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Formats TensorFlow's decode_image understands: anything else could be ingested but never served.
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
EXTENSIONS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP"}
COLOR_MODES = {"rgb": 3, "grayscale": 1}
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str


class ImageRejected(Exception):
    """A file that must not be used, with a short machine-friendly `reason` and a human `detail`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def inspect(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Decode every pixel once; raise ImageRejected with the cause if the image is unusable."""
    if not data:
        raise ImageRejected("empty file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not an image", "no known image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("too many pixels", str(e)) from None
    except (OSError, SyntaxError, ValueError) as e:  # header parsed partly, then the file ended
        raise ImageRejected("truncated or corrupt", str(e)) from None
    with img:
        fmt = img.format or "unknown"
        if fmt not in SUPPORTED_FORMATS:
            raise ImageRejected("unsupported format", f"{fmt} (supported: {', '.join(SUPPORTED_FORMATS)})")
        w, h = img.size
        if w * h > max_pixels:
            raise ImageRejected("too many pixels", f"{w}x{h} exceeds the limit of {max_pixels} pixels")
        if w == 0 or h == 0:
            raise ImageRejected("corrupt image", f"{w}x{h}")
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageRejected("truncated or corrupt", str(e)) from None
        return ImageInfo(fmt, w, h, img.mode)


def channels_for(color_mode: str) -> int:
    try:
        return COLOR_MODES[color_mode]
    except KeyError:
        raise ValueError(f"color_mode must be one of {sorted(COLOR_MODES)}, got {color_mode!r}") from None


def tf_decode_resize(image_bytes, image_size: int, channels: int):
    """Encoded JPEG/PNG/GIF/BMP bytes (scalar string tensor) -> uint8 [size, size, channels].

    Always decodes to RGB first (BMP cannot decode to one channel), converts to grayscale in float,
    resizes with antialiasing (as PIL does when shrinking), then rounds back to uint8 so the pixels can
    be stored compactly and reproduced exactly at serving time.
    """
    import tensorflow as tf

    img = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    img = tf.ensure_shape(img, [None, None, 3])
    img = tf.cast(img, tf.float32)
    if channels == 1:
        img = tf.image.rgb_to_grayscale(img)
    img = tf.image.resize(img, [image_size, image_size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)


def decoder(image_size: int, channels: int):
    """A traced tf.function of `tf_decode_resize` for eager per-image use (preprocess, predict)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def decode(b):
        return tf_decode_resize(b, image_size, channels)

    return decode
