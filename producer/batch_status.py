"""A batch job's batches, for `status`, `report` and `cancel`: each provider batch's status,
lines done and money so far, the batch vs online share of the answers, and cancelling the
provider's batches when a job is cancelled."""

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.batches import answer_paths, job_batches
from models.tables import TERMINAL_BATCH_STATUSES
from workers.settings import Settings, TierConfig


def batches_summary(
    session: Session, job_id: int, tiers: Mapping[str, TierConfig] | None = None
) -> dict[str, Any]:
    """`batches` (one entry per provider batch) and `answers` (batch vs online share)."""
    rows = job_batches(conn=session.connection(), job_id=job_id)
    return {
        "batches": [_batch(row) for row in rows],
        "answers": answers_by_path(session, job_id, tiers),
    }


def answers_by_path(
    session: Session, job_id: int, tiers: Mapping[str, TierConfig] | None = None
) -> dict[str, Any]:
    """Answers by batch and online: count, share, cost, and (with the tiers' prices) what
    the batch answers would have cost online and so saved."""
    usage = answer_paths(conn=session.connection(), job_id=job_id)
    total = sum(u.answers for u in usage)
    paths: dict[str, Any] = {}
    for name, batched in (("batch", True), ("online", False)):
        mine = [u for u in usage if u.batched == batched]
        answers = sum(u.answers for u in mine)
        entry: dict[str, Any] = {
            "answers": answers,
            "share": round(answers / total, 4) if total else 0.0,
            "cost_usd": round(sum(u.cost_usd for u in mine), 6),
        }
        if batched and tiers is not None:
            online = sum(
                tiers[u.tier].cost_usd(u.prompt_tokens, u.completion_tokens)
                for u in mine
                if u.tier in tiers
            )
            entry["online_price_usd"] = round(online, 6)
            entry["saved_usd"] = round(online - entry["cost_usd"], 6)
        paths[name] = entry
    return paths


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
                _shown_status(b),
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
        out.print(answer_paths_line(answers))


def _shown_status(batch: dict[str, Any]) -> str:
    if batch["committed"] or batch["status"] == "preparing":
        return str(batch["status"])
    if batch["status"] in TERMINAL_BATCH_STATUSES:
        return f"{batch['status']} (results being committed)"
    return f"{batch['status']} (polling)"


def answer_paths_line(answers: dict[str, Any]) -> str:
    batch, online = answers["batch"], answers["online"]
    saved = f", saving ${batch['saved_usd']:.4f}" if batch.get("saved_usd") else ""
    return (
        f"answers: {batch['answers']:,} by batch ({batch['share']:.0%}, "
        f"${batch['cost_usd']:.4f}{saved}), {online['answers']:,} online "
        f"({online['share']:.0%}, ${online['cost_usd']:.4f})"
    )


def cancel_provider_batches(engine: Engine, job_id: int, settings: Settings) -> list[str]:
    """Ask the provider to cancel the job's batches still running; the ones it could not be
    told about (each poll tries again while the job is cancelled)."""
    with engine.connect() as conn:
        rows = job_batches(conn=conn, job_id=job_id)
    running = [
        row
        for row in rows
        if row.provider_batch_id is not None and row.status not in TERMINAL_BATCH_STATUSES
    ]
    if not running:
        return []  # an online job: no SDK to load (cancel must be quick)
    from workers.batches.client import BatchClient
    from workers.batches.poll import cancel_at_provider

    missed = []
    for row in running:
        with BatchClient(settings.require_tier(row.tier)) as client:
            if not cancel_at_provider(engine, row, client):
                missed.append(row.provider_batch_id)
    return missed
