"""Where a resident's photos go: a ``MediaStore`` turns attachment bytes into a URL.

Kafka carries the URL, not the bytes (a 6 MB photo has no place on the bus). The default store
writes content-addressed files under ``data_dir/media/`` and the email channel serves them at
``/channels/email/media/<name>``; a city with object storage plugs in its own store
(``media.store: package.module:factory``).

Only real images are kept: the type is sniffed from the bytes, never taken from the sender's
label, so an HTML page called ``photo.png`` cannot be served back from the city's domain.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from schemas.contact import Media

# SVG is an image/* type that can carry scripts: not accepted.
_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/heic": "heic",
    "image/heif": "heif",
    "image/bmp": "bmp",
    "image/tiff": "tiff",
}
_TYPES = {ext: ctype for ctype, ext in _EXTENSIONS.items()}
NAME = re.compile(r"^[0-9a-f]{40}\.(jpg|png|gif|webp|heic|heif|bmp|tiff)$")


def sniff_image(data: bytes) -> str | None:
    """The image type the bytes really are (magic numbers), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis"):
            return "image/heic"
        if brand in (b"mif1", b"msf1"):
            return "image/heif"
    if data.startswith(b"BM") and len(data) > 26:
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


@dataclass(frozen=True)
class StoredMedia:
    """A stored image the channel can serve itself."""

    path: Path
    content_type: str


@runtime_checkable
class MediaStore(Protocol):
    """Keeps image attachments and says where they can be fetched."""

    async def put(self, data: bytes, content_type: str) -> Media | None:
        """Store an image; None if refused (not an image, too large). Raise OSError to retry."""
        ...

    async def get(self, name: str) -> StoredMedia | None:
        """A stored item this process serves, or None (stores with their own URLs return None)."""
        ...


class FileMediaStore:
    """Content-addressed files (``sha256[:40].ext``): the same photo twice is one file, and a
    retried message rewrites identical bytes, so no cleanup races with retries."""

    def __init__(self, directory: Path, base_url: str, *, max_bytes: int) -> None:
        self.directory = directory
        self.base_url = base_url.rstrip("/")
        self.max_bytes = max_bytes

    async def put(self, data: bytes, content_type: str) -> Media | None:
        if not content_type.lower().startswith("image/") or len(data) > self.max_bytes:
            return None
        actual = sniff_image(data)
        if actual is None:
            return None
        name = await asyncio.to_thread(self._write, data, _EXTENSIONS[actual])
        return Media(url=f"{self.base_url}/{name}", content_type=actual)

    def _write(self, data: bytes, extension: str) -> str:
        """Store ``data`` under its hash (off the loop: a photo is megabytes); its file name."""
        name = f"{hashlib.sha256(data).hexdigest()[:40]}.{extension}"
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / name
        if target.exists() and target.stat().st_size == len(data):
            return name
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return name

    async def get(self, name: str) -> StoredMedia | None:
        if not NAME.match(name):
            return None
        path = self.directory / name
        if not path.is_file():
            return None
        return StoredMedia(path, _TYPES[name.rpartition(".")[2]])
