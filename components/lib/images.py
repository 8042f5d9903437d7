"""Image decoding rules shared by ingest, preprocess, serving and predict.

Two halves with one contract:
- `inspect` (PIL) fully decodes a file once at ingest to decide whether it is usable, and why not.
- `tf_decode_resize` (TensorFlow ops) turns encoded bytes into the uint8 pixels the model sees. It is
  the *same function* in preprocess (eagerly) and inside the exported SavedModel (in the graph), so a
  served image is bit-for-bit what training saw; PIL and TF disagree on JPEG IDCT and antialiasing.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from imgclf.components.lib.options import Options, option

# Formats TensorFlow's decode_image understands: anything else could be ingested but never served.
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
# PIL's name for a JPEG with a multi-picture (MPF) segment, as many cameras write: TensorFlow decodes its
# primary picture like any JPEG, so it is one, not an animation.
JPEG_ALIASES = {"MPO": "JPEG"}
EXTENSIONS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP", ".webp": "WEBP"}
COLOR_MODES = {"rgb": 3, "grayscale": 1}
DEFAULT_MAX_PIXELS = 40_000_000


ANIMATED_POLICIES = ("first_frame", "refuse")


@dataclass(frozen=True, kw_only=True)
class PixelLimit(Options):
    """The decompression-bomb guard, shared by every step that opens user images."""
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "images with more pixels are refused before decoding "
                                                 "(decompression bombs)", min=1, max=1_000_000_000)


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str
    frames: int = 1
    dhash: str = ""


class ImageRejected(Exception):
    """A file that must not be used, with a short machine-friendly `reason` and a human `detail`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def inspect(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, animated: str = "first_frame",
            decode: bool = True) -> ImageInfo:
    """Decode every pixel once; raise ImageRejected with the cause if the image is unusable.

    Animated images are served by their first frame (what TensorFlow decodes with
    expand_animations=False) or refused, as `animated` says. Also returns a 64-bit difference hash of
    the upright, flattened image for near-duplicate detection. `decode=False` stops after the header
    (format, size and pixel limit, frames), with no hash: for callers whose decoder is TensorFlow's own.
    """
    if animated not in ANIMATED_POLICIES:
        raise ValueError(f"animated must be one of {ANIMATED_POLICIES}, got {animated!r}")
    if not data:
        raise ImageRejected("empty file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not an image", "no known image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL's own guard fired first: quote our documented limit (max_pixels), not PIL's.
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageRejected("too many pixels", (f"{int(found.group(1)):,} pixels" if found else "the image")
                            + f" exceed the limit of {max_pixels:,} pixels (max_pixels)") from None
    except (OSError, SyntaxError, ValueError) as e:  # header parsed partly, then the file ended
        raise ImageRejected("truncated or corrupt", str(e)) from None
    with img:
        fmt = JPEG_ALIASES.get(img.format, img.format or "unknown")
        if fmt not in SUPPORTED_FORMATS:
            raise ImageRejected("unsupported format", f"{fmt} (supported: {', '.join(SUPPORTED_FORMATS)})")
        w, h = img.size
        if w * h > max_pixels:
            raise ImageRejected("too many pixels", f"{w}x{h} = {w * h:,} pixels exceed the limit of {max_pixels:,} "
                                                   "pixels (max_pixels)")
        if w == 0 or h == 0:
            raise ImageRejected("corrupt image", f"{w}x{h}")
        frames = 1 if img.format in JPEG_ALIASES else int(getattr(img, "n_frames", 1) or 1)
        if frames > 1 and animated == "refuse":
            raise ImageRejected("animated image", f"{frames} frames (animated='refuse')")
        mode = img.mode
        if not decode:
            return ImageInfo(fmt, w, h, mode, frames, "")
        if fmt == "JPEG":
            # The hash needs a 17x16 thumbnail: let the JPEG decoder scale by 1/2..1/8 in the DCT (it still
            # reads every byte of the scan, so a truncated file still fails here). The full-size decode
            # that admission rests on is TensorFlow's (served_decoder_problem).
            img.draft(mode, (HASH_SOURCE_PIXELS, HASH_SOURCE_PIXELS))
        try:
            img.load()
            dhash = difference_hash(img)
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageRejected("truncated or corrupt", str(e)) from None
        return ImageInfo(fmt, w, h, mode, frames, dhash)


def upright_rgb(img: Image.Image) -> Image.Image:
    """PIL's view of what the model sees (EXIF applied, transparency on white): for hashes and pictures."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):  # 16-bit grey: PIL's convert() clips at 255, TensorFlow scales; scale
        import numpy as np

        img = Image.fromarray(np.round(np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")


# The smallest side a JPEG is decoded at for its hash: 8x the thumbnail, so the bilinear resize still
# averages many pixels per cell (on the embedded sample and re-encoded copies the hashes differ from a
# full-size decode's by at most a few of 256 bits; the near-duplicate threshold is 10).
HASH_SOURCE_PIXELS = 128


def difference_hash(img: Image.Image, size: int = 16) -> str:
    """dHash: `size`² bits of left-right brightness gradients on a (size+1)×size thumbnail, as hex.

    Re-encoded, resized or lightly edited copies differ in a few bits. 16×16 (256 bits), not the
    common 8×8: on small grayscale images such as Fashion-MNIST's, 64 bits collide for distinct images
    (often of another class, which would be flagged as a leak), where 256 bits keep them apart.
    """
    import numpy as np

    small = np.asarray(upright_rgb(img).convert("L").resize((size + 1, size), Image.Resampling.BILINEAR),
                       dtype=np.int16)
    # A step must exceed 4 grey levels to count: flat backgrounds otherwise flip bits on JPEG noise.
    return np.packbits((small[:, 1:] > small[:, :-1] + 4).flatten()).tobytes().hex()


def channels_for(color_mode: str) -> int:
    try:
        return COLOR_MODES[color_mode]
    except KeyError:
        raise ValueError(f"color_mode must be one of {sorted(COLOR_MODES)}, got {color_mode!r}") from None


def _find(haystack, needle: list[int]):
    """Positions where the byte sequence `needle` starts in a uint8 vector (graph-friendly)."""
    import tensorflow as tf

    n = tf.shape(haystack)[0] - len(needle) + 1
    hit = tf.ones([tf.maximum(n, 0)], tf.bool)
    for k, byte in enumerate(needle):
        hit = hit & tf.equal(haystack[k:k + tf.maximum(n, 0)], byte)
    return tf.cast(tf.where(hit)[:, 0], tf.int32)


def tf_exif_orientation(image_bytes):
    """The EXIF orientation (1-8) of a JPEG, 1 if absent: TensorFlow's decoders ignore it, phones rely on it.

    Looks for the Orientation entry (tag 0x0112, SHORT, count 1) of either byte order, only inside the
    APP1 'Exif' segment at the start of the file, so compressed image data is never misread as a tag.
    """
    import tensorflow as tf

    # Only a JPEG's first bytes are scanned: for other formats the whole EXIF search would be ~20 graph
    # ops per image for nothing (preprocess decodes every image through this graph).
    is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, 2), b"\xff\xd8")

    def from_exif():
        head = tf.cast(tf.io.decode_raw(tf.strings.substr(image_bytes, 0, 65536), tf.uint8), tf.int32)
        exif = _find(head, [0x45, 0x78, 0x69, 0x66, 0, 0])  # "Exif\0\0"

        def orientation():
            start = exif[0]
            seg_end = tf.minimum(start - 2 + head[start - 2] * 256 + head[start - 1], tf.size(head))
            best = tf.constant(1)
            for pattern, value_at in (([0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00], 9),
                                      ([0x12, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00], 8)):
                pos = _find(head, pattern)
                pos = tf.boolean_mask(pos, (pos > start) & (pos + value_at < seg_end))
                found = tf.cond(tf.size(pos) > 0, lambda p=pos, v=value_at: head[p[0] + v], lambda: tf.constant(0))
                best = tf.where(tf.logical_and(found >= 1, found <= 8), found, best)
            return best

        usable = tf.logical_and(tf.size(exif) > 0, tf.reduce_min(tf.concat([exif, [3]], 0)) >= 2)
        return tf.cond(usable, orientation, lambda: tf.constant(1))

    return tf.cond(is_jpeg, from_exif, lambda: tf.constant(1))


def tf_decode_resize(image_bytes, image_size: int, channels: int):
    """Encoded JPEG/PNG/GIF/BMP bytes (scalar string tensor) -> uint8 [size, size, channels].

    The one definition of "what the model sees", used eagerly by preprocess and predict and inside the
    exported SavedModel: EXIF orientation is applied (JPEG), transparency is composited onto white (a
    transparent PNG's hidden colour is noise), grey/palette/16-bit/CMYK become RGB, grayscale is taken
    from RGB in float, and resizing antialiases as PIL does when shrinking. Rounding back to uint8 lets
    pixels be stored compactly and reproduced exactly at serving time.
    """
    import tensorflow as tf

    img = tf.cast(tf_decode(image_bytes), tf.float32)
    c = tf.shape(img)[2]
    # Branches, not a branch-free blend: at 1024 px every extra full-size float op costs more than a
    # branch's function call (a branch-free version gave the same pixels but was slower there).

    def over_white(color, alpha):
        a = alpha / 255.0
        return color * a + 255.0 * (1.0 - a)

    img = tf.switch_case(c - 1, [
        lambda: tf.tile(img[..., :1], [1, 1, 3]),
        lambda: tf.tile(over_white(img[..., :1], img[..., 1:2]), [1, 1, 3]),
        lambda: img[..., :3],
        lambda: over_white(img[..., :3], img[..., 3:4]),
    ])
    img = tf.ensure_shape(img, [None, None, 3])
    # EXIF orientations 1-8 as flips and transposes (tf.image.rot90's own ops for 90, 180 and 270 degrees,
    # without the 4-way case it wraps them in, which made up a third of this graph).
    img = tf.switch_case(tf_exif_orientation(image_bytes) - 1, [
        lambda: img,
        lambda: tf.reverse(img, [1]),
        lambda: tf.reverse(img, [0, 1]),                          # rot90 k=2
        lambda: tf.reverse(img, [0]),
        lambda: tf.transpose(img, [1, 0, 2]),
        lambda: tf.reverse(tf.transpose(img, [1, 0, 2]), [1]),    # rot90 k=3
        lambda: tf.reverse(tf.transpose(img, [1, 0, 2]), [0, 1]),  # transpose, then rot90 k=2
        lambda: tf.transpose(tf.reverse(img, [1]), [1, 0, 2]),    # rot90 k=1
    ])
    if channels == 1:
        img = tf.image.rgb_to_grayscale(img)
    img = tf.image.resize(img, [image_size, image_size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)


def tf_decode(image_bytes):
    """The serving graph's decoder (any size, first frame of an animation): one definition for serving,
    preprocess and ingest's admission check."""
    import tensorflow as tf

    # The op tf.io.decode_image(channels=0, dtype=uint8, expand_animations=False) builds, without its
    # Python wrapper: the same graph node, and ingest's eager call per file takes 37 instead of 81 us.
    return tf.raw_ops.DecodeImage(contents=image_bytes, channels=0, dtype=tf.uint8, expand_animations=False)


def served_decoder_problem(data: bytes) -> str:
    """Why the served model could not decode these bytes ("" if it can): ingest admits only what it can,
    so its report is the truth and preprocess never drops an admitted image for that."""
    import tensorflow as tf

    try:
        tf_decode(tf.constant(data))  # converted first: the op's eager fast path then takes it as it is
        return ""
    except Exception as e:  # noqa: BLE001 - TensorFlow raises several types; the message is the cause
        return decode_error_cause(e)


def decode_error_cause(e: BaseException) -> str:
    """The line of a TensorFlow decode error that says what is wrong ("Invalid PNG data, size 657"), not
    the "Graph execution error:" and node trace around it."""
    text = getattr(e, "message", None) or str(e)
    for raw in text.splitlines():
        # Also off: an eager op's "{{function_node ...}}" prefix and " [Op:DecodeImage] name:" suffix.
        line = re.sub(r"\s*\[Op:[^\]]*\].*$", "", re.sub(r"^\{\{[^}]*\}\}\s*", "", raw.split("[[", 1)[0].strip()))
        # Skipped: the headline, the node, and the Python stack it was defined at: indented frames, or
        # "<stack traces unavailable>" in a loaded SavedModel (what `imgclf predict` calls).
        if line and not raw[:1].isspace() and not line.startswith(
                ("Graph execution error", "Detected at node", "File ", "<stack traces")):
            return line
    return f"{type(e).__name__}: {text.strip()[:200]}"


def decoder(image_size: int, channels: int):
    """A traced tf.function of `tf_decode_resize` for eager per-image use."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def decode(b):
        return tf_decode_resize(b, image_size, channels)

    return decode


def batch_decoder(image_size: int, channels: int):
    """`decode(list of encoded bytes)` -> one (uint8 pixels, "") or (None, cause) per image, in order.

    One TensorFlow call per batch, as the serving graph decodes (a map over the batch): a call per image
    costs more in dispatch alone than decoding a small image. A batch that fails is decoded
    again image by image, so each bad image gets its own cause and the good ones still pass.
    """
    import tensorflow as tf

    one = decoder(image_size, channels)
    spec = tf.TensorSpec([image_size, image_size, channels], tf.uint8)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)  # plain TF: no conversion
    def many(batch):
        return tf.map_fn(lambda b: tf_decode_resize(b, image_size, channels), batch, fn_output_signature=spec,
                         parallel_iterations=16)

    def single(data: bytes):
        try:
            return one(tf.constant(data)).numpy(), ""
        except Exception as e:  # noqa: BLE001 - TensorFlow raises several types; the message is the cause
            return None, decode_error_cause(e)

    def decode(datas: list[bytes]) -> list[tuple]:
        if not datas:
            return []
        try:
            return [(pixels, "") for pixels in many(tf.constant(datas)).numpy()]
        except Exception:  # noqa: BLE001 - some image in the batch is bad: find which, and why
            return [single(d) for d in datas]

    return decode
