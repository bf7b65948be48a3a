"""The local backend of `distillery finetune`: check the files and the base, record a
`fine_tunes` row, and run it — as a Celery task on the `training` queue when there is a
broker (REDIS_URL), in this process otherwise (embedded mode). Then follow the row, and once
it succeeded, hand back the tier block that serves the student (`distillery student serve`).

Nothing here imports torch: the checks before a run need none, and without the train extra
`--backend local` stops at once with what to install."""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from models import FineTune, FineTuneBackend, FineTuneStatus, session_scope
from models.fine_tunes import create_fine_tune, move, set_values
from models.tables import TERMINAL_FINE_TUNE_STATUSES
from producer.finetune import LocalFile, find_training_record
from workers.errors import BadInput
from workers.finetune_format import MIN_EXAMPLES
from workers.settings import Settings
from workers.training.base import resolve_base
from workers.training.data import check_training_file
from workers.training.export import QUANTS
from workers.training.extra import require_train_extra
from workers.training.run import file_sha256
from workers.training.run import load_run as load


@dataclass(frozen=True)
class LocalRequest:
    training: Path
    validation: Path | None
    base: str | None
    hyperparameters: dict[str, Any]


def submit_local(request: LocalRequest, *, settings: Settings, engine: Engine) -> FineTune:
    """Every check that needs no model, then the row (queued). Nothing is stored when a
    check fails."""
    require_train_extra()
    examples = check_training_file(request.training, minimum=MIN_EXAMPLES)
    if request.validation:
        check_training_file(request.validation, "validation file")
    base = resolve_base(request.base)
    sha256 = file_sha256(request.training)
    local = LocalFile(request.training.resolve(), examples, sha256)
    record, _ = find_training_record(engine, local)
    with session_scope(engine) as session:
        row = create_fine_tune(
            session=session,
            backend=FineTuneBackend.LOCAL,
            base_model=str(base.path),
            training_path=str(request.training.resolve()),
            training_sha256=sha256,
            validation_path=str(request.validation.resolve()) if request.validation else None,
            validation_sha256=file_sha256(request.validation) if request.validation else None,
            training_file_id=record.id if record else None,
            hyperparameters=request.hyperparameters,
        )
        assert row.id is not None
        out = settings.fine_tune_dir(row.id).resolve()
        set_values(session=session, fine_tune_id=row.id, artifacts={"dir": str(out)})
        row.artifacts = {"dir": str(out)}
    return row


def send_to_worker(fine_tune_id: int) -> None:
    from workers.app import TRAIN_TASK, TRAINING_QUEUE, app

    app.send_task(TRAIN_TASK, (fine_tune_id,), queue=TRAINING_QUEUE)


def run_here(engine: Engine, fine_tune_id: int, on_step: Callable[[Any], None]) -> FineTune:
    from workers.training.run import train_fine_tune

    return train_fine_tune(engine, fine_tune_id, on_step=on_step)


def watch(
    engine: Engine, fine_tune_id: int, *, interval_s: float, on_row: Callable[[FineTune], None]
) -> FineTune:
    """Poll the row until it ends, passing each reading to ON_ROW."""
    while True:
        row = load(engine, fine_tune_id)
        on_row(row)
        if row.status in TERMINAL_FINE_TUNE_STATUSES:
            return row
        time.sleep(interval_s)


def cancel(engine: Engine, fine_tune_id: int) -> FineTune:
    """Queued: it never starts. Running: it stops after its current step."""
    load(engine, fine_tune_id)
    with session_scope(engine) as session:
        move(session=session, fine_tune_id=fine_tune_id, to=FineTuneStatus.CANCELLED,
             expected=[FineTuneStatus.QUEUED, FineTuneStatus.RUNNING])  # fmt: skip
    return load(engine, fine_tune_id)


def reopen(engine: Engine, fine_tune_id: int) -> FineTune:
    """A failed, cancelled or dead (left `running`) local run queued again; it goes on from
    its last checkpoint. Only for a run whose process is gone: a live one would run twice."""
    row = load(engine, fine_tune_id)
    if row.backend != FineTuneBackend.LOCAL:
        raise BadInput(f"fine-tune {fine_tune_id} ran at a provider: nothing here to resume")
    resumable = [FineTuneStatus.FAILED, FineTuneStatus.CANCELLED, FineTuneStatus.RUNNING]
    with session_scope(engine) as session:
        moved = move(session=session, fine_tune_id=fine_tune_id, to=FineTuneStatus.QUEUED,
                     expected=resumable, error=None, finished_at=None)  # fmt: skip
    if not moved:
        raise BadInput(f"fine-tune {fine_tune_id} is {row.status.value}: nothing to resume")
    return load(engine, fine_tune_id)


def summary(row: FineTune) -> dict[str, Any]:
    last = row.loss_curve[-1] if row.loss_curve else {}
    validations = [p["validation_loss"] for p in row.loss_curve if p.get("validation_loss")]
    return {
        "id": row.id,
        "backend": row.backend.value,
        "status": row.status.value,
        "base_model": row.base_model,
        "training_file": row.training_path,
        "training_sha256": row.training_sha256,
        "validation_file": row.validation_path,
        "examples": row.examples,
        "dropped": row.dropped,
        "hyperparameters": row.hyperparameters,
        "steps_done": row.steps_done,
        "steps_total": row.steps_total,
        "train_loss": last.get("train_loss"),
        "validation_loss": validations[-1] if validations else None,
        "loss_curve": row.loss_curve,
        "artifacts": row.artifacts,
        "created_at": row.created_at.isoformat(),
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "error": row.error,
    }


def student_model_name(fine_tune_id: int) -> str:
    return f"student-{fine_tune_id}"


def student_tier_block(name: str, row: FineTune, settings: Settings) -> str:
    """A [tiers.NAME] table for the student as `distillery student serve ID` serves it."""
    if row.status != FineTuneStatus.SUCCEEDED or "gguf" not in row.artifacts:
        raise BadInput(f"fine-tune {row.id} is {row.status.value}: no student to add yet")
    assert row.id is not None
    price = settings.training.student_price_per_1k
    url = f"http://127.0.0.1:{settings.training.student_port}/v1"
    return (
        "\n".join(
            [
                f"# the student: local fine-tune {row.id} of {Path(row.base_model).name},",
                f"#   served by distillery student serve {row.id}",
                f"[tiers.{name}]",
                f"base_url = {json.dumps(url)}",
                f"model = {json.dumps(student_model_name(row.id))}",
                f"input_per_1k = {price}    # [training] student_price_per_1k",
                f"output_per_1k = {price}",
                "concurrency = 1    # llama.cpp's server answers one request at a time",
            ]
        )
        + "\n"
    )


def hyperparameters(
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float | None,
    max_steps: int,
    export: str = "q8_0",
    checkpoint_every: int = 20,
) -> dict[str, Any]:
    from dataclasses import asdict

    from workers.training.loop import TrainParams

    if export not in QUANTS:
        raise BadInput(f"--export {export}: choose one of {', '.join(QUANTS)}")
    params = TrainParams(
        epochs=epochs, batch_size=batch_size, max_steps=max_steps,
        checkpoint_every=checkpoint_every,
    )  # fmt: skip
    values = asdict(params)
    if learning_rate is not None:
        values["learning_rate"] = learning_rate
    return {**values, "export": export}
