"""A batch job's batches, for `status`, `report` and `cancel`: each provider batch's status,
lines done and money so far, the batch vs online share of the answers, and cancelling the
provider's batches when a job is cancelled."""

from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.batches import batch_share, job_batches
from models.tables import TERMINAL_BATCH_STATUSES
from workers.settings import Settings


def batches_summary(session: Session, job_id: int) -> dict[str, Any]:
    """`batches` (one entry per provider batch) and `answers` (batch vs online share)."""
    conn = session.connection()
    rows = job_batches(conn=conn, job_id=job_id)
    return {
        "batches": [_batch(row) for row in rows],
        "answers": batch_share(conn=conn, job_id=job_id),
    }


def _batch(row: Any) -> dict[str, Any]:
    taken = row.ingested_at is not None
    return {
        "id": row.id,
        "provider_batch_id": row.provider_batch_id,
        "status": row.status,
        "lines": row.lines,
        # Before its results are committed, what the provider says it has done.
        "done": row.answered + row.errored
        if taken
        else row.provider_completed + row.provider_failed,
        "answered": row.answered,
        "errored": row.errored,
        "ignored": row.ignored,
        "committed": taken,
        "cost_usd": round(row.cost_usd, 6),
        "polls": row.polls,
        "input_file_id": row.input_file_id,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "errors": row.errors,
        "created_at": row.created_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
    }


def print_batches(out: Console, summary: dict[str, Any]) -> None:
    batches = summary.get("batches") or []
    if batches:
        table = Table(
            "batch", "provider id", "status", "lines done", "answered", "errored", "$ so far"
        )
        for b in batches:
            table.add_row(
                str(b["id"]),
                b["provider_batch_id"] or "-",
                b["status"]
                + ("" if b["committed"] or b["status"] == "preparing" else " (polling)"),
                f"{b['done']}/{b['lines']}",
                str(b["answered"]),
                str(b["errored"]),
                f"${b['cost_usd']:.4f}",
            )
        out.print(table)
        for b in batches:
            for error in b["errors"] or []:
                where = f"line {error['line']}: " if error.get("line") else ""
                out.print(f"[red]batch {b['id']} refused:[/] {where}{error.get('message')}")
    answers = summary.get("answers")
    if answers and (answers["batch"]["answers"] or batches):
        batch, online = answers["batch"], answers["online"]
        out.print(
            f"answers: {batch['answers']} by batch (${batch['cost_usd']:.4f}), "
            f"{online['answers']} online (${online['cost_usd']:.4f})"
        )


def cancel_provider_batches(engine: Engine, job_id: int, settings: Settings) -> list[str]:
    """Ask the provider to cancel the job's batches still running; the ones it could not be
    told about (each poll tries again while the job is cancelled)."""
    from workers.batches.client import BatchClient
    from workers.batches.poll import cancel_at_provider

    with engine.connect() as conn:
        rows = job_batches(conn=conn, job_id=job_id)
    missed = []
    for row in rows:
        if row.provider_batch_id is None or row.status in TERMINAL_BATCH_STATUSES:
            continue
        with BatchClient(settings.require_tier(row.tier)) as client:
            if not cancel_at_provider(engine, row, client):
                missed.append(row.provider_batch_id)
    return missed
