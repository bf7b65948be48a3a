"""`distillery finetune submit|status`: fine-tune a student on a training file and follow
the job (the work is in `producer.finetune`; this module only parses and prints)."""

from pathlib import Path
from typing import Any

import click

from producer.cli.common import console, emit_json, engine, handle_errors, out, settings
from producer.errors import UserError
from workers.errors import ExitCode

# Commands import the modules they work with when they run, so that `--help` loads none of
# them (producer/cli/common.py says which are heavy).


@click.group()
def finetune() -> None:
    """Fine-tune a student on a training file (locally, or at a provider), and follow it."""


@finetune.command("submit")
@click.argument("training_file", type=click.Path(path_type=Path))
@click.option(
    "--backend",
    type=click.Choice(["openai", "local"]),
    default="openai",
    show_default=True,
    help="local: train a LoRA student on this machine (the train extra); openai: an "
    "OpenAI-compatible fine-tuning API (OpenAI's own takes no new jobs from 2027-01-06)",
)
@click.option("--model", "base_model", help="openai: the provider's base model to fine-tune")
@click.option(
    "--base", help="local: a Hugging Face model directory or GGUF file (default: SmolLM2-135M)"
)
@click.option("--validation", type=click.Path(path_type=Path), help="a validation JSONL file")
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True, help="local")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="local")
@click.option("--learning-rate", type=click.FloatRange(0, min_open=True), help="local (5e-4)")
@click.option("--max-steps", type=click.IntRange(0), default=0, help="local: stop after N steps")
@click.option(
    "--checkpoint-every",
    type=click.IntRange(0),
    default=20,
    show_default=True,
    help="local: save a checkpoint every N steps (0: never); `finetune resume` goes on from it",
)
@click.option(
    "--export",
    type=click.Choice(["q8_0", "f16", "base"]),
    default="q8_0",
    show_default=True,
    help="local: the student GGUF's weights: q8_0, f16, or base (each tensor in the base "
    "GGUF's type: SmolLM2's Q4_1 loses much of what LoRA learnt; docs/training.md)",
)
@click.option("--wait", is_flag=True, help="local: wait for the run, with a progress bar")
@click.option("--suffix", help="openai: up to 64 characters, part of the fine-tuned model's name")
@click.option("--tier", help="openai: the tier whose endpoint and key are used ([teacher] tier)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def submit(
    training_file: Path,
    backend: str,
    base_model: str | None,
    base: str | None,
    validation: Path | None,
    epochs: int,
    batch_size: int,
    learning_rate: float | None,
    max_steps: int,
    checkpoint_every: int,
    export: str,
    wait: bool,
    suffix: str | None,
    tier: str | None,
    as_json: bool,
) -> None:
    """Fine-tune a student on TRAINING_FILE (chat JSONL, as `distillery reduce` writes it).

    --backend local trains a LoRA adapter on this machine (CUDA if there is one, else the
    CPU), merges it and exports the student as a GGUF for llama.cpp: in a `distillery
    worker --tiers training` when REDIS_URL is set, in this process otherwise.

    --backend openai uploads the files and creates a job at an OpenAI-compatible API; the
    job id is recorded on the file's `training_files` row (matched by sha256, then path).
    OpenAI itself stops new fine-tuning jobs on 2027-01-06 (earlier for organisations
    without recent fine-tuning use). Either way, a bad file starts nothing."""
    if backend == "local":
        from producer.local_finetune import hyperparameters

        params = hyperparameters(
            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
            max_steps=max_steps, export=export, checkpoint_every=checkpoint_every,
        )  # fmt: skip
        _submit_local(training_file, validation, base, params, wait=wait, as_json=as_json)
        return
    if not base_model:
        raise UserError("--backend openai needs --model BASE", ExitCode.USAGE)
    from producer.finetune import submit_fine_tune

    result = submit_fine_tune(
        training_file,
        base_model=base_model,
        settings=settings(),
        engine=engine(),
        validation=validation,
        suffix=suffix,
        tier_name=tier,
    )
    if as_json:
        emit_json(result)
    else:
        _print_submission(result)


def _submit_local(
    training: Path,
    validation: Path | None,
    base: str | None,
    params: dict[str, Any],
    *,
    wait: bool,
    as_json: bool,
) -> None:
    from producer import local_finetune as local

    request = local.LocalRequest(training, validation, base, params)
    db = engine()
    row = local.submit_local(request, settings=settings(), engine=db)
    assert row.id is not None
    _dispatch(db, row.id, wait=wait, as_json=as_json)


def _dispatch(db: Any, run_id: int, *, wait: bool, as_json: bool) -> None:
    """To a training worker when there is a broker, else run here; then report."""
    from producer import local_finetune as local

    row = local.load(db, run_id)
    if settings().redis_url:
        local.send_to_worker(run_id)
        if not as_json:
            _plain(f"fine-tune {run_id}: queued for a `distillery worker --tiers training`")
        if wait:
            row = _watch_local(db, run_id, as_json, interval=2.0)
    else:
        if not as_json:
            _plain(f"fine-tune {run_id}: training in this process (no REDIS_URL)")
        row = _run_here(db, run_id, as_json)
    _finish_local(row, as_json)


def _run_here(db: Any, fine_tune_id: int, as_json: bool) -> Any:
    from producer import local_finetune as local
    from producer.progress import training_bar

    with training_bar(console, fine_tune_id, quiet=as_json) as bar:
        return local.run_here(db, fine_tune_id, on_step=bar.step)


def _watch_local(db: Any, fine_tune_id: int, as_json: bool, *, interval: float) -> Any:
    from producer import local_finetune as local
    from producer.progress import training_bar

    with training_bar(console, fine_tune_id, quiet=as_json) as bar:
        return local.watch(db, fine_tune_id, interval_s=interval, on_row=bar.row)


def _finish_local(row: Any, as_json: bool) -> None:
    """Print (or emit) the run; a run that did not succeed ends the command non-zero."""
    from producer.local_finetune import summary

    result = summary(row)
    if as_json:
        emit_json(result)
    else:
        _print_local(result)
    if row.status.value == "failed":
        raise UserError(f"fine-tune {row.id} failed: {row.error}", ExitCode.ERROR)


def _print_local(result: dict[str, Any]) -> None:
    _plain(
        f"fine-tune {result['id']} (local): {result['status']}, step "
        f"{result['steps_done']}/{result['steps_total']}, {result['examples']} examples"
    )
    for reason, count in result["dropped"].items():
        _plain(f"  dropped {count} example(s): {reason.replace('_', ' ')}")
    if result["train_loss"] is not None:
        valid = result["validation_loss"]
        shown = f", validation loss {valid:.4f}" if valid is not None else ""
        _plain(f"  training loss {result['train_loss']:.4f}{shown}")
    for kind, path in result["artifacts"].items():
        _plain(f"  {kind}: {path}")
    if result["error"]:
        _plain(f"  error: {result['error']}")
    if result["status"] == "succeeded":
        _plain(f"serve it: distillery student serve {result['id']}")


@finetune.command("status")
@click.argument("job_id")
@click.option("--watch", is_flag=True, help="poll until the job ends, printing its events")
@click.option(
    "--interval",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="seconds between polls with --watch",
)
@click.option("--tier", help="the tier the job was submitted on (default: [teacher] tier)")
@click.option("--add-tier", "add_tier_name", help="once succeeded, add the model as [tiers.NAME]")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="the TOML file --add-tier edits (default: $DISTILLERY_CONFIG or ./distillery.toml)",
)
@click.option(
    "--position",
    type=click.Choice(["last", "first"]),
    default="last",
    show_default=True,
    help="--add-tier: after the other tiers, or before them (tiers are cheapest first)",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def status(
    job_id: str,
    watch: bool,
    interval: float,
    tier: str | None,
    add_tier_name: str | None,
    config_file: Path | None,
    position: str,
    as_json: bool,
) -> None:
    """Show fine-tune JOB_ID: a `fine_tunes` id (a number; a local run's steps, loss and
    student GGUF) or a provider's job id (its events). Once it succeeded, the tier block
    that adds the student to the config (or add it with --add-tier NAME; a local student's
    price is [training] student_price_per_1k)."""
    if config_file and not add_tier_name:
        raise UserError(
            "--config is the file --add-tier edits; give --add-tier NAME", ExitCode.USAGE
        )
    if job_id.isdigit():
        job_id = _local_or_provider_id(
            int(job_id), watch, interval, add_tier_name, config_file, position, as_json
        )
        if not job_id:
            return
    result = _read_status(job_id, watch, interval, tier, add_tier_name, as_json)
    from producer.finetune import sync_run

    sync_run(engine(), result)
    ended_badly = watch and result["status"] != "succeeded"  # `status --watch && next step`
    added = None
    if not ended_badly:
        added = _maybe_add_tier(result, add_tier_name, config_file, first=position == "first")
    if as_json:
        emit_json({**result, "added_to_config": added})
    else:
        _print_status(result, shown_events=not watch, added=added)
    if ended_badly:
        error = (result["error"] or {}).get("message") or "no reason given"
        raise UserError(f"fine-tune job {job_id} {result['status']}: {error}", ExitCode.ERROR)


def _local_or_provider_id(
    fine_tune_id: int,
    watch: bool,
    interval: float,
    add_tier_name: str | None,
    config_file: Path | None,
    position: str,
    as_json: bool,
) -> str:
    """A local run is shown here (''; nothing left to do); a provider's, by its job id."""
    from producer import local_finetune as local

    db = engine()
    row = local.load(db, fine_tune_id)
    if row.backend.value != "local":
        return str(row.provider_job_id)
    if watch:
        row = _watch_local(db, fine_tune_id, as_json, interval=min(interval, 2.0))
    added = None
    if add_tier_name:
        from producer.finetune import add_tier
        from workers.settings import config_path

        block = local.student_tier_block(add_tier_name, row, settings())
        added = config_file or config_path()
        add_tier(added, add_tier_name, block, first=position == "first")
        if not as_json:
            _plain(f"added to {added}:\n\n{block}")
    if as_json:
        emit_json({**local.summary(row), "added_to_config": str(added) if added else None})
    else:
        _print_local(local.summary(row))
    if watch and row.status.value != "succeeded":
        raise UserError(f"fine-tune {fine_tune_id} {row.status.value}: {row.error}", ExitCode.ERROR)
    return ""


@finetune.command("resume")
@click.argument("fine_tune_id", type=int)
@click.option("--wait", is_flag=True, help="wait for the run, with a progress bar")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def resume(fine_tune_id: int, wait: bool, as_json: bool) -> None:
    """Go on with local run FINE_TUNE_ID from its last checkpoint: one that failed, was
    cancelled, or whose process died (SIGKILL, a reboot) while it ran."""
    from producer import local_finetune as local

    db = engine()
    local.reopen(db, fine_tune_id)
    _dispatch(db, fine_tune_id, wait=wait, as_json=as_json)


@finetune.command("cancel")
@click.argument("fine_tune_id", type=int)
@handle_errors
def cancel(fine_tune_id: int) -> None:
    """Cancel local run FINE_TUNE_ID: a queued one never starts, a running one stops after
    its current step."""
    from producer import local_finetune as local

    row = local.cancel(engine(), fine_tune_id)
    _plain(f"fine-tune {fine_tune_id}: {row.status.value}")


@finetune.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def list_runs(as_json: bool) -> None:
    """The recent fine-tunes (local and provider), newest first."""
    from sqlmodel import Session

    from models.fine_tunes import recent_fine_tunes

    with Session(engine()) as session:
        rows = recent_fine_tunes(session=session)
        listed = [
            {"id": r.id, "backend": r.backend.value, "status": r.status.value,
             "steps": f"{r.steps_done}/{r.steps_total}", "base": r.base_model,
             "provider_job_id": r.provider_job_id}
            for r in rows
        ]  # fmt: skip
    if as_json:
        emit_json(listed)
        return
    for item in listed:
        _plain(
            f"{item['id']:>4}  {item['backend']:<6}  {item['status']:<9}  {item['steps']:>9}  "
            f"{item['provider_job_id'] or item['base']}"
        )


def _read_status(
    job_id: str,
    watch: bool,
    interval: float,
    tier: str | None,
    student_tier: str | None,
    as_json: bool,
) -> dict[str, Any]:
    from producer.finetune import fine_tune_status, watch_fine_tune

    if not watch:
        return fine_tune_status(
            job_id, settings=settings(), tier_name=tier, student_tier=student_tier
        )
    on_event = (lambda event: None) if as_json else _print_event
    return watch_fine_tune(
        job_id,
        settings=settings(),
        tier_name=tier,
        interval_s=interval,
        on_event=on_event,
        student_tier=student_tier,
    )


def _maybe_add_tier(
    result: dict[str, Any], name: str | None, config_file: Path | None, *, first: bool
) -> str | None:
    """The config file the tier went into, or None without --add-tier."""
    from producer.finetune import add_tier
    from workers.settings import config_path

    if name is None:
        return None
    if result["tier_block"] is None:
        raise UserError(
            f"fine-tune job {result['id']} is {result['status']}; --add-tier needs a succeeded "
            f"job (add --watch to wait for it)",
            ExitCode.USAGE,
        )
    path = config_file or config_path()
    add_tier(path, name, result["tier_block"], first=first)
    return str(path)


# --- printing ----------------------------------------------------------------------------


def _print_submission(result: dict[str, Any]) -> None:
    for warning in result["warnings"]:
        console.print(f"warning: {warning}", markup=False, highlight=False, emoji=False)
    for kind in ("training_file", "validation_file"):
        file = result[kind]
        if file:
            _plain(f"uploaded {file['path']} ({file['examples']} examples) as {file['file_id']}")
    _plain(
        f"fine-tune job {result['fine_tune_job_id']}: {result['status']} "
        f"(base model {result['model']}, tier {result['tier']} at {result['base_url']})"
    )
    row = result["training_files_row"]
    if row is None:
        _plain(
            "this file is not in training_files (no row with its sha256 or path): "
            "submitted anyway, nothing recorded"
        )
    else:
        _plain(
            f"recorded on training_files row {row['id']} "
            f"(teacher job {row['job_id']}, matched by {row['matched_by']})"
        )
        if row["replaced_fine_tune_job_id"]:
            _plain(f"  it replaces the earlier fine-tune job {row['replaced_fine_tune_job_id']}")
    _plain(f"follow it: distillery finetune status {result['fine_tune_job_id']} --watch")


def _print_status(result: dict[str, Any], *, shown_events: bool, added: str | None) -> None:
    if shown_events:
        for event in result["events"]:
            _print_event(event)
    _plain(f"fine-tune job {result['id']}: {result['status']} (base model {result['model']})")
    if result["fine_tuned_model"]:
        _plain(f"fine-tuned model: {result['fine_tuned_model']}")
    if result["error"]:
        _plain(f"error: {result['error']['code']}: {result['error']['message']}")
    if result["tier_block"] is None:
        return
    if added:
        _plain(f"added to {added}:\n\n{result['tier_block']}")
        _plain("set its prices: until then the report counts its calls as free")
    else:
        _plain("add the student to your config (prices are yours to fill in):")
        _plain(f"\n{result['tier_block']}")
        _plain("or let this command do it: --add-tier NAME [--config PATH] [--position first]")


def _print_event(event: dict[str, Any]) -> None:
    when = (event["created_at"] or "")[11:19]  # HH:MM:SS of the ISO time
    _plain(f"  {when}  {event['level']:<5}  {event['message']}")


def _plain(text: str) -> None:
    """Printed as is: a tier block's [tiers.NAME] is not rich markup, and a model named
    "ft:base:org:loop:id" holds no emoji code."""
    out.print(text, markup=False, highlight=False, emoji=False)
