"""Starting a job's batches: claim the prompts no batch holds, pack them into input files
within the tier's limits, upload each and create its batch.

Each file's prompts are claimed (a `batches` row, status preparing) and committed before
anything is uploaded, so a second packer (a redelivered message, `distillery resume`)
never sends them again. A row left preparing by a worker that died before recording the
provider's batch id is finished by the next packer: it first asks the provider for a batch
carrying the row's id in its metadata, and creates one only if there is none, so a batch is
never paid for twice.

The prompts the response cache knows are answered from it first (`workers.batches.cached`):
only the misses are claimed and packed, and a job the cache answers whole makes no batch."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from models import BatchStatus
from models.batches import claim_batch, held_prompts, job_batches, unclaimed_prompts, update_batch
from models.outcomes import Record
from models.types import utcnow
from workers.answer import WorkItem
from workers.batches.cached import answer_cache_hits
from workers.batches.client import BatchClient, BatchRejected, ProviderBatch
from workers.batches.ingest import load_held_work
from workers.batches.lines import Line, pack, request_line
from workers.settings import TierConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Started:
    """Batches now at the provider (to poll), batches it refused at once (to ingest), and
    the prompts the response cache answered (committed; their follow-ups are to send)."""

    polling: list[int] = field(default_factory=list)
    refused: list[tuple[int, ProviderBatch]] = field(default_factory=list)
    cached: list[Record] = field(default_factory=list)


def request_lines(work: Sequence[WorkItem], tier: TierConfig) -> list[Line]:
    """The input-file line of each prompt to send (the cache's misses)."""
    return [request_line(item, tier) for item in work]


def start_job_batches(
    engine: Engine, job_id: int, tier: TierConfig, client: BatchClient
) -> Started:
    """Finish the job's batches left preparing, answer the rest of its unanswered prompts
    that the response cache knows, then pack and start the others."""
    started = Started()
    with engine.connect() as conn:
        preparing = [
            row.id for row in job_batches(conn=conn, job_id=job_id)
            if row.status == BatchStatus.PREPARING
        ]  # fmt: skip
        unclaimed = unclaimed_prompts(conn=conn, job_id=job_id)
    for batch_id in preparing:
        _start(engine, job_id, batch_id, _lines_held(engine, batch_id, tier), client, started)
    split = answer_cache_hits(engine, load_held_work(engine, unclaimed, tier.name), tier)
    started.cached = split.hits
    lines = request_lines(split.misses, tier)
    limits = {"max_requests": tier.batch_max_requests, "max_bytes": tier.batch_max_bytes}
    for group in pack(lines, **limits):
        with engine.begin() as conn:
            batch_id, held = claim_batch(
                conn=conn,
                job_id=job_id,
                tier=tier.name,
                model=tier.model,
                prompt_ids=[pid for pid, _ in group],
            )
        if not held:
            continue
        kept = set(held)
        lines_kept = [line for line in group if line[0] in kept]
        _start(engine, job_id, batch_id, lines_kept, client, started)
    return started


def _lines_held(engine: Engine, batch_id: int, tier: TierConfig) -> list[Line]:
    with engine.connect() as conn:
        held = held_prompts(conn=conn, batch_id=batch_id)
    return request_lines(load_held_work(engine, held, tier.name), tier)


def _start(
    engine: Engine,
    job_id: int,
    batch_id: int,
    lines: list[Line],
    client: BatchClient,
    started: Started,
) -> None:
    if not lines:  # every prompt it claimed was answered or cancelled meanwhile
        _record(engine, batch_id, ProviderBatch(None, BatchStatus.COMPLETED), ingested=True)
        return
    try:
        provider = client.find(batch_id) or _create(client, job_id, batch_id, lines)
    except BatchRejected as exc:
        log.error("job %s: the provider refused batch %s: %s", job_id, batch_id, exc)
        refused = ProviderBatch(None, BatchStatus.FAILED, errors=[{"message": str(exc)}])
        started.refused.append((batch_id, refused))
        return
    _record(engine, batch_id, provider)
    log.info(
        "job %s: batch %s (%s) started with %d lines", job_id, batch_id, provider.id, len(lines)
    )
    started.polling.append(batch_id)


def _create(client: BatchClient, job_id: int, batch_id: int, lines: list[Line]) -> ProviderBatch:
    content = b"".join(line for _, line in lines)
    file_id = client.upload(f"distillery-job{job_id}-batch{batch_id}.jsonl", content)
    return client.create(file_id, batch_id, job_id)


def _record(
    engine: Engine, batch_id: int, provider: ProviderBatch, *, ingested: bool = False
) -> None:
    values = {
        "provider_batch_id": provider.id,
        "input_file_id": provider.input_file_id,
        "status": BatchStatus(provider.status),
        "submitted_at": utcnow(),
    }
    if ingested:
        values.update(finished_at=utcnow(), ingested_at=utcnow())
    with engine.begin() as conn:
        update_batch(conn=conn, batch_id=batch_id, **values)
