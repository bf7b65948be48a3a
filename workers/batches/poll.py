"""One look at a provider batch, from a countdown task on the control queue: no worker
thread waits for a batch, and each poll that finds it still running sends the next one, a
little later each time (1.5x, up to the tier's `batch_poll_max_s`; 2x after a failed look).
A terminal batch's files are downloaded and its results committed (`ingest`)."""

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from models import BatchStatus, JobStatus
from models.batches import batch_row, count_poll, job_params
from models.tables import TERMINAL_BATCH_STATUSES
from models.types import utcnow
from workers.batches.client import BatchClient, BatchProviderError, BatchRejected, ProviderBatch
from workers.batches.ingest import Ingested, ingest
from workers.settings import TierConfig

log = logging.getLogger(__name__)

BACKOFF = 1.5
FAILED_BACKOFF = 2.0


@dataclass(frozen=True, slots=True)
class Polled:
    next_delay_s: float | None = None  # poll again after this long; None: this one is done
    ingested: Ingested | None = None


def poll_batch(
    engine: Engine, batch_id: int, delay_s: float, tier: TierConfig, client: BatchClient
) -> Polled:
    with engine.connect() as conn:
        row = batch_row(conn=conn, batch_id=batch_id)
        job = job_params(conn=conn, job_id=row.job_id) if row is not None else None
    if row is None or row.ingested_at is not None or row.provider_batch_id is None:
        return Polled()  # done, or still preparing (its packer will send its first poll)
    if job is not None and job[1] == JobStatus.CANCELLED and row.status != BatchStatus.CANCELLING:
        cancel_at_provider(engine, row, client)
    later = min(tier.batch_poll_max_s, delay_s * BACKOFF)
    try:
        provider = client.retrieve(row.provider_batch_id)
        if provider.status not in TERMINAL_BATCH_STATUSES:
            _count(engine, batch_id, provider)
            return Polled(next_delay_s=later)
        files = (client.content(provider.output_file_id), client.content(provider.error_file_id))
    except BatchProviderError as exc:
        after_failure = min(tier.batch_poll_max_s, delay_s * FAILED_BACKOFF)
        log.warning("batch %s: no answer from the provider (%s); next look in %.0f s",
                    batch_id, exc, after_failure)  # fmt: skip
        _count(engine, batch_id, None)
        return Polled(next_delay_s=after_failure)
    _count(engine, batch_id, provider)
    submitted = row.submitted_at or row.created_at
    latency_ms = (utcnow() - submitted).total_seconds() * 1000
    return Polled(
        ingested=ingest(engine, batch_id, provider, files, tier=tier, latency_ms=latency_ms)
    )


def _count(engine: Engine, batch_id: int, provider: ProviderBatch | None) -> None:
    values: dict[str, Any] = {}
    if provider is not None:
        values = {
            "status": BatchStatus(provider.status),
            "provider_completed": provider.completed,
            "provider_failed": provider.failed,
        }
    with engine.begin() as conn:
        count_poll(conn=conn, batch_id=batch_id, **values)


def cancel_at_provider(engine: Engine, row: Any, client: BatchClient) -> bool:
    """Ask the provider to stop a batch; False when it could not be told (or it had ended)."""
    batch_id, provider_id = row.id, row.provider_batch_id
    if provider_id is None or row.status in TERMINAL_BATCH_STATUSES:
        return False
    try:
        provider = client.cancel(provider_id)
    except (BatchProviderError, BatchRejected) as exc:
        log.warning("batch %s: could not cancel it at the provider: %s", batch_id, exc)
        return False
    with engine.begin() as conn:
        count_poll(conn=conn, batch_id=batch_id, status=BatchStatus(provider.status))
    return True
