"""How each simulated model behaves: latency, limits, faults and skill.

A `SimConfig` holds a `default` behaviour, which applies to any model name a client asks
for, and per-model overrides. It loads from a dict, a TOML file or a JSON file shaped like

    {"default": {"latency_ms": 20}, "models": {"gpt-small": {"skill": 0.3, "rpm": 600}}}
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.answer_key import load_answer_key


@dataclass(frozen=True, slots=True)
class ModelBehaviour:
    """Frozen so a request can keep the behaviour it started with while an admin call
    swaps in a new one."""

    latency_ms: float = 0  # to the first token (a whole answer: plus its generation)
    latency_jitter_ms: float = 0
    # How fast tokens come after the first (a stream's chunks are spaced by 1/tokens_per_s,
    # a whole answer waits for all of them); None: generation takes no time.
    tokens_per_s: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    # None: rpm and tpm hold over a sliding 60 s window; a number: they are enforced as a
    # steady rate that a request may run up to this many seconds ahead of (simulator.limits).
    burst_s: float | None = None
    error_rate: float = 0
    timeout_rate: float = 0
    # Share of 200 answers whose content is junk no parser reads (a model gone wrong).
    garbage_rate: float = 0
    hang_s: float = 30
    skill: float = 0.9
    context_tokens: int | None = None
    # a JSONL answer key (simulator.answer_key): prompts it holds get its answers
    answers: str | None = None

    def __post_init__(self) -> None:
        _check_non_negative("latency_ms", self.latency_ms)
        _check_non_negative("latency_jitter_ms", self.latency_jitter_ms)
        _check_non_negative("hang_s", self.hang_s)
        if self.burst_s is not None:
            _check_non_negative("burst_s", self.burst_s)
        rate = self.tokens_per_s
        if rate is not None and (not _is_number(rate) or rate <= 0):
            raise ValueError(f"tokens_per_s must be a number > 0 or null, got {rate!r}")
        for name in ("error_rate", "timeout_rate", "garbage_rate", "skill"):
            _check_fraction(name, getattr(self, name))
        for name in ("rpm", "tpm", "context_tokens"):
            _check_optional_positive_int(name, getattr(self, name))
        if self.answers is not None:
            if not isinstance(self.answers, str):
                raise ValueError(f"answers must be a file path, got {self.answers!r}")
            load_answer_key(self.answers)  # a bad file fails here, when the config loads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelBehaviour:
        _check_table("a model's settings", data)
        return cls().with_changes(**data)

    def with_changes(self, **changes: Any) -> ModelBehaviour:
        """A copy with `changes` applied; unknown field names are an error, not ignored,
        so a typo in a config file or an admin call cannot silently do nothing."""
        unknown = set(changes) - set(behaviour_fields())
        if unknown:
            raise ValueError(f"unknown behaviour field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def behaviour_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(ModelBehaviour))


@dataclass(slots=True)
class SimConfig:
    default: ModelBehaviour = field(default_factory=ModelBehaviour)
    models: dict[str, ModelBehaviour] = field(default_factory=dict)
    seed: int = 0  # seeds the RNG behind error_rate, timeout_rate and latency jitter

    def behaviour_for(self, model: str) -> ModelBehaviour:
        return self.models.get(model, self.default)

    @classmethod
    def tiered(cls, **common: Any) -> SimConfig:
        """Three models named like the default tiers, from weak to able, so routed jobs
        show real cascades: the small model answers hard prompts with low-probability tokens."""
        skills = {"sim-small": 0.3, "sim-medium": 0.6, "sim-frontier": 0.95}
        return cls(
            default=ModelBehaviour(**common),
            models={name: ModelBehaviour(skill=skill, **common) for name, skill in skills.items()},
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path | None = None) -> SimConfig:
        """`base_dir`: where relative `answers` paths start (the config file's folder)."""
        _check_table("the simulator config", data)
        _check_table("models", data.get("models", {}))
        unknown = set(data) - {"default", "models", "seed"}
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        models = {
            name: ModelBehaviour.from_dict(_resolved(settings, base_dir))
            for name, settings in data.get("models", {}).items()
        }
        return cls(
            default=ModelBehaviour.from_dict(_resolved(data.get("default", {}), base_dir)),
            models=models,
            seed=int(data.get("seed", 0)),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> SimConfig:
        """TOML when the name ends in .toml, JSON otherwise."""
        path = Path(path)
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
        return cls.from_dict(data, base_dir=path.resolve().parent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "default": self.default.to_dict(),
            "models": {name: b.to_dict() for name, b in self.models.items()},
            "seed": self.seed,
        }


def _resolved(settings: Any, base_dir: Path | None) -> Any:
    answers = settings.get("answers") if isinstance(settings, dict) else None
    if base_dir is None or not isinstance(answers, str) or Path(answers).is_absolute():
        return settings
    return {**settings, "answers": str(base_dir / answers)}


def _check_table(what: str, data: object) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a table/object, got {data!r}")


def _check_non_negative(name: str, value: float) -> None:
    if not _is_number(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def _check_fraction(name: str, value: float) -> None:
    if not _is_number(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _check_optional_positive_int(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or null, got {value!r}")


def _is_number(value: object) -> bool:
    # bool is an int subclass, but `latency_ms: true` in a config is a mistake, not 1 ms
    return isinstance(value, int | float) and not isinstance(value, bool)
