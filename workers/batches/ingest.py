"""Committing a finished batch's results: once, whatever message, retry or racing poll asks.

The files are downloaded first; then one transaction locks the batch's row, and unless its
results were already taken (`ingested_at`), writes every line's attempt and outcome with the
workers' own group commit (`models.outcomes.write_records`: a prompt becomes terminal and is
counted exactly once), releases the prompts that need another try, and marks the row taken.
A worker killed anywhere before that commit leaves nothing behind: the next poll does it all
again. Lines go where they are due:

* answered: an attempt at the batch price, the prompt succeeded (as an online answer);
* errored, expired or never reached: an attempt with the error; the prompt is retried, in a
  new batch or online (`batch_fallback`), and fails after `batch_max_tries` batch tries;
* all of a batch whose input the provider refused: failed with the provider's errors (the
  same lines would be refused again), or online when the job asks for online fallback.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from models import AttemptStatus, BatchStatus, PromptStatus
from models.batches import (
    CHUNK,
    batch_row,
    chunks,
    failed_batch_tries,
    held_prompts,
    release_prompts,
    update_batch,
)
from models.outcomes import Record, write_records
from models.types import utcnow
from workers.answer import WorkItem, accept_or_escalate, finish, load_work
from workers.attempts import attempt_from_error
from workers.batches.client import ProviderBatch
from workers.batches.lines import LineResult, Results, read_results
from workers.chat import CallError, Completion
from workers.job_settings import TeacherSettings
from workers.response_cache import cache_key, cache_row, caches
from workers.settings import TierConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Ingested:
    """What one batch's results changed, for the task to act on once committed."""

    records: list[Record] = field(default_factory=list)
    retry_in_batch: list[int] = field(default_factory=list)
    retry_online: list[int] = field(default_factory=list)
    already: bool = False  # an earlier poll had committed them


def answered_record(
    item: WorkItem, tier: TierConfig, completion: Completion, batch_id: int
) -> Record:
    """One answered line, recorded exactly as an online answer is (workers.answer), at the
    batch price and marked with its batch; its answer goes into the response cache (at
    the price paid) when the tier and the job allow it, for any later job, batch or online."""
    record = accept_or_escalate(item, tier.at_batch_price(), completion, escalation=None)
    for attempt in record.attempts:
        attempt["batch_id"] = batch_id
    if caches(tier, item.job.cache):
        key = cache_key(tier, item.chat_request())
        record.cache = cache_row(tier, key, completion, record.attempts[-1]["cost_usd"])
    return record


def load_held_work(engine: Engine, prompt_ids: Sequence[int], tier: str) -> list[WorkItem]:
    """`load_work` for a batch's prompts, a chunk of ids at a time (up to 50,000 of them)."""
    return [item for chunk in chunks(prompt_ids) for item in load_work(engine, chunk, tier)]


def ingest(
    engine: Engine,
    batch_id: int,
    provider: ProviderBatch,
    files: tuple[bytes, bytes],
    *,
    tier: TierConfig,
    latency_ms: float,
) -> Ingested:
    """Commit a terminal batch's results (`files`: its output and error files' bytes)."""
    with engine.connect() as conn:
        held = held_prompts(conn=conn, batch_id=batch_id)
    work = load_held_work(engine, held, tier.name)
    results = read_results(*files, expected=set(held), latency_ms=latency_ms)
    with engine.begin() as conn:
        row = batch_row(conn=conn, batch_id=batch_id, lock=True)
        if row is None or row.ingested_at is not None:
            return Ingested(already=True)
        tries = failed_batch_tries(conn=conn, prompt_ids=held)
        outcome = _sort_lines(work, results, provider, tier, batch_id, tries)
        for start in range(0, len(outcome.records), CHUNK):  # IN lists within SQLite's limit
            write_records(conn, outcome.records[start : start + CHUNK])
        release_prompts(conn=conn, batch_id=batch_id, prompt_ids=outcome.retry_in_batch)
        update_batch(conn=conn, batch_id=batch_id, **_row_values(provider, outcome, results))
    return outcome


def _sort_lines(
    work: Sequence[WorkItem],
    results: Results,
    provider: ProviderBatch,
    tier: TierConfig,
    batch_id: int,
    tries: dict[int, int],
) -> Ingested:
    outcome = Ingested()
    online = _job_of(work).batch_fallback == "online" if work else False
    for item in work:
        result = results.by_prompt.get(item.prompt_id) or _missing(provider)
        if result.completion is not None:
            outcome.records.append(answered_record(item, tier, result.completion, batch_id))
            continue
        assert result.error is not None
        refused = provider.status == BatchStatus.FAILED and item.prompt_id not in results.by_prompt
        attempts = [] if refused else [_error_attempt(item, tier, result.error, batch_id)]
        used = tries.get(item.prompt_id, 0) + len(attempts)
        if online:
            outcome.records.append(Record(item.job_id, item.prompt_id, attempts))
            outcome.retry_online.append(item.prompt_id)
        elif refused or used >= tier.batch_max_tries:
            error = str(result.error) + ("" if refused else f" (after {used} batch tries)")
            outcome.records.append(_failed(item, attempts, tier, error))
        else:
            outcome.records.append(Record(item.job_id, item.prompt_id, attempts))
            outcome.retry_in_batch.append(item.prompt_id)
    return outcome


def _job_of(work: Sequence[WorkItem]) -> TeacherSettings:
    job = work[0].job
    assert isinstance(job, TeacherSettings)
    return job


def _missing(provider: ProviderBatch) -> LineResult:
    """A held prompt with no line in either file."""
    if provider.status == BatchStatus.FAILED:
        message = "; ".join(_shown_error(e) for e in provider.errors) or "no reason given"
        text = f"the provider refused the batch input file: {message}"
    elif provider.status in (BatchStatus.EXPIRED, BatchStatus.CANCELLED):
        text = f"batch_{provider.status}: the batch ended before this line was answered"
    else:
        text = "the batch completed without a result line for this prompt"
    kind = AttemptStatus.TIMEOUT if provider.status == BatchStatus.EXPIRED else AttemptStatus.ERROR
    return LineResult(error=CallError(text, status=kind, latency_ms=0.0))


def _shown_error(error: dict[str, Any]) -> str:
    where = f"line {error['line']}: " if error.get("line") else ""
    return f"{where}{error.get('message') or error.get('code')}"


def _error_attempt(
    item: WorkItem, tier: TierConfig, error: CallError, batch_id: int
) -> dict[str, Any]:
    return attempt_from_error(item.prompt_id, tier, error, batch_id=batch_id)


def _failed(item: WorkItem, attempts: list[dict[str, Any]], tier: TierConfig, error: str) -> Record:
    return finish(item, attempts, status=PromptStatus.FAILED, final_tier=tier.name, error=error)


def _row_values(provider: ProviderBatch, outcome: Ingested, results: Results) -> dict[str, Any]:
    answered = [
        record
        for record in outcome.records
        if record.finished and (record.finish or {}).get("status") == PromptStatus.SUCCEEDED
    ]
    now = utcnow()
    return {
        "status": BatchStatus(provider.status),
        "output_file_id": provider.output_file_id,
        "error_file_id": provider.error_file_id,
        "provider_completed": provider.completed,
        "provider_failed": provider.failed,
        "answered": len(answered),
        "errored": len(outcome.records) - len(answered),
        "ignored": len(results.ignored),
        "cost_usd": sum(a["cost_usd"] for record in answered for a in record.attempts),
        "errors": provider.errors or None,
        "finished_at": now,
        "ingested_at": now,
    }
