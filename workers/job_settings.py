"""A job's settings, frozen at submit: built once from the config and the submit's flags,
stored as JSON in `jobs.params`, and validated once when a worker loads a message. Every
step of a job reads these, never the live config, so a config edit mid-job changes nothing.

Rows written before these models existed hold the same keys, so they load unchanged."""

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from models import JobMode
from workers.chat import ChatRequest, Completion
from workers.confidence import confidence
from workers.settings import (
    CONFIDENCE_THRESHOLD,
    DEFAULT_SYSTEM_PROMPT,
    DEFAULT_TEMPERATURE,
    UNKNOWN_CONFIDENCE,
    Settings,
)


class JobSettings(BaseModel):
    """What every job's calls share: how a prompt becomes a request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system_prompt: str | None = None
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0)
    logprobs: bool = False
    # Sent as the request's `seed`, and part of its cache key: another seed, another sample.
    seed: int | None = None
    # Answer a request seen before from the response cache (`submit --no-cache`: False).
    cache: bool = True
    # Caps in USD on what the job's answer calls may cost, all together and per tier
    # (workers/budget.py); None / absent: no cap.
    max_cost_usd: float | None = Field(None, gt=0)
    tier_max_cost_usd: dict[str, float] = Field(default_factory=dict)

    def request(self, messages: list[dict[str, Any]]) -> ChatRequest:
        """The request a prompt becomes: the job's system prompt first, unless the prompt
        brings its own."""
        system = self.system_prompt
        if system and not any(m.get("role") in ("system", "developer") for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        extra = {"seed": self.seed} if self.seed is not None else {}
        return ChatRequest(messages, self.temperature, self.max_tokens, self.logprobs, extra)

    @property
    def budgeted(self) -> bool:
        return self.max_cost_usd is not None or bool(self.tier_max_cost_usd)

    def with_tier_caps(self, settings: Settings) -> "Self":
        """These settings with the per-tier caps of the tiers they call (`max_cost_usd` on
        a tier), frozen like the rest."""
        caps = {
            name: tier.max_cost_usd
            for name in self.tiers
            if (tier := settings.tiers.get(name)) is not None and tier.max_cost_usd is not None
        }
        return self.model_copy(update={"tier_max_cost_usd": caps}) if caps else self

    def next_tier(self, tier: str) -> str | None:
        """Where a prompt goes when `tier` gives up on it: nowhere, unless routed."""
        return None

    def confidence(self, completion: Completion) -> float | None:
        """The answer's confidence, for jobs that judge their answers (None: not judged)."""
        return None

    @property
    def escalation_threshold(self) -> float | None:
        """A judged answer below this escalates (None: never)."""
        return None

    @property
    def tiers(self) -> tuple[str, ...]:
        """Every tier this job may call."""
        raise NotImplementedError

    def to_params(self) -> dict[str, Any]:
        return _without_unset_extras(self.model_dump(mode="json"))


class TeacherSettings(JobSettings):
    """Every prompt goes to the teacher tier, and the finished job is reduced."""

    tier: str
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    # "batch": through the provider's Batch API (workers/batches), at its price.
    via: Literal["online", "batch"] = "online"
    # Where a batch's errored, expired or cancelled lines are retried: a new batch, or
    # online calls to the same tier.
    batch_fallback: Literal["batch", "online"] = "batch"

    @classmethod
    def from_config(cls, settings: Settings, **overrides: Any) -> "TeacherSettings":
        config = settings.teacher
        values = {
            "tier": config.tier,
            "system_prompt": config.system_prompt,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
            "max_cost_usd": config.max_cost_usd,
        }
        values = _overridden(values, overrides)
        tier = settings.tiers.get(str(values["tier"]))
        values.setdefault("via", "batch" if tier is not None and tier.batch else "online")
        return cls(**values).with_tier_caps(settings)

    @property
    def batched(self) -> bool:
        return self.via == "batch"

    @property
    def tiers(self) -> tuple[str, ...]:
        return (self.tier,)


class RouteSettings(JobSettings):
    """A router picks each prompt's tier; a doubtful answer escalates along `fallback`."""

    router: str = "rules"  # checked by `validate_router` at submit, with a helpful message
    tiers_in_order: tuple[str, ...] = Field((), alias="tiers")  # cheapest first
    fallback: tuple[str, ...] = ()
    threshold: float | None = Field(CONFIDENCE_THRESHOLD, ge=0, le=1)
    confidence_method: Literal["geometric_mean", "seed"] = "geometric_mean"
    unknown_confidence: float = Field(UNKNOWN_CONFIDENCE, ge=0, le=1)
    classifier: str | None = None
    logprobs: bool = True

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @classmethod
    def from_config(
        cls, settings: Settings, *, router: str | None = None, **overrides: Any
    ) -> "RouteSettings":
        config = settings.router
        values = {
            "router": router or config.strategy,
            "tiers": tuple(settings.tiers),
            "fallback": tuple(config.fallback),
            "threshold": config.confidence_threshold,
            "confidence_method": config.confidence_method,
            "unknown_confidence": config.unknown_confidence,
            "classifier": config.classifier,
            "max_cost_usd": config.max_cost_usd,
        }
        job = cls(**_overridden(values, overrides))
        return job.with_tier_caps(settings)

    @property
    def tiers(self) -> tuple[str, ...]:
        return self.tiers_in_order

    def next_tier(self, tier: str) -> str | None:
        """The first tier of the fallback chain above `tier` (tiers ranked by config order)."""
        order = self.tiers_in_order
        if tier not in order:
            return None
        rank = order.index(tier)
        above = [t for t in self.fallback if t in order and order.index(t) > rank]
        return above[0] if above else None

    def confidence(self, completion: Completion) -> float | None:
        if not self.logprobs:
            return None
        return confidence(
            completion.logprobs, method=self.confidence_method, unknown=self.unknown_confidence
        )

    @property
    def escalation_threshold(self) -> float | None:
        return self.threshold

    def to_params(self) -> dict[str, Any]:
        return _without_unset_extras(self.model_dump(mode="json", by_alias=True))


AnyJobSettings = TeacherSettings | RouteSettings


# Settings added after jobs were first stored: left out of `jobs.params` at their defaults,
# so a stored row written before them is stored again unchanged.
_LATER_DEFAULTS: dict[str, Any] = {
    "seed": None,
    "cache": True,
    "max_cost_usd": None,
    "tier_max_cost_usd": {},
}


def _without_unset_extras(params: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in params.items()
        if key not in _LATER_DEFAULTS or value != _LATER_DEFAULTS[key]
    }


def _overridden(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Config values, unless the submit's flags set them (None: the flag was not given)."""
    return {**values, **{key: value for key, value in overrides.items() if value is not None}}


def load_job_settings(mode: JobMode | str, params: dict[str, Any]) -> AnyJobSettings:
    """A stored job's settings (raises pydantic's ValidationError for a corrupt row)."""
    if JobMode(mode) in (JobMode.TEACHER, JobMode.SHADOW):
        return TeacherSettings.model_validate(params)
    return RouteSettings.model_validate(params)
