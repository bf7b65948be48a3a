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
    """Fine-tune a student model on a training file, and follow the job."""


@finetune.command("submit")
@click.argument("training_file", type=click.Path(path_type=Path))
@click.option("--model", "base_model", required=True, help="the base model to fine-tune")
@click.option("--validation", type=click.Path(path_type=Path), help="a validation JSONL file")
@click.option("--suffix", help="up to 64 characters, part of the fine-tuned model's name")
@click.option("--tier", help="the tier whose endpoint and key are used (default: [teacher] tier)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def submit(
    training_file: Path,
    base_model: str,
    validation: Path | None,
    suffix: str | None,
    tier: str | None,
    as_json: bool,
) -> None:
    """Upload TRAINING_FILE (and --validation) and create a fine-tuning job on it.

    Both files are checked first; a bad one uploads nothing. The job id is recorded on the
    file's `training_files` row (matched by sha256, then path), when the reducer wrote it."""
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
    """Show fine-tuning job JOB_ID and its events; once it succeeded, the tier block that
    adds the fine-tuned model to the config (or add it with --add-tier NAME)."""
    if config_file and not add_tier_name:
        raise UserError(
            "--config is the file --add-tier edits; give --add-tier NAME", ExitCode.USAGE
        )
    result = _read_status(job_id, watch, interval, tier, add_tier_name, as_json)
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
