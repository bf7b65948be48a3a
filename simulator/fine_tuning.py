"""The fine-tuning jobs API, simulated in memory.

POST /v1/fine_tuning/jobs               create: model, training_file, [validation_file,
                                        suffix, seed, hyperparameters.n_epochs]
GET  /v1/fine_tuning/jobs               list, newest first (`after`, `limit`)
GET  /v1/fine_tuning/jobs/{id}          retrieve
GET  /v1/fine_tuning/jobs/{id}/events   events, newest first (`after`, `limit`)
GET  /admin/fine_tuning                 the pace: {"step_s": ...}
POST /admin/fine_tuning                 {"step_s": seconds per stage}; applies to new jobs

A job moves validating_files → queued → running → succeeded, one stage every `step_s`
seconds (default 2, so a demo shows progress), or with `step_s` 0 one stage per retrieve
call, so a test needs no sleeps. A training file with fewer than 10 examples fails at
validation, as it does on OpenAI. On success the model "ft:BASE:distillery:SUFFIX:ID" is
added to /v1/models with its base model's behaviour; it answers chat completions like any
other name.
"""

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from simulator.files import FILES, FINE_TUNE, StoredFile
from simulator.responses import STATE, error_reply, json_reply, page_reply, read_json_object

STAGES = ("validating_files", "queued", "running", "succeeded")
LAST_STAGE = len(STAGES) - 1
FAILED = "failed"
MIN_EXAMPLES = 10  # OpenAI's minimum; fewer fails the job at validation
DEFAULT_STEP_S = 2.0
DEFAULT_EPOCHS = 3
MAX_SUFFIX_CHARS = 64
ORGANIZATION = "distillery"

StageEvents = dict[str, list[tuple[str, str]]]  # stage → (level, message) pairs


class CreateError(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass
class SimulatedJob:
    id: str
    model: str
    training_file: StoredFile
    validation_file: StoredFile | None
    suffix: str | None
    seed: int
    n_epochs: int
    step_s: float
    created_at: float
    stage: int = 0
    failed: bool = False
    finished_at: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return FAILED if self.failed else STAGES[self.stage]

    @property
    def fine_tuned_model(self) -> str:
        return (
            f"ft:{self.model}:{ORGANIZATION}:{self.suffix or ''}:{self.id.removeprefix('ftjob-')}"
        )

    @property
    def done(self) -> bool:
        return self.failed or self.stage == LAST_STAGE

    def trained_tokens(self) -> int:
        return len(self.training_file.content) // 4 * self.n_epochs  # ~4 bytes a token


class FineTuningStore:
    """Jobs by id, advanced lazily whenever they are read. `on_success(base, model)` is called
    once per job that succeeds (the server registers the new model with it)."""

    def __init__(self, on_success: Callable[[str, str], None]) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, SimulatedJob] = {}
        self._ids = itertools.count(1)
        self._on_success = on_success
        self.step_s = DEFAULT_STEP_S

    def create(self, **fields: Any) -> SimulatedJob:
        with self._lock:
            job_id = f"ftjob-sim{next(self._ids):06d}"
            job = SimulatedJob(id=job_id, step_s=self.step_s, created_at=time.time(), **fields)
            _add_event(job, job.created_at, "info", _validating_message(job))
            self._jobs[job_id] = job
            return job

    def get(self, job_id: str, *, retrieved: bool = False) -> SimulatedJob | None:
        """The job, advanced to now; `retrieved` counts as one step at a per-call pace."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._advance(job, retrieved)
            return job

    def newest_first(self) -> list[SimulatedJob]:
        with self._lock:
            jobs = list(reversed(self._jobs.values()))
            for job in jobs:
                self._advance(job, retrieved=False)
            return jobs

    def _advance(self, job: SimulatedJob, retrieved: bool) -> None:
        target = _target_stage(job, time.time(), retrieved)
        while not job.done and job.stage < target:
            _enter_stage(job, job.stage + 1)
            if job.status == STAGES[LAST_STAGE]:
                self._on_success(job.model, job.fine_tuned_model)


FINE_TUNING = web.AppKey("simulator_fine_tuning", FineTuningStore)


def register(app: web.Application) -> None:
    """After `simulator.files.register`: jobs read the uploaded files."""
    state = app[STATE]

    def add_model(base: str, model: str) -> None:
        state.configure(model, **state.behaviour_for(base).to_dict())

    app[FINE_TUNING] = FineTuningStore(on_success=add_model)
    app.router.add_post("/v1/fine_tuning/jobs", create_job)
    app.router.add_get("/v1/fine_tuning/jobs", list_jobs)
    app.router.add_get("/v1/fine_tuning/jobs/{job_id}", retrieve_job)
    app.router.add_get("/v1/fine_tuning/jobs/{job_id}/events", list_events)
    app.router.add_get("/admin/fine_tuning", get_pace)
    app.router.add_post("/admin/fine_tuning", post_pace)


# --- handlers ----------------------------------------------------------------------------


async def create_job(request: web.Request) -> web.Response:
    try:
        body = await read_json_object(request)
        fields = _job_fields(body, request.app[FILES].get)
    except ValueError as exc:
        return error_reply(400, str(exc))
    except CreateError as exc:
        return error_reply(400, exc.message, param=exc.param)
    job = request.app[FINE_TUNING].create(**fields)
    return json_reply(job_body(job))


async def retrieve_job(request: web.Request) -> web.Response:
    job = request.app[FINE_TUNING].get(request.match_info["job_id"], retrieved=True)
    if job is None:
        return _job_not_found(request.match_info["job_id"])
    return json_reply(job_body(job))


async def list_jobs(request: web.Request) -> web.Response:
    jobs = [job_body(job) for job in request.app[FINE_TUNING].newest_first()]
    return page_reply(request, jobs)


async def list_events(request: web.Request) -> web.Response:
    job = request.app[FINE_TUNING].get(request.match_info["job_id"])
    if job is None:
        return _job_not_found(request.match_info["job_id"])
    return page_reply(request, list(reversed(job.events)))


async def get_pace(request: web.Request) -> web.Response:
    return json_reply({"step_s": request.app[FINE_TUNING].step_s})


async def post_pace(request: web.Request) -> web.Response:
    try:
        step_s = (await read_json_object(request)).get("step_s")
    except ValueError as exc:
        return error_reply(400, str(exc))
    if isinstance(step_s, bool) or not isinstance(step_s, int | float) or step_s < 0:
        return error_reply(400, f"step_s must be a number >= 0, got {step_s!r}")
    request.app[FINE_TUNING].step_s = float(step_s)
    return json_reply({"step_s": float(step_s)})


def _job_not_found(job_id: str) -> web.Response:
    return error_reply(
        404, f"No fine-tuning job found with id {job_id}.", param="fine_tuning_job_id"
    )


# --- the create request ------------------------------------------------------------------


def _job_fields(
    body: dict[str, Any], find_file: Callable[[str], StoredFile | None]
) -> dict[str, Any]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise CreateError("you must provide a model parameter", "model")
    validation_id = body.get("validation_file")
    return {
        "model": model,
        "training_file": _fine_tune_file(body.get("training_file"), "training_file", find_file),
        "validation_file": None
        if validation_id is None
        else _fine_tune_file(validation_id, "validation_file", find_file),
        "suffix": _suffix(body.get("suffix")),
        "seed": _integer(body, "seed", default=0),
        "n_epochs": _epochs(body.get("hyperparameters")),
    }


def _fine_tune_file(
    file_id: Any, name: str, find_file: Callable[[str], StoredFile | None]
) -> StoredFile:
    if not isinstance(file_id, str) or not file_id:
        raise CreateError(f"you must provide a {name} parameter", name)
    stored = find_file(file_id)
    if stored is None:
        raise CreateError(f"invalid {name}: {file_id} (no such file)", name)
    if stored.purpose != FINE_TUNE:
        raise CreateError(
            f"invalid {name}: {file_id} was uploaded with purpose '{stored.purpose}', "
            f"not '{FINE_TUNE}'",
            name,
        )
    return stored


def _suffix(suffix: Any) -> str | None:
    if suffix is None:
        return None
    if not isinstance(suffix, str) or len(suffix) > MAX_SUFFIX_CHARS:
        raise CreateError(
            f"suffix must be a string of at most {MAX_SUFFIX_CHARS} characters", "suffix"
        )
    return suffix or None


def _integer(body: dict[str, Any], name: str, *, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise CreateError(f"{name} must be an integer", name)
    return value


def _epochs(hyperparameters: Any) -> int:
    if hyperparameters is None:
        return DEFAULT_EPOCHS
    if not isinstance(hyperparameters, dict):
        raise CreateError("hyperparameters must be an object", "hyperparameters")
    epochs = hyperparameters.get("n_epochs", "auto")
    if epochs == "auto":
        return DEFAULT_EPOCHS
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 50:
        raise CreateError("n_epochs must be 'auto' or an integer from 1 to 50", "n_epochs")
    return epochs


# --- progress ----------------------------------------------------------------------------


def _target_stage(job: SimulatedJob, now: float, retrieved: bool) -> int:
    if job.step_s > 0:
        return min(LAST_STAGE, int((now - job.created_at) / job.step_s))
    return min(LAST_STAGE, job.stage + int(retrieved))


def _enter_stage(job: SimulatedJob, stage: int) -> None:
    # at a timed pace the stage began at a known time, not whenever someone looked
    at = job.created_at + stage * job.step_s if job.step_s > 0 else time.time()
    if stage == 1 and job.training_file.examples < MIN_EXAMPLES:
        _fail(job, at)
        return
    job.stage = stage
    for level, message in _stage_events(job)[STAGES[stage]]:
        _add_event(job, at, level, message)
    if stage == LAST_STAGE:
        job.finished_at = int(at)


def _fail(job: SimulatedJob, at: float) -> None:
    job.failed = True
    job.finished_at = int(at)
    _add_event(job, at, "error", _failure(job)["message"])


def _failure(job: SimulatedJob) -> dict[str, Any]:
    examples = job.training_file.examples
    return {
        "code": "invalid_training_file",
        "message": (
            f"The job failed due to an invalid training file. Expected file to have at least "
            f"{MIN_EXAMPLES} lines, but got {examples}."
        ),
        "param": "training_file",
    }


def _validating_message(job: SimulatedJob) -> str:
    files = [job.training_file.id] + ([job.validation_file.id] if job.validation_file else [])
    return f"Validating training file: {', '.join(files)}"


def _stage_events(job: SimulatedJob) -> StageEvents:
    return {
        "queued": [("info", "Files validated, moving job to queued state")],
        "running": [("info", "Fine-tuning job started")],
        "succeeded": [
            ("info", f"Trained {job.n_epochs} epochs over {job.training_file.examples} examples"),
            ("info", f"New fine-tuned model created: {job.fine_tuned_model}"),
            ("info", "The job has successfully completed"),
        ],
    }


def _add_event(job: SimulatedJob, at: float, level: str, message: str) -> None:
    job.events.append(
        {
            "id": f"ftevent-{job.id.removeprefix('ftjob-')}-{len(job.events) + 1}",
            "object": "fine_tuning.job.event",
            "created_at": int(at),
            "level": level,
            "message": message,
            "data": {},
            "type": "message",
        }
    )


# --- bodies ------------------------------------------------------------------------------


def job_body(job: SimulatedJob) -> dict[str, Any]:
    succeeded = job.status == STAGES[LAST_STAGE]
    hyperparameters = {"batch_size": 1, "learning_rate_multiplier": 1.0, "n_epochs": job.n_epochs}
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": int(job.created_at),
        "error": _failure(job) if job.failed else None,
        "fine_tuned_model": job.fine_tuned_model if succeeded else None,
        "finished_at": job.finished_at,
        "hyperparameters": hyperparameters,
        "model": job.model,
        "organization_id": f"org-{ORGANIZATION}",
        "result_files": [],
        "seed": job.seed,
        "status": job.status,
        "trained_tokens": job.trained_tokens() if succeeded else None,
        "training_file": job.training_file.id,
        "validation_file": job.validation_file.id if job.validation_file else None,
        "estimated_finish": None,
        "integrations": [],
        "metadata": None,
        "user_provided_suffix": job.suffix,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    }
