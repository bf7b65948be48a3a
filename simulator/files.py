"""The Files API, enough for fine-tuning: uploads are kept in memory for the server's life.

POST /v1/files        multipart form: `purpose` and `file`; a `fine-tune` file is checked
                      line by line (a JSON object with a non-empty `messages` list) and
                      refused with a 400 naming every bad line, as OpenAI refuses a file
                      it cannot train on
GET  /v1/files        every file, newest first
GET  /v1/files/{id}   the file object
GET  /v1/files/{id}/content   the file's bytes (batch input, output and error files)
"""

import itertools
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simulator.responses import error_reply, json_reply

# what OpenAI accepts on upload
PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
FINE_TUNE = "fine-tune"
MAX_REPORTED_LINES = 10


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int
    examples: int  # JSONL lines, for fine-tune files; 0 otherwise

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class FileStore:
    """Uploaded files by id. Handlers run on one event loop, but the lock keeps the store
    safe for a test thread that inspects it too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, StoredFile] = {}
        self._ids = itertools.count(1)

    def add(self, filename: str, purpose: str, content: bytes, examples: int) -> StoredFile:
        with self._lock:
            file_id = f"file-sim{next(self._ids):06d}"
            stored = StoredFile(file_id, filename, purpose, content, int(time.time()), examples)
            self._files[file_id] = stored
            return stored

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(file_id)

    def newest_first(self) -> list[StoredFile]:
        with self._lock:
            return list(reversed(self._files.values()))


FILES = web.AppKey("simulator_files", FileStore)


class UploadError(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def register(app: web.Application) -> None:
    app[FILES] = FileStore()
    app.router.add_post("/v1/files", create_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", retrieve_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)


async def create_file(request: web.Request) -> web.Response:
    try:
        filename, purpose, content = await _read_upload(request)
        examples = count_fine_tune_examples(content) if purpose == FINE_TUNE else 0
    except UploadError as exc:
        return error_reply(400, exc.message, param=exc.param)
    stored = request.app[FILES].add(filename, purpose, content, examples)
    return json_reply(stored.to_dict())


async def list_files(request: web.Request) -> web.Response:
    files = [stored.to_dict() for stored in request.app[FILES].newest_first()]
    return json_reply({"object": "list", "data": files, "has_more": False})


async def retrieve_file(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    stored = request.app[FILES].get(file_id)
    if stored is None:
        return error_reply(404, f"No such File object: {file_id}", param="id")
    return json_reply(stored.to_dict())


async def file_content(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    stored = request.app[FILES].get(file_id)
    if stored is None:
        return error_reply(404, f"No such File object: {file_id}", param="id")
    return web.Response(body=stored.content, content_type="application/octet-stream")


async def _read_upload(request: web.Request) -> tuple[str, str, bytes]:
    if not request.content_type.startswith("multipart/"):
        raise UploadError("Uploads must be sent as multipart/form-data.")
    form = await request.post()
    purpose = form.get("purpose")
    if not isinstance(purpose, str) or purpose not in PURPOSES:
        expected = ", ".join(sorted(PURPOSES))
        raise UploadError(f"'purpose' is {purpose!r}; expected one of: {expected}.", "purpose")
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise UploadError("'file' is missing or is not a file upload.", "file")
    return upload.filename or "upload", purpose, upload.file.read()


def count_fine_tune_examples(content: bytes) -> int:
    """The number of examples; UploadError naming the bad lines when any line is not a JSON
    object with a non-empty `messages` list (the shape of chat fine-tuning data)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise UploadError("Invalid file format for Fine-Tuning API: not UTF-8 text.") from None
    problems: list[str] = []
    examples = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        examples += 1
        problem = _example_problem(line)
        if problem:
            problems.append(f"line {number}: {problem}")
    if problems:
        raise UploadError(_format_problems(problems), "file")
    if examples == 0:
        raise UploadError("Invalid file format for Fine-Tuning API: the file is empty.", "file")
    return examples


def _example_problem(line: str) -> str | None:
    try:
        example = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg})"
    if not isinstance(example, dict):
        return "not a JSON object"
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return "needs a non-empty 'messages' list"
    return None


def _format_problems(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_REPORTED_LINES])
    more = len(problems) - MAX_REPORTED_LINES
    tail = f"; and {more} more" if more > 0 else ""
    return f"Invalid file format for Fine-Tuning API: {shown}{tail}."
