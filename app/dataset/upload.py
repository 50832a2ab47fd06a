"""Receive a multipart upload by streaming its file part to disk: counted, capped and hashed."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.core.config import Settings
from app.core.errors import (
    BadRequest,
    InsufficientStorage,
    InvalidInput,
    PayloadTooLarge,
    ServiceError,
)

FILE_FIELD = "file"
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 20
# Free disk space is checked before the body is read and again after every this many bytes.
DISK_CHECK_BYTES = 8 * 1024 * 1024
# Room for the boundaries, part headers and small fields around the file in the request body.
FORM_OVERHEAD_BYTES = 1024 * 1024


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding `path` (one function, so tests can stand in for it)."""
    return shutil.disk_usage(path).free


def check_free_disk(settings: Settings, *, incoming: int) -> None:
    """InsufficientStorage unless `incoming` more bytes leave the free-disk reserve untouched."""
    reserve = settings.min_free_disk_bytes
    if free_disk_bytes(staging_dir(settings)) - incoming < reserve:
        raise InsufficientStorage(
            f"not enough free disk space for this upload: the server keeps {reserve} bytes free "
            f"and the upload would take it below that; try again later or send a smaller file",
            field=FILE_FIELD,
            reserve=reserve,
            incoming=incoming,
        )


def staging_dir(settings: Settings) -> Path:
    """Where uploads and half-written datasets live until they are published or removed."""
    path = settings.data_dir / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ReceivedUpload:
    """The file part, written to a temp file with a random name, and the text fields."""

    path: Path
    # The client's name for the file: a label and a format hint, never a path we open.
    filename: str | None
    size_bytes: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        """Remove the temp file unless it was moved into a dataset."""
        self.path.unlink(missing_ok=True)


class _Receiver:
    """python-multipart callbacks: the file part goes to disk, other parts to small buffers."""

    def __init__(self, settings: Settings, tmp: IO[bytes]) -> None:
        self.limit = settings.max_upload_bytes
        self.tmp = tmp
        self.digest = hashlib.sha256()
        self.size = 0
        self.filename: str | None = None
        self.saw_file = False
        self.finished = False
        self.fields: dict[str, str] = {}
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._in_file = False
        self._buffer = bytearray()

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._buffer.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise BadRequest("a multipart part has no name in its Content-Disposition header")
        self._name = options[b"name"].decode("utf-8", errors="replace")
        self._in_file = self._name == FILE_FIELD
        if self._in_file:
            if self.saw_file:
                raise BadRequest("send exactly one file, in the 'file' field", field=FILE_FIELD)
            self.saw_file = True
            raw = options.get(b"filename")
            self.filename = raw.decode("utf-8", errors="replace") if raw is not None else None
        elif b"filename" in options:
            raise InvalidInput(
                f"unexpected file in field '{self._name}'; send the file as 'file'",
                field=self._name,
            )
        elif len(self.fields) >= MAX_FIELDS:
            raise BadRequest(f"too many form fields (at most {MAX_FIELDS})")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._in_file:
            if len(self._buffer) + len(chunk) > MAX_FIELD_BYTES:
                raise PayloadTooLarge(
                    f"form field '{self._name}' is larger than {MAX_FIELD_BYTES} bytes",
                    field=self._name,
                )
            self._buffer.extend(chunk)
            return
        self.size += len(chunk)
        if self.size > self.limit:
            raise PayloadTooLarge(
                f"the file is larger than the upload limit of {self.limit} bytes",
                field=FILE_FIELD,
                limit=self.limit,
            )
        self.digest.update(chunk)
        # Chunks are small (tens of KiB) and land in the page cache: cheap enough on the loop.
        self.tmp.write(chunk)

    def on_part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            return
        try:
            self.fields[self._name] = self._buffer.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(
                f"form field '{self._name}' is not valid UTF-8", field=self._name
            ) from None

    def on_end(self) -> None:
        self.finished = True


def _declared_length(request: Request) -> int | None:
    length = request.headers.get("content-length", "")
    return int(length) if length.isdigit() else None


def _boundary(request: Request, settings: Settings) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise UnsupportedMediaType(
            "send the upload as multipart/form-data with the file in a 'file' field",
            content_type=content_type.decode("latin-1"),
        )
    if b"boundary" not in params:
        raise BadRequest("the multipart/form-data Content-Type has no boundary")
    length = _declared_length(request)
    if length is not None and length > settings.max_upload_bytes + FORM_OVERHEAD_BYTES:
        raise PayloadTooLarge(
            f"the request body ({length} bytes) is larger than the upload limit of "
            f"{settings.max_upload_bytes} bytes",
            field=FILE_FIELD,
            limit=settings.max_upload_bytes,
        )
    return params[b"boundary"]


async def receive_upload(request: Request, *, settings: Settings) -> ReceivedUpload:
    """Stream the request's multipart body; the file part goes to a temp file under data_dir."""
    boundary = _boundary(request, settings)
    declared = _declared_length(request)
    check_free_disk(settings, incoming=declared or 0)
    fd, name = tempfile.mkstemp(dir=staging_dir(settings), prefix="upload-", suffix=".part")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as tmp:
            receiver = _Receiver(settings, tmp)
            parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": receiver.on_part_begin,
                    "on_part_data": receiver.on_part_data,
                    "on_part_end": receiver.on_part_end,
                    "on_header_field": receiver.on_header_field,
                    "on_header_value": receiver.on_header_value,
                    "on_header_end": receiver.on_header_end,
                    "on_headers_finished": receiver.on_headers_finished,
                    "on_end": receiver.on_end,
                },
            )
            await _feed(request, parser, settings, declared=declared)
        if not receiver.finished:
            raise BadRequest("the multipart body ended early (no closing boundary)")
        if not receiver.saw_file:
            raise InvalidInput("field 'file' is required: attach the data file", field=FILE_FIELD)
    except MultipartParseError as exc:
        path.unlink(missing_ok=True)
        raise BadRequest(f"malformed multipart body: {exc}") from None
    except ClientDisconnect:
        path.unlink(missing_ok=True)
        raise BadRequest("the client disconnected during the upload") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return ReceivedUpload(
        path=path,
        filename=receiver.filename,
        size_bytes=receiver.size,
        sha256=receiver.digest.hexdigest(),
        fields=receiver.fields,
    )


async def _feed(
    request: Request, parser: MultipartParser, settings: Settings, *, declared: int | None
) -> None:
    """Parse the body as it arrives; cap its total size and keep watching the free disk."""
    # The file part is capped by the receiver; this also caps what surrounds it (part headers,
    # preamble) when no Content-Length was declared.
    limit = settings.max_upload_bytes + FORM_OVERHEAD_BYTES
    received = checked = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(
                f"the request body is larger than the upload limit of "
                f"{settings.max_upload_bytes} bytes",
                field=FILE_FIELD,
                limit=settings.max_upload_bytes,
            )
        if received - checked >= DISK_CHECK_BYTES:
            # What was received is on disk already; what was announced and not yet sent is not.
            check_free_disk(settings, incoming=max((declared or 0) - received, 0))
            checked = received
        parser.write(chunk)
    parser.finalize()
