"""One local training run, end to end, for one `fine_tunes` row: load the base, encode the
files, train the LoRA adapter (recording the loss curve as it goes), save the adapter, merge
it and export the student GGUF. The same function runs in a `training` worker (the Celery
task) and in process (embedded mode, no REDIS_URL).

A failure the user can fix (a bad file, a base that is not a model) is recorded on the row
as its error and raised again for the caller to report; so is anything else, with its type.
A row cancelled while the run goes is seen at the next step, and the run stops there."""

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import FineTune, FineTuneStatus, session_scope
from models.fine_tunes import get_fine_tune, move, record_step, set_values
from workers.errors import BadConfig, BadInput, NotFound
from workers.training.base import BaseModel, context_length, load_base, resolve_base
from workers.training.export import DEFAULT_EXPORT
from workers.training.extra import require_train_extra
from workers.training.loop import StepLog, TrainParams

Loader = Callable[[BaseModel, str], tuple[Any, Any]]
ACTIVE = (FineTuneStatus.QUEUED, FineTuneStatus.RUNNING)
STUDENT_FILE = "student.gguf"
ADAPTER_FILE = "adapter.gguf"  # for `llama-server --model BASE --lora adapter.gguf`


class RunCancelled(Exception):
    """The row was cancelled while the run went; it stops after the current step."""


class CheckpointFailed(BadConfig):
    """A checkpoint could not be written (a full disk, a read-only output_dir)."""


def train_params(hyperparameters: dict[str, Any]) -> TrainParams:
    known = {f.name for f in fields(TrainParams)}
    return TrainParams(**{k: v for k, v in hyperparameters.items() if k in known})


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_fine_tune(
    engine: Engine,
    fine_tune_id: int,
    *,
    on_step: Callable[[StepLog], None] = lambda log: None,
    loader: Loader = load_base,
) -> FineTune:
    """Run the row's training; the row as it ended. A row already finished is left alone
    (a redelivered message)."""
    require_train_extra()
    row = _start(engine, fine_tune_id)
    if row.status != FineTuneStatus.RUNNING:
        return row
    try:
        artifacts = _train(engine, row, on_step, loader)
    except RunCancelled:
        return load_run(engine, fine_tune_id)
    except Exception as exc:
        error = str(exc) if isinstance(exc, BadInput) else f"{type(exc).__name__}: {exc}"
        with session_scope(engine) as session:
            move(session=session, fine_tune_id=fine_tune_id, to=FineTuneStatus.FAILED,
                 expected=ACTIVE, error=error)  # fmt: skip
        raise
    with session_scope(engine) as session:
        move(session=session, fine_tune_id=fine_tune_id, to=FineTuneStatus.SUCCEEDED,
             expected=[FineTuneStatus.RUNNING], artifacts=artifacts)  # fmt: skip
    return load_run(engine, fine_tune_id)


def _start(engine: Engine, fine_tune_id: int) -> FineTune:
    with session_scope(engine) as session:
        move(session=session, fine_tune_id=fine_tune_id, to=FineTuneStatus.RUNNING,
             expected=[FineTuneStatus.QUEUED])  # fmt: skip
    return load_run(engine, fine_tune_id)


def load_run(engine: Engine, fine_tune_id: int) -> FineTune:
    """The row as it is now; NotFound without one."""
    with Session(engine, expire_on_commit=False) as session:
        row = get_fine_tune(session=session, fine_tune_id=fine_tune_id)
    if row is None:
        raise NotFound(f"no fine-tune {fine_tune_id} (see `distillery finetune list`)")
    return row


def _train(
    engine: Engine, row: FineTune, on_step: Callable[[StepLog], None], loader: Loader
) -> dict[str, str]:
    from workers.training.data import build_dataset
    from workers.training.export import export_gguf, export_lora_gguf
    from workers.training.loop import Trainer, pick_device, with_lora

    assert row.id is not None
    run_id: int = row.id
    _check_unchanged(row)
    params = train_params(row.hyperparameters)
    base = resolve_base(row.base_model)
    model, tokenizer = loader(base, pick_device())
    max_length = min(params.max_length, context_length(model))
    train = build_dataset(Path(row.training_path), tokenizer, max_length=max_length)
    valid = (
        build_dataset(Path(row.validation_path), tokenizer, max_length=max_length, minimum=0)
        if row.validation_path
        else None
    )
    with session_scope(engine) as session:
        set_values(session=session, fine_tune_id=row.id, examples=len(train.rows),
                   dropped=train.dropped)  # fmt: skip
    model = with_lora(model, params)
    trainer = Trainer(model, tokenizer.pad_token_id, params, len(train.rows))
    out = Path(row.artifacts["dir"])
    artifacts = dict(row.artifacts)
    checkpoints = Checkpoints(out / "checkpoints")
    start, curve = checkpoints.restore(trainer)
    if start:
        artifacts["resumed_from_step"] = str(start)
        with session_scope(engine) as session:
            set_values(session=session, fine_tune_id=row.id, artifacts=artifacts)
    trainer.run(
        train.rows,
        valid.rows if valid else [],
        _recorder(engine, row.id, on_step, curve),
        start_step=start,
        on_checkpoint=lambda step: _checkpoint(engine, run_id, checkpoints, trainer, step, curve),
    )
    model.save_pretrained(out / "adapter")
    artifacts["adapter"] = str(out / "adapter")
    merged = model.merge_and_unload()
    if base.is_gguf:
        quant = str(row.hyperparameters.get("export", DEFAULT_EXPORT))
        artifacts["gguf"] = str(export_gguf(merged, base.path, out / STUDENT_FILE, quant=quant))
        adapter_gguf = export_lora_gguf(out / "adapter", merged.config, out / ADAPTER_FILE)
        artifacts["adapter_gguf"] = str(adapter_gguf)
    return artifacts


def _check_unchanged(row: FineTune) -> None:
    """The file trained on is the one submitted (by sha256), not an edited copy."""
    path = Path(row.training_path)
    if not path.is_file() or file_sha256(path) != row.training_sha256:
        raise BadInput(f"{path} changed or vanished since it was submitted; submit it again")


def _recorder(
    engine: Engine,
    fine_tune_id: int,
    on_step: Callable[[StepLog], None],
    curve: list[dict[str, Any]],
) -> Callable[[StepLog], None]:
    """Appends each step to CURVE (the one a checkpoint saves) and to the row."""

    def record(log: StepLog) -> None:
        curve.append(log.to_dict())
        on_step(log)
        with session_scope(engine) as session:
            status = record_step(session=session, fine_tune_id=fine_tune_id,
                                 steps_done=log.step, steps_total=log.steps_total,
                                 curve=curve)  # fmt: skip
        if status == FineTuneStatus.CANCELLED:
            raise RunCancelled

    return record


def _checkpoint(
    engine: Engine,
    fine_tune_id: int,
    checkpoints: "Checkpoints",
    trainer: Any,
    step: int,
    curve: list[dict[str, Any]],
) -> None:
    path = checkpoints.save(trainer, step, curve)
    with session_scope(engine) as session:
        row = get_fine_tune(session=session, fine_tune_id=fine_tune_id)
        if row is not None:
            artifacts = {**row.artifacts, "checkpoint": str(path)}
            set_values(session=session, fine_tune_id=fine_tune_id, artifacts=artifacts)


class Checkpoints:
    """A run's checkpoints: each step's in its own directory, and `latest.json` naming the
    newest whole one, replaced atomically once that directory is written. A crash (or a
    full disk) while writing leaves the previous checkpoint as the one resumed from."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pointer = root / "latest.json"

    def save(self, trainer: Any, step: int, curve: list[dict[str, Any]]) -> Path:
        target = self.root / f"step-{step}"
        try:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            trainer.save_state(target)
            (target / "curve.json").write_text(json.dumps(curve), encoding="utf-8")
            temporary = self.root / "latest.json.tmp"
            temporary.write_text(json.dumps({"step": step, "dir": target.name}))
            os.replace(temporary, self.pointer)
        except OSError as exc:
            shutil.rmtree(target, ignore_errors=True)
            kept = self.latest_step()
            raise CheckpointFailed(
                f"writing the checkpoint at step {step} to {target} failed: {exc}; "
                f"{f'the checkpoint at step {kept} is kept' if kept else 'no checkpoint yet'}"
                "; free the space and run `distillery finetune resume ID`"
            ) from None
        self._prune(keep=target.name)
        return target

    def latest_step(self) -> int:
        try:
            return int(json.loads(self.pointer.read_text())["step"])
        except (OSError, ValueError, KeyError):
            return 0

    def restore(self, trainer: Any) -> tuple[int, list[dict[str, Any]]]:
        """(the step to go on from, the loss curve up to it); (0, []) without a checkpoint."""
        step = self.latest_step()
        if not step:
            return 0, []
        directory = self.root / f"step-{step}"
        trainer.load_state(directory)
        curve = json.loads((directory / "curve.json").read_text(encoding="utf-8"))
        return step, curve

    def _prune(self, keep: str) -> None:
        for old in self.root.glob("step-*"):
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)
