"""The SQL that docs/querying.md shows for the common questions about results.

The doc quotes these strings verbatim and tests/test_queries.py runs each of them against
SQLite and PostgreSQL with known rows, so the doc cannot show a query that does not work.
Each runs unchanged on both databases, except where one needs its own spelling (`postgresql`).

Portable on purpose: CASE WHEN instead of FILTER or boolean sums (prompts.fell_back is an
integer on SQLite); ROUND over CAST(... AS NUMERIC) (PostgreSQL has no ROUND(float, n));
CAST instead of `::`; parameters written `:job_id`, which SQLAlchemy's text(), psql
(`\\set job_id 7`) and the sqlite3 shell (`.parameter set :job_id 7`) all understand.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ExampleQuery:
    title: str
    sql: str  # runs on SQLite, and on PostgreSQL too unless `postgresql` is set
    postgresql: str | None = None

    def sql_for(self, dialect: str) -> str:
        """The text to run on a database whose SQLAlchemy dialect name is `dialect`."""
        if dialect == "postgresql" and self.postgresql is not None:
            return self.postgresql
        return self.sql


# Days are UTC days. SQLite stores the UTC wall time, so date() is the UTC date; PostgreSQL
# would render a timestamptz in the session's time zone, hence AT TIME ZONE 'UTC'.
_COST_PER_TIER_PER_DAY = """\
SELECT {day} AS day,
       tier,
       COUNT(*) AS calls,
       SUM(prompt_tokens) AS prompt_tokens,
       SUM(completion_tokens) AS completion_tokens,
       ROUND(CAST(SUM(cost_usd) AS NUMERIC), 6) AS cost_usd
FROM attempts
GROUP BY {day}, tier
ORDER BY day, tier;"""

COST_PER_TIER_PER_DAY = ExampleQuery(
    title="Cost per tier per day",
    sql=_COST_PER_TIER_PER_DAY.format(day="date(started_at)"),
    postgresql=_COST_PER_TIER_PER_DAY.format(
        day="to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    ),
)

FALLBACK_RATE_PER_JOB = ExampleQuery(
    title="Fallback rate per job",
    sql="""\
SELECT j.id AS job_id,
       j.name,
       COUNT(*) AS answered,
       SUM(CASE WHEN p.fell_back THEN 1 ELSE 0 END) AS fell_back,
       ROUND(100.0 * SUM(CASE WHEN p.fell_back THEN 1 ELSE 0 END) / COUNT(*), 1)
         AS fallback_pct,
       (SELECT COUNT(*) FROM fallbacks f WHERE f.job_id = j.id) AS escalations
FROM jobs j
JOIN prompts p ON p.job_id = j.id
WHERE j.mode = 'route'
  AND p.status IN ('succeeded', 'failed')
GROUP BY j.id, j.name
ORDER BY j.id;""",
)

SLOWEST_PROMPTS = ExampleQuery(
    title="Slowest prompts of a job",
    sql="""\
SELECT p.idx,
       p.custom_id,
       p.final_tier,
       p.fell_back,
       p.latency_ms,
       (SELECT COUNT(*) FROM attempts a WHERE a.prompt_id = p.id) AS attempts
FROM prompts p
WHERE p.job_id = :job_id
  AND p.latency_ms IS NOT NULL
ORDER BY p.latency_ms DESC, p.idx
LIMIT 10;""",
)

FAILED_PROMPTS = ExampleQuery(
    title="Failed prompts of a job, with their errors",
    sql="""\
SELECT p.idx,
       p.custom_id,
       p.routed_tier,
       p.final_tier,
       (SELECT COUNT(*) FROM attempts a WHERE a.prompt_id = p.id) AS attempts,
       p.error
FROM prompts p
WHERE p.job_id = :job_id
  AND p.status = 'failed'
ORDER BY p.idx;""",
)

EXAMPLE_QUERIES = (
    COST_PER_TIER_PER_DAY,
    FALLBACK_RATE_PER_JOB,
    SLOWEST_PROMPTS,
    FAILED_PROMPTS,
)
