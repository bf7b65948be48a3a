"""`distillery submit FILE --dry-run`: what a job would cost, before anything is stored.

The file is validated exactly as a submit validates it (every bad line listed, prompts fitted
to their tier's context), then each prompt's request is built as the workers build it and
counted with the tier's token counter (`workers.tokens`): its prompt tokens, and `max_tokens`
of answer (256 when the job sets none — an estimate, not a bound). Online cost is at the
tier's prices, batch cost at its `batch_discount`. The response cache is asked for every
request's key (one indexed query per 500 prompts): what it already answers costs nothing.

Nothing is written: no job, no prompts, no message, and no database file or table is made."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from models import JobMode
from producer.context_window import context_limit, fit_to_context
from producer.readers import read_prompts
from producer.submit import job_settings
from workers.response_cache import cache_key, caches, lookup_answers
from workers.settings import Settings, TierConfig
from workers.tokens import DEFAULT_COMPLETION_ESTIMATE, chat_tokens, counter_for


@dataclass
class TierEstimate:
    tier: str
    prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    online_usd: float = 0.0
    batch_usd: float = 0.0
    cached: int = 0  # prompts the cache already answers
    cached_usd: float = 0.0  # what their answers cost when they were paid for
    cached_online_usd: float = 0.0  # their share of the estimates, online and batch
    cached_batch_usd: float = 0.0
    # Each prompt's cache key with its estimates, online and batch.
    keyed: list[tuple[str, float, float]] = field(default_factory=list, repr=False)

    def add(self, tier: TierConfig, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompts += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.online_usd += tier.cost_usd(prompt_tokens, completion_tokens)
        self.batch_usd += tier.batch_cost_usd(prompt_tokens, completion_tokens)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "prompts": self.prompts,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "online_usd": round(self.online_usd, 6),
            "batch_usd": round(self.batch_usd, 6),
            "cached": self.cached,
            "cached_usd": round(self.cached_usd, 6),
            # What is left to pay: the estimates of the prompts the cache does not answer.
            "online_after_cache_usd": round(self.online_usd - self.cached_online_usd, 6),
            "batch_after_cache_usd": round(self.batch_usd - self.cached_batch_usd, 6),
        }


def preview(
    path: Path,
    *,
    mode: JobMode,
    settings: Settings,
    engine: Engine,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """The estimate as plain data (`--json` prints it as is)."""
    if mode != JobMode.TEACHER:
        from producer.errors import UserError
        from workers.errors import ExitCode

        raise UserError(
            "--dry-run estimates teacher jobs (every prompt on one tier); a route job's "
            "tiers are decided per prompt: try `distillery cost simulate`",
            ExitCode.USAGE,
        )
    prompts = read_prompts(path)  # raises InputFileError listing every bad line
    job = job_settings(mode, settings, router=None, overrides=overrides)
    fitted = fit_to_context(prompts, limit=context_limit(job, settings), job=job, source=str(path))
    tier = settings.require_tier(job.tiers[0])
    estimate = TierEstimate(tier.name)
    counter = counter_for(tier)
    completion = job.max_tokens or DEFAULT_COMPLETION_ESTIMATE
    use_cache = caches(tier, job.cache)
    for prompt in fitted.prompts:
        request = job.request(prompt.messages)
        prompt_tokens = chat_tokens(request.messages, counter)
        estimate.add(tier, prompt_tokens, completion)
        if use_cache:
            online = tier.cost_usd(prompt_tokens, completion)
            batch = tier.batch_cost_usd(prompt_tokens, completion)
            estimate.keyed.append((cache_key(tier, request), online, batch))
    _count_cached(engine, tier, estimate)
    row = estimate.as_dict()
    return {
        "file": str(path),
        "mode": mode.value,
        "prompts": len(fitted.prompts),
        "max_tokens": job.max_tokens,
        "completion_estimate_per_prompt": completion,
        "completion_is_bound": job.max_tokens is not None,
        "cache": use_cache,
        "max_cost_usd": job.max_cost_usd,
        "tiers": [row],
        "total": {k: v for k, v in row.items() if k != "tier"},
        "stored": False,
    }


def _count_cached(engine: Engine, tier: TierConfig, estimate: TierEstimate) -> None:
    if not estimate.keyed or not _has_cache_table(engine):
        return
    found = lookup_answers(engine, [key for key, _, _ in estimate.keyed])
    for key, online, batch in estimate.keyed:
        answer = found.get(key)
        if answer is not None:
            estimate.cached += 1
            estimate.cached_usd += answer.saved_usd
            estimate.cached_online_usd += online
            estimate.cached_batch_usd += batch


def _has_cache_table(engine: Engine) -> bool:
    """Whether there is a cache to ask, without creating a database (SQLite makes its file
    on the first connection) or a table."""
    database = engine.url.database
    on_disk = engine.dialect.name == "sqlite" and database and database != ":memory:"
    if on_disk and not Path(str(database)).exists():
        return False
    return inspect(engine).has_table("response_cache")


ROWS = (
    ("prompts", "prompts", "{:,}"),
    ("prompt tokens", "prompt_tokens", "{:,}"),
    ("completion tokens", "completion_tokens", "{:,}"),
    ("online $", "online_usd", "{:,.4f}"),
    ("batch $", "batch_usd", "{:,.4f}"),
    ("answered by the cache", "cached", "{:,}"),
    ("online $ after the cache", "online_after_cache_usd", "{:,.4f}"),
    ("batch $ after the cache", "batch_after_cache_usd", "{:,.4f}"),
)


def print_preview(out: Any, data: dict[str, Any]) -> None:
    from rich.table import Table

    # A column per tier, then the total: narrow enough for any terminal.
    columns = [*data["tiers"], {"tier": "total", **data["total"]}]
    table = Table(
        "",
        *(column["tier"] for column in columns),
        title=f"dry run: {data['file']} ({data['prompts']:,} prompts; nothing stored)",
    )
    for label, key, form in ROWS:
        table.add_row(label, *(form.format(column[key]) for column in columns))
    out.print(table)
    per = data["completion_estimate_per_prompt"]
    if data["completion_is_bound"]:
        out.print(f"completion tokens: at most max_tokens = {per} per prompt (an upper bound)")
    else:
        out.print(
            f"completion tokens: estimated at {per} per prompt (no max_tokens: set --max-tokens "
            "for an upper bound, and for a --max-cost that cannot be passed)"
        )
    if not data["cache"]:
        out.print("the response cache is off for this job (--no-cache or the tier's cache = false)")
    out.print(f"submit it: distillery submit {data['file']} --mode teacher --wait")
