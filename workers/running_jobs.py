"""Whether a job still wants calls, as the call loop asks before each call: cached briefly so
hundreds of calls in flight cost one query, and fresh enough that a cancel stops them."""

import asyncio

from sqlalchemy.engine import Engine

from models.work import job_is_running
from workers.ttlcache import TtlCache

# How stale a worker's view of a job's status may be: a cancel stops its calls within this.
JOB_STATUS_TTL_S = 0.1


class RunningJobs:
    """Checked right before each call, so a cancel stops the calls that were waiting. The
    answer is re-read at most every `ttl_s` per job per process (one query however many
    calls are in flight), so a cancel reaches every worker within `ttl_s` plus a query."""

    def __init__(self, engine: Engine, ttl_s: float = JOB_STATUS_TTL_S) -> None:
        self.engine = engine
        self.statuses: TtlCache[int, bool] = TtlCache(ttl_s)

    async def running(self, job_id: int) -> bool:
        return await self.statuses.get(job_id, lambda: asyncio.to_thread(self._read, job_id))

    def _read(self, job_id: int) -> bool:
        with self.engine.connect() as conn:
            return job_is_running(conn=conn, job_id=job_id)
