"""Which images a published model learned from: kept with each registry version so that a later gate
compares champion and challenger only on images neither of them trained or validated on.

One line per image of the model's training and validation splits: the first 16 hex digits (64 bits) of
its content's sha256, sorted, gzipped (about 9 bytes an image). Two different images share a prefix with
odds of about n^2 / 2^65 (under 1e-8 for a million images); a clash can only leave an image out of a
comparison, never let a seen one in.
"""
from __future__ import annotations

import gzip

from imgclf.components.lib import registry

SEEN_IMAGES = "assets.extra/seen_images.txt.gz"
PREFIX = 16


def key(sha256: str) -> str:
    return sha256[:PREFIX]


def encode(hashes: set[str]) -> bytes:
    return gzip.compress("".join(f"{h}\n" for h in sorted({key(h) for h in hashes})).encode("ascii"), mtime=0)


def decode(data: bytes) -> set[str]:
    return set(gzip.decompress(data).decode("ascii").split())


def of_version(registry_uri: str, model_name: str, version: int) -> set[str] | None:
    """The version's seen images (hash prefixes); None for a version published before they were recorded."""
    try:
        return decode(registry.read_version_file(registry_uri, model_name, version, SEEN_IMAGES))
    except FileNotFoundError:
        return None
