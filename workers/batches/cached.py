"""A batch job's response cache: before its prompts are packed, the ones the cache knows
are answered from it (a `cached` attempt, cost 0, `cached_from` the attempt that paid, the
prompt terminal, exactly as an online hit), and only the misses go into a batch file.

The lookups are the shared `lookup_answers` (one indexed query per 500 keys), and the hits
are committed with the workers' group commit before anything is claimed, so a prompt the
cache answered is never claimed by a batch."""

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from models.batches import CHUNK
from models.outcomes import Record, write_records
from workers.answer import WorkItem, record_from_cache
from workers.response_cache import cache_key, caches, lookup_answers
from workers.settings import TierConfig


@dataclass(slots=True)
class Split:
    """A batch job's open prompts: those still to send, and the committed cache hits."""

    misses: list[WorkItem] = field(default_factory=list)
    hits: list[Record] = field(default_factory=list)


def answer_cache_hits(engine: Engine, work: Sequence[WorkItem], tier: TierConfig) -> Split:
    """Commit the answers the cache has for `work` (when the tier and the job allow it),
    and hand back the rest."""
    keys = {item.prompt_id: cache_key(tier, item.chat_request()) for item in work
            if caches(tier, item.job.cache)}  # fmt: skip
    found = lookup_answers(engine, list(keys.values())) if keys else {}
    split = Split()
    for item in work:
        cached = found.get(keys.get(item.prompt_id, ""))
        if cached is None:
            split.misses.append(item)
        elif cached.row.prompt_id != item.prompt_id:  # its own answer: it is done already
            split.hits.append(record_from_cache(item, tier, cached, escalation=None))
    for start in range(0, len(split.hits), CHUNK):  # IN lists within SQLite's limit
        with engine.begin() as conn:
            write_records(conn, split.hits[start : start + CHUNK])
    return split
