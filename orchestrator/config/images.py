"""Container image references (`container.image` in a fleet, `trainer.image` in a study), checked where they
are read: an image is one argv element of `docker|podman run`, so it can never run a shell, but a value such as
`img; rm -rf x` would make every trial fail at launch and spend the study's budget.

The grammar is the one docker and podman accept: `[HOST[:PORT]/]PATH[:TAG][@DIGEST]`, lower-case path
components separated by `.`, `_`, `__` or dashes, or a bare image ID (64 hex digits, optionally `sha256:`).
"""

from __future__ import annotations

import re

_HOST_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[0-9A-Fa-f:]+\])(?::[0-9]{{1,5}})?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"
IMAGE_PATTERN = re.compile(rf"^(?:{_HOST}/)?{_PATH_PART}(?:/{_PATH_PART})*(?::{_TAG})?(?:@{_DIGEST})?$")
IMAGE_ID_PATTERN = re.compile(r"^(?:sha256:)?[0-9a-f]{64}$")
MAX_IMAGE_CHARS = 255
IMAGE_FIX = "write an image reference such as nvcr.io/nvidia/pytorch:25.01-py3 or localhost/name:tag"


def image_reference_problem(image: str) -> str | None:
    """What is wrong with `image` as a container image reference; None when it is one."""
    if not isinstance(image, str) or not image:
        return "the image is empty"
    if len(image) > MAX_IMAGE_CHARS:
        return f"image reference is {len(image)} characters, more than {MAX_IMAGE_CHARS}"
    if IMAGE_ID_PATTERN.match(image) or IMAGE_PATTERN.match(image):
        return None
    odd = sorted({c for c in image if not (c.isalnum() or c in "._-/:@[]")})
    if odd:
        return f"image {image!r} is not an image reference: it contains {' '.join(repr(c) for c in odd)}"
    return f"image {image!r} is not an image reference"


__all__ = ["IMAGE_FIX", "IMAGE_PATTERN", "image_reference_problem"]
