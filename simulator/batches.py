"""The Batch API, simulated in memory (after `simulator.files`, whose uploads it reads).

POST /v1/batches                  create: input_file_id (purpose batch), endpoint
                                  /v1/chat/completions, completion_window "24h", [metadata]
GET  /v1/batches                  list, newest first (`after`, `limit`)
GET  /v1/batches/{id}             retrieve
POST /v1/batches/{id}/cancel      cancel: cancelling, then cancelled with what was done
GET  /admin/batches               the pace and the faults below
POST /admin/batches               change them (applies to batches read from now on)

A batch moves validating → in_progress → finalizing → completed, one stage every `step_s`
seconds (default 2), or with `step_s` 0 one stage per retrieve, so a test needs no sleeps. A
new `step_s` applies to every batch from its next read on (a test can hold batches still
with a long step, then let them go).
An input file that fails validation (`simulator.batch_lines`) ends the batch `failed` with
`errors`. Every line is answered as /v1/chat/completions would answer its body (the same
deterministic text); a model's `error_rate` makes lines fail (500s in the error file). The
output file lists lines in a shuffled order, as OpenAI's does.

Faults (POST /admin/batches):
  expire_after_fraction  a batch expires once this share of its lines is answered: the
                         output file has those, the error file `batch_expired` for the rest
  duplicate_lines        the output repeats this many of its lines (a provider's double write)
  unknown_lines          the output gains this many lines with custom_ids nobody sent
  unavailable_next       the next N retrieves of a batch get 503 (an outage while polling)
  reject_next            the next N batches created fail validation, whatever their input
"""

import itertools
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from simulator.batch_lines import (
    CHAT_ENDPOINT,
    InputLine,
    InvalidInput,
    answered_line,
    failed_line,
    parse_input,
    to_jsonl,
    unreached_line,
)
from simulator.files import FILES, FileStore, StoredFile
from simulator.responses import STATE, error_reply, json_reply, page_reply, read_json_object
from simulator.state import SimState

STAGES = ("validating", "in_progress", "finalizing", "completed")
ACTIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
BATCH_PURPOSE = "batch"
OUTPUT_PURPOSE = "batch_output"
COMPLETION_WINDOW = "24h"
WINDOW_S = 24 * 3600
DEFAULT_STEP_S = 2.0
REJECTED = {
    "code": "invalid_request",
    "message": "simulated rejection of the input file (reject_next)",
    "param": None,
    "line": 1,
}


@dataclass(slots=True)
class BatchFaults:
    step_s: float = DEFAULT_STEP_S
    expire_after_fraction: float | None = None
    duplicate_lines: int = 0
    unknown_lines: int = 0
    unavailable_next: int = 0
    reject_next: int = 0

    def update(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            if name not in self.__slots__:
                raise ValueError(f"unknown batch setting {name!r}")
            _check_setting(name, value)
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def _check_setting(name: str, value: Any) -> None:
    if name == "expire_after_fraction" and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if name == "expire_after_fraction" and value > 1:
        raise ValueError(f"expire_after_fraction must be in [0, 1], got {value!r}")
    if name in (
        "duplicate_lines",
        "unknown_lines",
        "unavailable_next",
        "reject_next",
    ) and not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")


@dataclass
class SimulatedBatch:
    id: str
    input_file: StoredFile
    endpoint: str
    metadata: dict[str, str] | None
    lines: list[InputLine]
    errors: list[dict[str, Any]] | None  # validation errors: the batch will fail
    created_at: float
    stage: int = 0
    status: str = "validating"
    times: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    expire_after_fraction: float | None = None

    @property
    def done(self) -> bool:
        return self.status not in ACTIVE


class BatchStore:
    def __init__(self, files: FileStore, state: SimState) -> None:
        self._lock = threading.Lock()
        self._batches: dict[str, SimulatedBatch] = {}
        self._ids = itertools.count(1)
        self._files = files
        self._state = state
        self._rng = random.Random(0)
        self.faults = BatchFaults()

    def unavailable(self) -> bool:
        """Consumes one injected outage, if any is left."""
        with self._lock:
            if self.faults.unavailable_next <= 0:
                return False
            self.faults.unavailable_next -= 1
            return True

    def create(self, input_file: StoredFile, endpoint: str, metadata: Any) -> SimulatedBatch:
        try:
            lines, errors = parse_input(input_file.content, endpoint), None
        except InvalidInput as exc:
            lines, errors = [], exc.errors
        with self._lock:
            if self.faults.reject_next > 0:
                self.faults.reject_next -= 1
                lines, errors = [], [REJECTED]
            batch = SimulatedBatch(
                id=f"batch_sim{next(self._ids):06d}",
                input_file=input_file,
                endpoint=endpoint,
                metadata=metadata,
                lines=lines,
                errors=errors,
                created_at=time.time(),
                expire_after_fraction=self.faults.expire_after_fraction,
            )
            self._batches[batch.id] = batch
            return batch

    def get(self, batch_id: str, *, retrieved: bool = False) -> SimulatedBatch | None:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is not None:
                self._advance(batch, retrieved)
            return batch

    def newest_first(self) -> list[SimulatedBatch]:
        with self._lock:
            batches = list(reversed(self._batches.values()))
            for batch in batches:
                self._advance(batch, retrieved=False)
            return batches

    def cancel(self, batch_id: str) -> SimulatedBatch | None:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None or batch.done:
                return batch
            self._advance(batch, retrieved=False)
            if not batch.done and batch.status != "cancelling":
                batch.status = "cancelling"
                batch.times["cancelling_at"] = int(time.time())
            return batch

    # --- the lifecycle (under the lock) ------------------------------------------------

    def _advance(self, batch: SimulatedBatch, retrieved: bool) -> None:
        if batch.status == "cancelling":
            self._finish_cancelled(batch)
            return
        target = _target_stage(batch, self.faults.step_s, time.time(), retrieved)
        while not batch.done and batch.stage < target:
            self._enter(batch, batch.stage + 1)

    def _enter(self, batch: SimulatedBatch, stage: int) -> None:
        now = int(time.time())
        if stage == 1 and batch.errors:
            batch.status = "failed"
            batch.times["failed_at"] = now
            return
        if stage == 2 and batch.expire_after_fraction is not None:
            reached = int(len(batch.lines) * batch.expire_after_fraction)
            self._run(batch, reached, unreached="batch_expired")
            batch.status = "expired"
            batch.times["expired_at"] = now
            return
        batch.stage = stage
        batch.status = STAGES[stage]
        batch.times[f"{STAGES[stage]}_at"] = now
        if stage == 3:
            self._run(batch, len(batch.lines), unreached=None)

    def _finish_cancelled(self, batch: SimulatedBatch) -> None:
        # Lines already run at cancel time are kept; at a per-call pace none had run yet.
        done = _progress(batch, self.faults.step_s, time.time())
        self._run(batch, int(len(batch.lines) * done), unreached=None)
        batch.status = "cancelled"
        batch.times["cancelled_at"] = int(time.time())

    def _run(self, batch: SimulatedBatch, reached: int, *, unreached: str | None) -> None:
        """Answer the first `reached` lines (in a shuffled order) and write the files."""
        order = list(batch.lines)
        self._rng.shuffle(order)
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for line in order[:reached]:
            behaviour = self._state.behaviour_for(line.model)
            if self._state.happens(behaviour.error_rate):
                errors.append(failed_line(line))
            else:
                outputs.append(answered_line(line, behaviour.answers)[0])
        if unreached:
            errors.extend(unreached_line(line.custom_id, unreached) for line in order[reached:])
        batch.completed, batch.failed = len(outputs), len(errors)
        outputs.extend(self._corrupted(outputs))
        batch.output_file_id = self._write(batch, "output", outputs)
        batch.error_file_id = self._write(batch, "error", errors)

    def _corrupted(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        extra = [dict(line) for line in outputs[: self.faults.duplicate_lines]]
        for n in range(self.faults.unknown_lines):
            extra.append({**(outputs[0] if outputs else {}), "custom_id": f"nobody-sent-{n}"})
        return extra

    def _write(self, batch: SimulatedBatch, kind: str, lines: list[dict[str, Any]]) -> str | None:
        if not lines:
            return None
        name = f"{batch.id}_{kind}.jsonl"
        return self._files.add(name, OUTPUT_PURPOSE, to_jsonl(lines), 0).id


def _target_stage(batch: SimulatedBatch, step_s: float, now: float, retrieved: bool) -> int:
    last = len(STAGES) - 1
    if step_s > 0:
        return max(batch.stage, min(last, int((now - batch.created_at) / step_s)))
    return min(last, batch.stage + int(retrieved))


def _progress(batch: SimulatedBatch, step_s: float, now: float) -> float:
    """How far through its lines an in-progress batch is (0..1)."""
    if batch.stage >= 2:
        return 1.0
    if batch.stage < 1 or step_s <= 0:
        return 0.0
    started = batch.created_at + step_s
    return max(0.0, min(1.0, (now - started) / step_s))


BATCHES = web.AppKey("simulator_batches", BatchStore)


def register(app: web.Application) -> None:
    """After `simulator.files.register`: batches read the uploaded files."""
    app[BATCHES] = BatchStore(app[FILES], app[STATE])
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", retrieve_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
    app.router.add_get("/admin/batches", get_faults)
    app.router.add_post("/admin/batches", post_faults)


def provider_down(request: web.Request) -> web.Response | None:
    """The injected outage's reply, for a retrieve."""
    if request.app[BATCHES].unavailable():
        return error_reply(503, "The service is temporarily unavailable (simulated outage).")
    return None


# --- handlers ----------------------------------------------------------------------------


async def create_batch(request: web.Request) -> web.Response:
    try:
        body = await read_json_object(request)
        stored, endpoint, metadata = _create_fields(body, request.app[FILES])
    except ValueError as exc:
        return error_reply(400, str(exc))
    except CreateError as exc:
        return error_reply(400, exc.message, param=exc.param)
    return json_reply(
        batch_body(request.app[BATCHES].create(stored, endpoint, metadata), _pace(request))
    )


async def retrieve_batch(request: web.Request) -> web.Response:
    if (down := provider_down(request)) is not None:
        return down
    batch = request.app[BATCHES].get(request.match_info["batch_id"], retrieved=True)
    if batch is None:
        return _not_found(request.match_info["batch_id"])
    return json_reply(batch_body(batch, _pace(request)))


async def cancel_batch(request: web.Request) -> web.Response:
    batch = request.app[BATCHES].cancel(request.match_info["batch_id"])
    if batch is None:
        return _not_found(request.match_info["batch_id"])
    return json_reply(batch_body(batch, _pace(request)))


async def list_batches(request: web.Request) -> web.Response:
    return page_reply(
        request, [batch_body(b, _pace(request)) for b in request.app[BATCHES].newest_first()]
    )


async def get_faults(request: web.Request) -> web.Response:
    return json_reply(request.app[BATCHES].faults.to_dict())


async def post_faults(request: web.Request) -> web.Response:
    faults = request.app[BATCHES].faults
    try:
        faults.update(await read_json_object(request))
    except ValueError as exc:
        return error_reply(400, str(exc))
    return json_reply(faults.to_dict())


def _pace(request: web.Request) -> float:
    return request.app[BATCHES].faults.step_s


def _not_found(batch_id: str) -> web.Response:
    return error_reply(404, f"No batch found with id '{batch_id}'.", param="batch_id")


class CreateError(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def _create_fields(
    body: dict[str, Any], files: FileStore
) -> tuple[StoredFile, str, dict[str, str] | None]:
    file_id = body.get("input_file_id")
    stored = files.get(file_id) if isinstance(file_id, str) else None
    if stored is None:
        raise CreateError(f"invalid input_file_id: {file_id!r} (no such file)", "input_file_id")
    if stored.purpose != BATCH_PURPOSE:
        raise CreateError(
            f"input file {file_id} has purpose '{stored.purpose}', not '{BATCH_PURPOSE}'",
            "input_file_id",
        )
    endpoint = body.get("endpoint")
    if endpoint != CHAT_ENDPOINT:
        raise CreateError(f"endpoint must be {CHAT_ENDPOINT!r}, got {endpoint!r}", "endpoint")
    window = body.get("completion_window")
    if window != COMPLETION_WINDOW:
        message = f"completion_window must be {COMPLETION_WINDOW!r}, got {window!r}"
        raise CreateError(message, "completion_window")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise CreateError("metadata must be an object of strings", "metadata")
    return stored, endpoint, metadata


def batch_body(batch: SimulatedBatch, step_s: float) -> dict[str, Any]:
    """The Batch object as openai-python's `types.Batch` reads it."""
    total = len(batch.lines)
    completed, failed = batch.completed, batch.failed
    if not batch.done and batch.stage == 1:  # lines finish steadily while in progress
        completed = int(total * _progress(batch, step_s, time.time()))
    stamps = (
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
    )
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file.id,
        "completion_window": COMPLETION_WINDOW,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": int(batch.created_at),
        "expires_at": int(batch.created_at) + WINDOW_S,
        **{name: batch.times.get(name) for name in stamps},
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": batch.metadata,
    }
