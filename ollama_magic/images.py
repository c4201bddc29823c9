"""Images for `--image`: bytes, PIL images and matplotlib figures as base64.

PIL and matplotlib are optional: they are only touched when such an object is
given (checked by class module name, so neither is imported otherwise).
"""

from __future__ import annotations

import base64
import io
from typing import Any

__all__ = ["to_base64"]

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"RIFF", "WEBP"),
)


def image_kind(data: bytes) -> str | None:
    """The image format of `data` by its magic bytes, or None."""
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            if kind == "WEBP" and data[8:12] != b"WEBP":
                continue
            return kind
    return None


def to_base64(value: Any) -> str:
    """Base64 of an image given as bytes, a PIL image or a matplotlib figure.

    Raises TypeError/ValueError with a one-line reason for anything else.
    """
    data: bytes
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        module = type(value).__module__ or ""
        if module.startswith("PIL."):
            buf = io.BytesIO()
            value.save(buf, format="PNG")
            data = buf.getvalue()
        elif module.startswith("matplotlib.") and hasattr(value, "savefig"):
            buf = io.BytesIO()
            value.savefig(buf, format="png", bbox_inches="tight")
            data = buf.getvalue()
        else:
            raise TypeError(
                f"expected image bytes, a PIL image or a matplotlib figure, got {type(value).__name__}"
            )
    if not data:
        raise ValueError("the image is empty")
    if image_kind(data) is None:
        raise ValueError("not a PNG, JPEG, GIF or WebP image")
    return base64.b64encode(data).decode("ascii")
