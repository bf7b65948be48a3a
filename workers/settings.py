"""One settings object, from the environment and an optional TOML file.

`REDIS_URL`, `DATABASE_URL` and `DISTILLERY_CONFIG` (default `./distillery.toml`) come from
the environment; tiers, teacher, reducer and router settings from the TOML file. Tiers are
data: any names, any number. API keys are never stored here, only the *name* of the
environment variable that holds each one.
"""

import itertools
import math
import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from workers.errors import BadConfig

DEFAULT_CONFIG_PATH = "distillery.toml"
SIMULATOR_URL = "http://127.0.0.1:8900/v1"
# Defaults that a config and a job's frozen settings share (workers.job_settings).
DEFAULT_TEMPERATURE = 0.7
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
CONFIDENCE_THRESHOLD = 0.8
# The default calls in flight per worker (TierConfig.calls_in_flight) stay within these.
MIN_DEFAULT_CALLS_IN_FLIGHT = 16
MAX_DEFAULT_CALLS_IN_FLIGHT = 256
# The confidence of an answer that came without logprobs: below the threshold, so it escalates.
UNKNOWN_CONFIDENCE = 0.5


class ConfigError(BadConfig):
    """A configuration problem a user can fix; the message says where and how."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierConfig(_Strict):
    # The tier's name: its key under [tiers], filled in by Settings (never written in the file).
    name: str = "tier"
    base_url: HttpUrl
    model: str
    api_key_env: str | None = None
    input_per_1k: float = Field(0.0, ge=0)
    output_per_1k: float = Field(0.0, ge=0)
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    # How far ahead of the steady rpm/tpm schedule a call may go (workers/ratelimit.py):
    # at most the provider's burst allowance, less the jitter of the calls' arrival; 0,
    # the default, spaces calls evenly, which every provider accepts.
    burst_s: float = Field(0.0, ge=0, le=60)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    # Calls in flight to this tier per worker process; None: `calls_in_flight` picks it.
    concurrency: int | None = Field(None, gt=0)
    context_tokens: int | None = Field(None, gt=0)
    # What `submit` does with a prompt estimated over context_tokens: refuse the whole file
    # (nothing stored), or keep the head of the prompt's last user message and say so.
    context_policy: Literal["reject", "truncate"] = "reject"
    # How the tier counts tokens for submit's context check, the rate limiter and the
    # reducer (workers/tokens.py): the model's tiktoken encoding, ~4 characters a token, or
    # "auto": tiktoken where the model's encoding is installed, characters otherwise.
    tokenizer: Literal["auto", "tiktoken", "chars"] = "auto"
    # The response cache (workers/response_cache.py): false, and this tier's calls neither
    # read nor write it (e.g. a model whose answers must be fresh every time).
    cache: bool = True
    # A cap on what one job may spend on this tier, in USD (workers/budget.py); None: none.
    max_cost_usd: float | None = Field(None, gt=0)
    # The provider's Batch API (workers/batches): teacher jobs on this tier go through it
    # by default (`submit --via batch` asks for it on any tier).
    batch: bool = False
    # The share taken off the online price for a batch line (OpenAI: half price).
    batch_discount: float = Field(0.5, ge=0, le=1)
    # One input file's limits (OpenAI: 50,000 requests, 200 MB, one model per file).
    batch_max_requests: int = Field(50_000, gt=0)
    batch_max_bytes: int = Field(200 * 1024 * 1024, gt=0)
    # A batch's first poll comes after batch_poll_s; each later one waits 1.5 times longer,
    # up to batch_poll_max_s (and twice as long after a failed poll).
    batch_poll_s: float = Field(30.0, gt=0)
    batch_poll_max_s: float = Field(600.0, gt=0)
    # A line that errored (or was not reached) in this many batches ends failed.
    batch_max_tries: int = Field(3, ge=1)

    def at_batch_price(self) -> "TierConfig":
        """This tier priced as its batch lines are billed."""
        keep = 1.0 - self.batch_discount
        return self.model_copy(
            update={
                "input_per_1k": self.input_per_1k * keep,
                "output_per_1k": self.output_per_1k * keep,
            }
        )

    @property
    def calls_in_flight(self) -> int:
        """`concurrency`, or by default as many calls as the tier can have open at once: at
        `rpm` calls a minute, each lasting at most `timeout_s`, never more than rpm/60 x
        timeout_s are open across all its workers (Little's law), so more would only wait on
        the limiter. Within 16..256; 256 without an rpm (what one worker's event loop serves
        best against a 200 ms model: docs/performance.md)."""
        if self.concurrency is not None:
            return self.concurrency
        if self.rpm is None:
            return MAX_DEFAULT_CALLS_IN_FLIGHT
        open_at_once = math.ceil(self.rpm / 60 * self.timeout_s)
        return max(MIN_DEFAULT_CALLS_IN_FLIGHT, min(MAX_DEFAULT_CALLS_IN_FLIGHT, open_at_once))

    def api_key(self) -> str:
        """The key from the environment variable the config names (never from the file)."""
        if self.api_key_env is None:
            return "not-needed"  # local servers (simulator, llama.cpp) ignore it
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(
                f"tier '{self.name}' reads its API key from ${self.api_key_env}, which is not set; "
                f"export {self.api_key_env}=... (or remove api_key_env for a local server)"
            )
        return key

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Priced by this tier's config, from the usage the provider returned."""
        return (prompt_tokens * self.input_per_1k + completion_tokens * self.output_per_1k) / 1000

    def batch_cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The same usage at this tier's Batch API price."""
        return self.cost_usd(prompt_tokens, completion_tokens) * (1 - self.batch_discount)


class TeacherConfig(_Strict):
    tier: str = "frontier"
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0)
    # A teacher job's default cap in USD (`submit --max-cost` overrides it); None: none.
    max_cost_usd: float | None = Field(None, gt=0)


# Phrases that make an answer a refusal when its first sentence contains one (any case;
# curly apostrophes count as straight ones). docs/training-data.md explains each filter.
DEFAULT_REFUSAL_PHRASES = [
    "as an ai", "as a language model", "i can't help", "i cannot help", "i can't assist",
    "i cannot assist", "i'm unable to", "i am unable to", "i'm not able to", "i am not able to",
    "i'm sorry, but", "i am sorry, but", "i'm sorry, i can't", "i'm sorry, i cannot",
    "i am sorry, i can't", "i am sorry, i cannot", "i apologize, but", "i won't be able to",
    "i can't do that", "i cannot do that",
    "i can't provide", "i cannot provide", "i must decline", "i can't comply", "i cannot comply",
    "i'm afraid i can't", "i cannot fulfill", "i can't fulfill",
]  # fmt: skip
EXPORT_FORMATS = ("openai", "trl", "trl-prompt-completion", "parquet")


class ReducerConfig(_Strict):
    min_length: int = Field(50, ge=0)
    max_example_tokens: int = Field(16384, gt=0)
    validation_fraction: float = Field(0.0, ge=0, lt=1)
    refusal_phrases: list[str] = DEFAULT_REFUSAL_PHRASES
    include_system_prompt: bool = True
    # finish_reason values that mean the answer was cut off (empty: keep them all)
    truncated_finish_reasons: list[str] = ["length", "content_filter"]
    # Jaccard similarity at or above which a row duplicates an earlier kept one (MinHash-LSH
    # over the normalised text); None: exact duplicates only.
    near_duplicates: float | None = Field(None, gt=0, le=1)
    near_duplicate_field: Literal["prompt", "answer", "both"] = "both"
    minhash_permutations: int = Field(64, ge=16, le=1024)
    # An answer of at least 20 words whose word 4-grams repeat this much is a loop.
    degenerate_repeat_fraction: float = Field(0.5, gt=0, le=1)
    # An answer with more than this share of non-text characters (symbols, emoji, control
    # characters, unbroken runs of 80+ characters) is rejected as non_text.
    max_non_text_fraction: float = Field(0.5, gt=0, le=1)
    # A metadata field: the validation split takes the same share of each of its values.
    stratify_by: str | None = None
    # Validation prompts this similar to a training prompt move to the training split.
    leakage_threshold: float = Field(0.85, gt=0, le=1)
    # The judge's score below which a row is dropped (`distillery judge` first); None: off.
    min_score: int | None = Field(None, ge=1, le=10)
    format: Literal["openai", "trl", "trl-prompt-completion", "parquet"] = "openai"


ROUTER_PHRASE = "EASY, MEDIUM, or HARD"  # the one-word answers the llm router parses
DEFAULT_LLM_ROUTER_PROMPT = (
    "Classify how hard it is to answer the request below well. "
    "Reply with exactly one word: EASY, MEDIUM, or HARD.\n\nRequest:\n{prompt}"
)


class RouterConfig(_Strict):
    strategy: Literal["rules", "classifier", "llm", "random"] = "rules"
    classifier: str = "router.joblib"
    confidence_threshold: float = Field(CONFIDENCE_THRESHOLD, ge=0, le=1)
    confidence_method: Literal["geometric_mean", "seed"] = "geometric_mean"
    unknown_confidence: float = Field(UNKNOWN_CONFIDENCE, ge=0, le=1)
    fallback: list[str] = ["frontier"]
    # score cut points between tiers, cheapest first: len(tiers) - 1 of them
    thresholds: list[Annotated[float, Field(ge=0, le=1)]] = [0.3, 0.7]
    # rules router: a question this short is easy; a prompt longer than medium_words is medium
    short_question_words: int = Field(12, gt=0)
    medium_words: int = Field(60, gt=0)
    code_keywords: list[str] = [
        "code", "function", "implement", "debug", "algorithm", "python", "javascript",
        "sql", "program", "compile", "class", "bug", "regex", "script",
    ]  # fmt: skip
    analysis_keywords: list[str] = [
        "analyze", "analyse", "compare", "evaluate", "explain why", "trade-off",
        "pros and cons", "critique", "assess", "implications", "reasoning",
    ]  # fmt: skip
    llm_router_tier: str | None = None  # None: the first (cheapest) tier
    # A route job's default cap in USD on its answer calls (`submit --max-cost`); None: none.
    max_cost_usd: float | None = Field(None, gt=0)
    # classifier: a prompt unlike its training data goes to the cheapest tier, where the
    # cascade's confidence decides, instead of trusting the score (files trained with one)
    defer_out_of_distribution: bool = True
    llm_router_prompt: str = DEFAULT_LLM_ROUTER_PROMPT

    @field_validator("thresholds")
    @classmethod
    def _ascending(cls, thresholds: list[float]) -> list[float]:
        if any(low >= high for low, high in itertools.pairwise(thresholds)):
            raise ValueError(f"thresholds must be strictly ascending, got {thresholds}")
        return thresholds

    @field_validator("llm_router_prompt")
    @classmethod
    def _asks_for_one_word(cls, prompt: str) -> str:
        if ROUTER_PHRASE.lower() not in prompt.lower():
            raise ValueError(f'llm_router_prompt must ask for "{ROUTER_PHRASE}"')
        try:
            filled = prompt.format(prompt="\0")
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(
                f"llm_router_prompt must be a format string with only {{prompt}} in braces "
                f"(write literal braces as {{{{ }}}}): {exc!r}"
            ) from None
        if "\0" not in filled:
            raise ValueError("llm_router_prompt must contain {prompt}, where the request goes")
        return prompt


class TrainingConfig(_Strict):
    """The local fine-tuning backend (`finetune submit --backend local`)."""

    # USD per 1K tokens, input and output alike, written into the student's tier block by
    # `finetune status ID --add-tier NAME`: what serving the student costs you (0: free).
    student_price_per_1k: float = Field(0.0, ge=0)
    # Where `distillery student serve ID` listens unless --port says otherwise; the tier
    # block points there.
    student_port: int = Field(8910, gt=0, lt=65536)


class RecoveryConfig(_Strict):
    """How workers find and re-send work that no live worker holds (a SIGKILLed worker's
    messages, messages Redis lost, a lost follow-up): docs/reliability.md → Recovery."""

    enabled: bool = True
    # A worker rewrites its leases this often; one silent for `lease_s` is taken as dead.
    heartbeat_s: float = Field(3.0, gt=0)
    lease_s: float = Field(10.0, gt=0)
    # How often some worker (one at a time, under a Redis lock) looks for unheld work. An
    # item is re-sent only if it was unheld at two looks `lease_s` apart.
    sweep_s: float = Field(10.0, gt=0)
    # A prompt re-sent this many times is left for a human (`distillery resume`): a bug
    # that kills every task must not buy calls forever.
    max_requeues: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _beats_within_lease(self) -> "RecoveryConfig":
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError("heartbeat_s must be at most half of lease_s")
        return self


class GatewayConfig(_Strict):
    """`distillery serve` (producer.gateway): docs/gateway.md."""

    # The variable holding the comma-separated keys a request must present (Bearer); when
    # it is unset or empty, the gateway asks for none. The keys never appear in a file.
    api_keys_env: str = "DISTILLERY_GATEWAY_KEYS"
    # A request body over this gets 413 before anything is parsed.
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # A tier whose shared limits would keep a request waiting longer than this is skipped
    # for the next tier up (fallback reason rate_limited); with none left, 429.
    max_queue_s: float = Field(5.0, ge=0)
    # Requests in flight per gateway process; one more gets 503 at once instead of a queue.
    max_concurrency: int = Field(512, gt=0)
    # The share of requests answered below the teacher tier that are also sent, after
    # their answer, to the teacher tier through the workers' queue (a shadow job).
    shadow_rate: float = Field(0.0, ge=0, le=1)
    # `stream: true`: decide on a tier's first N tokens (streamed from it) instead of its
    # whole answer; then stream them and the rest, or drop them for the next tier
    # (docs/gateway.md → streaming). None: hold the whole answer.
    stream_holdback_tokens: int | None = Field(None, ge=1)
    # Answer a request seen before from the response cache (no call, cost 0). Off by
    # default: a live caller that samples at temperature > 0 expects a fresh answer.
    cache: bool = False

    def api_keys(self) -> tuple[str, ...]:
        raw = os.environ.get(self.api_keys_env, "")
        return tuple(key.strip() for key in raw.split(",") if key.strip())


def _default_tiers() -> dict[str, TierConfig]:
    """Without a config file, three tiers on the local simulator at the seed's prices."""
    prices = {"small": 0.10, "medium": 0.30, "frontier": 5.00}
    return {
        name: TierConfig(
            name=name,
            base_url=HttpUrl(SIMULATOR_URL),
            model=f"sim-{name}",
            input_per_1k=price,
            output_per_1k=price,
        )
        for name, price in prices.items()
    }


class EvalConfig(_Strict):
    # `eval agreement`: the tier asked whether an answer that is not an exact match agrees
    # in meaning with the reference; None: exact match only (--judge overrides it)
    judge_tier: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    # repr=False: URLs may hold passwords, and a logged settings object must not show them.
    redis_url: str | None = Field(None, repr=False)
    # rediss:// without certificate verification is refused unless this says yes on purpose.
    redis_tls_insecure: bool = False
    # The Celery broker when it is not Redis (e.g. amqp://guest:guest@127.0.0.1:5672//);
    # Redis (redis_url) still keeps the rate limits and the leases.
    broker: str | None = Field(
        None, repr=False, validation_alias=AliasChoices("broker_url", "broker")
    )
    database_url: str = Field("sqlite:///distillery.db", repr=False)
    output_dir: Path = Path("distillery-output")
    # Prompt ids per Celery message: a worker answers a message's prompts concurrently, and
    # batches make a 100,000-prompt submit a few thousand messages instead of 100,000.
    enqueue_batch: int = Field(50, gt=0)
    router_concurrency: int = Field(16, gt=0)
    tiers: dict[str, TierConfig] = Field(default_factory=_default_tiers)
    teacher: TeacherConfig = TeacherConfig()
    reducer: ReducerConfig = ReducerConfig()
    router: RouterConfig = RouterConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    gateway: GatewayConfig = GatewayConfig()
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file: REDIS_URL / DATABASE_URL are set per deployment.
        return env_settings, init_settings

    @field_validator("tiers", mode="before")
    @classmethod
    def _named_tiers(cls, tiers: Any) -> Any:
        """Each tier knows its own name (its key), so no signature needs both."""
        if not isinstance(tiers, dict):
            return tiers
        return {name: _with_name(name, tier) for name, tier in tiers.items()}

    @model_validator(mode="after")
    def _redis_tls_verified(self) -> "Settings":
        if self.redis_url and not self.redis_tls_insecure:
            refused = unverified_tls(self.redis_url)
            if refused:
                raise ValueError(refused)
        return self

    @model_validator(mode="after")
    def _broker_beside_redis(self) -> "Settings":
        if self.broker and not self.redis_url:
            raise ValueError("broker_url needs redis_url too: Redis keeps the limits and leases")
        return self

    @model_validator(mode="after")
    def _tiers_exist(self) -> "Settings":
        if not self.tiers:
            raise ValueError("no tiers configured: add a [tiers.NAME] table")
        self.require_tier(self.teacher.tier, "[teacher] tier")
        for name in self.router.fallback:
            self.require_tier(name, "[router] fallback")
        if self.router.llm_router_tier is not None:
            self.require_tier(self.router.llm_router_tier, "[router] llm_router_tier")
        if self.eval.judge_tier is not None:
            self.require_tier(self.eval.judge_tier, "[eval] judge_tier")
        return self

    def require_tier(self, name: str, where: str = "tier") -> TierConfig:
        if name not in self.tiers:
            known = ", ".join(self.tiers)
            raise ConfigError(f"unknown tier '{name}' in {where}; configured tiers: {known}")
        return self.tiers[name]

    def fine_tune_dir(self, fine_tune_id: int) -> Path:
        """Where a local training run writes its adapter and student GGUF."""
        return self.output_dir / f"fine-tune-{fine_tune_id}"

    def training_path(self, job_id: int) -> Path:
        """Where a teacher job's training file goes unless told otherwise."""
        return self.output_dir / f"job-{job_id}" / "train.jsonl"

    @property
    def broker_url(self) -> str:
        return self.broker or self.redis_url or "memory://"


# kombu connects to rediss:// without checking the server's certificate unless the URL asks
# for it (docs/security.md → Using TLS for Redis); these values ask for no check either.
UNVERIFIED_CERT_REQS = frozenset({"none", "cert_none", "optional", "cert_optional"})


def unverified_tls(url: str) -> str | None:
    """Why a rediss:// URL would connect without verifying the server, or None. The message
    never repeats the URL (it may hold a password)."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = {k.lower(): v for k, v in parse_qsl(parts.query)}
    cert_reqs = query.get("ssl_cert_reqs", "").lower()
    if cert_reqs and cert_reqs not in UNVERIFIED_CERT_REQS:
        return None
    why = f"ssl_cert_reqs={cert_reqs}" if cert_reqs else "no ssl_cert_reqs"
    return (
        f"the Redis URL uses rediss:// with {why}, so the broker would not verify the "
        "server's certificate; add ?ssl_cert_reqs=required&ssl_ca_certs=/path/to/ca.pem, or "
        "set REDIS_TLS_INSECURE=true (redis_tls_insecure = true) to accept it unverified"
    )


def _with_name(name: str, tier: Any) -> Any:
    if isinstance(tier, TierConfig):
        return tier if tier.name == name else tier.model_copy(update={"name": name})
    if isinstance(tier, dict):
        if "name" in tier and tier["name"] != name:
            raise ValueError(f"tier {name!r}: name is the table's key; do not set it")
        return {**tier, "name": name}
    return tier


def config_path() -> Path:
    return Path(os.environ.get("DISTILLERY_CONFIG", DEFAULT_CONFIG_PATH))


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML file's contents; {} when the default file is absent."""
    if not path.exists():
        if "DISTILLERY_CONFIG" in os.environ:
            raise ConfigError(f"{path}: config file not found (DISTILLERY_CONFIG={path})")
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_settings(path: Path | None = None) -> Settings:
    path = path or config_path()
    data = read_config_file(path)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc)) from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _describe(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return load_settings()
