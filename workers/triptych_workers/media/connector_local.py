"""``data:`` and ``file:`` sources of the media connector: no network, but just as hostile.

``data:`` URLs must be base64, well-formed and within the byte cap *before* decoding (the length of the
base64 text bounds the decoded size). ``file:`` URLs are read only inside one configured directory: the
path is resolved with symlinks, must stay inside, and the file that is opened (without following a final
symlink, without blocking on a FIFO) must be a regular file that is still inside the jail.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

from triptych_workers.media.errors import (
    InvalidMediaURL,
    MediaFetchError,
    MediaTooLarge,
    MediaURLRefused,
    UnsupportedMediaFormat,
)

_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")


def media_type_fits(content_type: str, modality: str) -> bool:
    """Whether a declared media type can hold ``modality``. Headers are advisory — the decoders sniff the
    bytes — but a declared ``text/html`` for an image is an error page, not an image. ``octet-stream`` is
    what many stores send for everything, so it passes."""
    if content_type in ("", "application/octet-stream", "binary/octet-stream"):
        return True
    major = content_type.split("/", 1)[0]
    if modality == "image":
        return major == "image"
    if modality == "video":
        return major == "video" or content_type in ("application/mp4", "application/x-matroska")
    if modality == "audio":
        # An audio track may be taken from a video container (mp4, webm), so video/* is acceptable too.
        return major in ("audio", "video") or content_type in ("application/ogg", "application/mp4")
    return False


def parse_data_url(url: str, *, modality: str, max_bytes: int) -> tuple[bytes, str]:
    """Decode ``data:<type>[;param]*;base64,<payload>``; returns ``(bytes, media type)``."""
    if not url[:5].lower() == "data:":
        raise InvalidMediaURL("not a data: URL", param="url")
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise InvalidMediaURL("data: URL has no comma separating header and payload", param="url")
    params = [p.strip() for p in header.split(";")]
    media_type = params[0].lower()
    if "base64" not in (p.lower() for p in params[1:]):
        raise InvalidMediaURL("data: URL must be base64-encoded (';base64,')", param="url")
    if media_type and not _MIME.match(media_type):
        raise InvalidMediaURL(f"data: URL has a malformed media type {params[0]!r}", param="url")
    if not media_type_fits(media_type, modality):
        raise UnsupportedMediaFormat(f"data: URL declares {media_type!r}, not {modality}", param="url")
    # 4 base64 characters carry 3 bytes: refuse on the text's length, before allocating the decoded bytes.
    if (len(payload) // 4) * 3 > max_bytes + 3:
        raise MediaTooLarge(f"data: URL payload exceeds {max_bytes} bytes", param="url")
    if (
        len(payload) % 4
    ):  # b64decode tolerates some malformed padding ("QUJD="); a well-formed payload does not
        raise InvalidMediaURL("data: URL payload is not valid base64 (length)", param="url")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMediaURL(f"data: URL payload is not valid base64: {exc}", param="url") from exc
    if len(data) > max_bytes:
        raise MediaTooLarge(f"data: URL payload exceeds {max_bytes} bytes", param="url")
    if not data:
        raise InvalidMediaURL("data: URL payload is empty", param="url")
    return data, media_type


def file_url_path(url: str) -> Path:
    """The absolute local path of a ``file:`` URL; only the empty host and ``localhost`` are local."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidMediaURL(f"cannot parse file: URL: {exc}", param="url") from exc
    if parts.scheme.lower() != "file":
        raise InvalidMediaURL("not a file: URL", param="url")
    if parts.netloc not in ("", "localhost"):
        raise MediaURLRefused(f"file: URL names a remote host {parts.netloc!r}", param="url")
    if parts.query or parts.fragment:
        raise InvalidMediaURL("file: URL must not carry a query or fragment", param="url")
    try:
        path = unquote(parts.path, errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidMediaURL("file: URL path is not UTF-8", param="url") from exc
    if "\x00" in path:
        raise InvalidMediaURL("file: URL path contains a NUL byte", param="url")
    if not path.startswith("/"):
        raise InvalidMediaURL("file: URL path must be absolute", param="url")
    return Path(path)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def read_jailed_file(url: str, *, jail: str, max_bytes: int) -> bytes:
    """Read a ``file:`` URL inside ``jail`` (blocking: call it in a worker thread).

    An empty ``jail`` refuses every local file. The check is made on the resolved path (``..`` and symlinks
    followed) and again on the path of the descriptor actually opened, which closes the window in which a
    directory inside the jail could be swapped for a symlink between the check and the open.
    """
    if not jail:
        raise MediaURLRefused("local media files are disabled (allowedLocalMediaPath is empty)", param="url")
    path = file_url_path(url)
    try:
        root = os.path.realpath(jail, strict=True)
        resolved = os.path.realpath(path, strict=False)
    except (OSError, ValueError) as exc:
        raise MediaURLRefused(f"cannot resolve local media path: {exc}", param="url") from exc
    if not _inside(resolved, root):
        raise MediaURLRefused("local media path is outside the allowed directory", param="url")
    fd = _open_regular_file(resolved, root)
    try:
        if os.fstat(fd).st_size > max_bytes:
            raise MediaTooLarge(f"local media file exceeds {max_bytes} bytes", param="url")
        chunks: list[bytes] = []
        total = 0
        while True:  # the size can change under us: bound the read itself, not just the stat
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise MediaTooLarge(f"local media file exceeds {max_bytes} bytes", param="url")
        return b"".join(chunks)
    except OSError as exc:
        raise MediaFetchError(f"cannot read local media file: {exc.strerror}", param="url") from exc
    finally:
        os.close(fd)


def _open_regular_file(resolved: str, root: str) -> int:
    """Open without following a final symlink and without blocking on a FIFO; the result must be a regular
    file whose real path (as the kernel sees the open descriptor) is still inside ``root``."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(resolved, flags)
    except FileNotFoundError as exc:
        raise MediaFetchError("local media file does not exist", param="url") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # realpath could not resolve it (a loop), and O_NOFOLLOW hit the link
            raise MediaURLRefused("local media path is an unresolvable symbolic link", param="url") from exc
        raise MediaFetchError(f"cannot open local media file: {exc.strerror}", param="url") from exc
    try:
        problem = _opened_file_problem(fd, root)
    except OSError as exc:
        os.close(fd)
        raise MediaFetchError(f"cannot inspect local media file: {exc.strerror}", param="url") from exc
    if problem is not None:
        os.close(fd)
        raise MediaURLRefused(problem, param="url")
    return fd


def _opened_file_problem(fd: int, root: str) -> str | None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return "local media path is not a regular file"
    proc_link = f"/proc/self/fd/{fd}"
    if os.path.exists(proc_link) and not _inside(os.readlink(proc_link), root):
        return "local media path is outside the allowed directory"
    return None
