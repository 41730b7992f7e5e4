"""kie's three upload endpoints (CONTRACT §7): stream (multipart), base64 and URL.

Answers use the upload API's own envelope, ``{"success", "code", "msg", "data"}``, with kie's
messages. An upload is stored at ``uploads/<segment>/<uploadPath>/<fileName>``: the segment is
secret and fixed per API key, so the same ``uploadPath`` and ``fileName`` overwrite the earlier
file (kie's rule) and nobody can guess another key's URLs.

Any file is accepted, as kie's uploads accept any (real kie.ai stores a ``test.txt``, and a PNG
Pillow cannot decode): whether a file is a usable image is decided when a task uses it as an
input (the worker's decoding names the input's index). ``mimeType`` is sniffed from the bytes,
never taken from the name or a declared type (``seedbed.sniff``), and ``/files/`` serves what
could run in a browser (HTML, SVG, ...) only as an ``application/octet-stream`` attachment.
Folder and file names follow kie too: anything but what is unsafe on a file system
(``storage.local.segment_problem``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from seedbed import errors, netguard
from seedbed.api import auth, envelope
from seedbed.api.body import parse_json_object, read_body
from seedbed.api.context import Context, context
from seedbed.api.openapi import SECURED, answers
from seedbed.api.routing import LeanRoute
from seedbed.api.schemas import UploadAnswer
from seedbed.links import UPLOADS, Links, file_path
from seedbed.outbox import FileKind, StoredFile
from seedbed.sniff import Sniffed, sniff
from seedbed.storage.base import StorageConflict, StoredFileNotFound
from seedbed.storage.local import segment_problem
from seedbed.tasks import ApiKey

__all__ = ["MAX_UPLOAD_PATH_BYTES", "router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["uploads"], route_class=LeanRoute)

#: the longest ``uploadPath``, in bytes of UTF-8 (each folder: at most 255)
MAX_UPLOAD_PATH_BYTES = 512
_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[\w.-]+)*;base64,", re.I)
#: multipart framing and the small fields around the file
_FORM_OVERHEAD = 64 * 1024


class UploadError(errors.SeedbedError):
    """An upload refused with the upload API's 400."""

    code = 400


def _answer(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _failure(exc: errors.SeedbedError) -> Response:
    # kie's upload host answers its own words for a bad key
    msg = "Authentication failed: Invalid API Key" if exc.code == 401 else exc.msg
    status = exc.code if exc.code in (413, 429, 500) else 200
    body = orjson.dumps({"success": False, "code": exc.code, "msg": msg})
    return envelope.Coded(body, status, exc.code)  # the metrics count it under its kie code


async def _guarded(request: Request, body: Any) -> Response:
    """Run an upload handler, answering every refusal in the upload envelope."""
    try:
        result: Response = await body
    except errors.SeedbedError as exc:
        return _failure(exc)
    except Exception:
        log.exception("upload failed on %s", request.url.path)
        return _answer({"success": False, "code": 500, "msg": "Internal server error"}, 500)
    return result


def _json_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": properties}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_PATH_FIELDS: dict[str, Any] = {
    "uploadPath": {"type": "string", "description": "folders, e.g. images/user-1"},
    "fileName": {"type": "string", "description": "optional; the same name overwrites"},
}
_STREAM_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "uploadPath"],
                    "properties": {"file": {"type": "string", "format": "binary"}, **_PATH_FIELDS},
                }
            }
        },
    }
}
_BASE64_BODY = _json_body(
    {"base64Data": {"type": "string", "description": "base64 or a data: URL"}, **_PATH_FIELDS},
    ["base64Data", "uploadPath"],
)
_URL_BODY = _json_body(
    {"fileUrl": {"type": "string", "format": "uri"}, **_PATH_FIELDS}, ["fileUrl", "uploadPath"]
)


_ANSWERS = answers(UploadAnswer, 413, error=UploadAnswer)


@router.post(
    "/api/file-stream-upload", responses=_ANSWERS, openapi_extra={**SECURED, **_STREAM_BODY}
)
async def file_stream_upload(request: Request) -> Response:
    """Upload a file as ``multipart/form-data``: ``file``, ``uploadPath``, ``fileName``?"""
    return await _guarded(request, _stream(request))


@router.post(
    "/api/file-base64-upload", responses=_ANSWERS, openapi_extra={**SECURED, **_BASE64_BODY}
)
async def file_base64_upload(request: Request) -> Response:
    """Upload base64 (plain or a ``data:`` URL): ``base64Data``, ``uploadPath``, ``fileName``?"""
    return await _guarded(request, _base64(request))


@router.post("/api/file-url-upload", responses=_ANSWERS, openapi_extra={**SECURED, **_URL_BODY})
async def file_url_upload(request: Request) -> Response:
    """Upload the file at ``fileUrl`` (fetched by the server): ``uploadPath``, ``fileName``?"""
    return await _guarded(request, _from_url(request))


async def _stream(request: Request) -> Response:
    ctx = context(request)
    key = await auth.authenticate(request, ctx)
    limit = ctx.settings.upload_max_bytes
    raw = await read_body(request, limit + _FORM_OVERHEAD)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except Exception as exc:  # python-multipart's and Starlette's parse errors
        raise UploadError(f"Invalid multipart body: {_first_line(exc)}") from exc
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise UploadError("Missing required parameter: file")
        upload_path = _text_field(form.get("uploadPath"), "uploadPath")
        file_name = _text_field(form.get("fileName"), "fileName", required=False)
        data = await upload.read()
    finally:
        await form.close()
    return await _store(ctx, request, key, data, upload_path, file_name)


async def _base64(request: Request) -> Response:
    ctx = context(request)
    key = await auth.authenticate(request, ctx)
    # base64 is 4/3 of the file, plus the JSON around it
    raw = await read_body(request, ctx.settings.upload_max_bytes * 4 // 3 + _FORM_OVERHEAD)
    body = _json(raw)
    encoded = body.get("base64Data")
    if encoded is None or encoded == "":
        raise UploadError("Missing required parameter: base64Data")
    if not isinstance(encoded, str):
        raise UploadError("base64Data: must be a string")
    upload_path = _text_field(body.get("uploadPath"), "uploadPath")
    file_name = _text_field(body.get("fileName"), "fileName", required=False)
    data = _decode_base64(encoded)
    _check_size(len(data), ctx.settings.upload_max_bytes)
    return await _store(ctx, request, key, data, upload_path, file_name)


async def _from_url(request: Request) -> Response:
    ctx = context(request)
    key = await auth.authenticate(request, ctx)
    body = _json(await read_body(request, ctx.settings.max_body_bytes))
    file_url_value = body.get("fileUrl")
    if file_url_value is None or file_url_value == "":
        raise UploadError("Missing required parameter: fileUrl")
    if not isinstance(file_url_value, str):
        raise UploadError("fileUrl: must be a string")
    upload_path = _text_field(body.get("uploadPath"), "uploadPath")
    file_name = _text_field(body.get("fileName"), "fileName", required=False)
    _clean_path(upload_path)  # refuse a bad path before fetching anything
    own = Links.parse(file_url_value)
    if own is not None:
        # one of this server's results or uploads: copied from storage, as task inputs are
        record = await ctx.store.get_file(own.key)
        if record is None or record.deleted_at is not None:
            raise UploadError("fileUrl: no such file on this server (HTTP 404)")
        try:
            content = await ctx.storage.read(own.key)
        except StoredFileNotFound as exc:
            raise UploadError("fileUrl: no such file on this server (HTTP 404)") from exc
        return await _store(ctx, request, key, content, upload_path, file_name)
    try:
        fetched = await netguard.fetch(
            file_url_value,
            policy=ctx.net_policy,
            max_bytes=ctx.settings.upload_max_bytes,
            timeout=ctx.settings.upload_fetch_timeout,
            resolver=ctx.resolver,
        )
    except netguard.NetguardError as exc:
        raise UploadError(f"fileUrl: {exc.reason}") from exc
    return await _store(ctx, request, key, fetched.content, upload_path, file_name)


async def _store(
    ctx: Context,
    request: Request,
    key: ApiKey,
    data: bytes,
    upload_path: str,
    file_name: str | None,
) -> Response:
    _check_size(len(data), ctx.settings.upload_max_bytes)
    folder = _clean_path(upload_path)
    if not data:
        raise UploadError("file: the file is empty")
    # the first bytes only, no decoding: cheaper than a thread hop, so it runs here
    found = sniff(data)
    name = _file_name(file_name, found)
    storage_key = f"{UPLOADS}{ctx.links.upload_segment(key.id)}/{folder}/{name}"
    try:
        await ctx.storage.put(storage_key, data, found.mime)
    except StorageConflict as exc:
        raise UploadError(
            f"uploadPath, fileName: {folder}/{name} clashes with an earlier upload "
            "(a file where a folder is needed, or a folder where the file would go)"
        ) from exc
    record = await ctx.store.record_file(
        StoredFile(
            key=storage_key,
            kind=FileKind.UPLOAD,
            key_id=key.id,
            size=len(data),
            content_type=found.mime,
        )
    )
    uploaded_at = datetime.fromtimestamp(record.created_at / 1000, tz=UTC)
    return _answer(
        {
            "success": True,
            "code": 200,
            "msg": "File uploaded successfully",
            "data": {
                "success": True,
                "fileName": name,
                "filePath": storage_key,
                "downloadUrl": ctx.base_url(request) + file_path(storage_key),
                "fileSize": len(data),
                "mimeType": found.mime,
                "uploadedAt": uploaded_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            },
        }
    )


# -- the fields ----------------------------------------------------------------------------------
def _json(raw: bytes) -> dict[str, Any]:
    try:
        return parse_json_object(raw)
    except errors.ValidationFailed as exc:
        raise UploadError(exc.msg) from exc


def _text_field(value: Any, name: str, *, required: bool = True) -> str:
    if value is None or value == "":
        if required:
            raise UploadError(f"Missing required parameter: {name}")
        return ""
    if not isinstance(value, str):
        raise UploadError(f"{name}: must be a string")
    return value


def _clean_path(upload_path: str) -> str:
    """``uploadPath`` as stored: folders separated by ``/``.

    kie accepts more than letters and digits (it made ``uploads/1775638903039_cat1.jpg`` a
    folder), so only what is unsafe is refused: a leading ``/`` (an absolute path), empty
    folders (``a//b``, a trailing ``/``), ``.`` and ``..``, backslashes, control characters,
    folders over 255 bytes and paths over :data:`MAX_UPLOAD_PATH_BYTES`.
    """
    if upload_path.startswith("/"):
        raise UploadError(
            "uploadPath: must not start with '/': it names folders inside your uploads "
            "(e.g. images/user-1)"
        )
    if len(upload_path.encode(errors="surrogatepass")) > MAX_UPLOAD_PATH_BYTES:
        raise UploadError(f"uploadPath: at most {MAX_UPLOAD_PATH_BYTES} bytes long")
    for folder in upload_path.split("/"):
        problem = segment_problem(folder)
        if problem is not None:
            raise UploadError(f"uploadPath: folder {folder[:64]!r} {problem}")
    return upload_path


def _file_name(given: str | None, found: Sniffed) -> str:
    """The stored name: the given one as it is (any extension: the type is the content's), a
    name without an extension gets the content's, and no name at all kie's automatic
    ``<epochMs>-<base36>.<ext>``."""
    if not given:
        return f"{int(time.time() * 1000)}-{_base36(secrets.randbits(56))}.{found.extension}"
    if "/" in given:
        raise UploadError("fileName: may not contain '/' (folders go in uploadPath)")
    stem, dot, _ = given.rpartition(".")
    name = given if dot and stem else f"{given}.{found.extension}"
    problem = segment_problem(name)
    if problem is not None:
        raise UploadError(f"fileName: {name[:64]!r} {problem}")
    return name


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
    return out or "0"


def _decode_base64(encoded: str) -> bytes:
    text = encoded.strip()
    prefix = _DATA_URL.match(text)
    if prefix is not None:
        text = text[prefix.end() :]
    elif text.lower().startswith("data:"):
        raise UploadError("Base64 decoding failed: Invalid Base64 format")
    text = "".join(text.split())  # line breaks of MIME-style base64
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UploadError("Base64 decoding failed: Invalid Base64 format") from exc


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise errors.BodyTooLarge(f"File too large: {size:,} bytes; the limit is {limit:,} bytes")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
