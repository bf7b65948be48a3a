"""Everything a running simulator remembers between requests, behind one lock.

The event loop's handlers and the thread that owns a `RunningSimulator` (configure,
fail_next, stats) both touch it; every critical section is a few dict operations, so one
lock costs nothing measurable even at thousands of requests per second.
"""

import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from simulator.behaviour import ModelBehaviour, SimConfig
from simulator.limits import LimitRefusal, ModelLimits
from simulator.stats import Stats


@dataclass(slots=True)
class Fault:
    """An injected failure for the next `remaining` chat requests (to `model`, or any).
    With `after_tokens`, only streamed requests take it: the stream breaks off with an
    error event after that many tokens (an upstream failure in the middle of an answer)."""

    remaining: int
    status: int
    retry_after: float | None
    model: str | None
    after_tokens: int | None = None


class SimState:
    def __init__(self, config: SimConfig) -> None:
        self._lock = threading.Lock()
        # a private copy: runtime changes must not leak into the caller's SimConfig
        self._config = SimConfig(config.default, dict(config.models), config.seed)
        self._rng = random.Random(config.seed)
        self._limits: dict[str, ModelLimits] = {}
        self._faults: list[Fault] = []
        self.stats = Stats()

    # --- behaviour -------------------------------------------------------------------

    def behaviour_for(self, model: str) -> ModelBehaviour:
        with self._lock:
            return self._config.behaviour_for(model)

    def model_names(self) -> list[str]:
        with self._lock:
            return list(self._config.models)

    def config_dict(self) -> dict[str, Any]:
        with self._lock:
            return self._config.to_dict()

    def configure(self, model: str | None, **changes: Any) -> ModelBehaviour:
        """Change `model`'s behaviour (None: the default's). A model without its own
        settings starts from the current default. Raises ValueError on bad fields."""
        with self._lock:
            if model is None:
                self._config.default = self._config.default.with_changes(**changes)
                return self._config.default
            updated = self._config.behaviour_for(model).with_changes(**changes)
            self._config.models[model] = updated
            return updated

    # --- faults ----------------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int = 500,
        retry_after: float | None = None,
        model: str | None = None,
        after_tokens: int | None = None,
    ) -> None:
        _check_fault(count, status, retry_after)
        if after_tokens is not None and (
            isinstance(after_tokens, bool) or not isinstance(after_tokens, int) or after_tokens < 0
        ):
            raise ValueError(f"after_tokens must be an integer >= 0 or null, got {after_tokens!r}")
        with self._lock:
            self._faults.append(Fault(count, status, retry_after, model, after_tokens))

    def take_fault(self, model: str, *, stream: bool = False) -> Fault | None:
        """Consumes one use of the oldest fault that applies to `model` (a mid-stream
        fault applies to streamed requests only)."""
        with self._lock:
            for fault in self._faults:
                if fault.after_tokens is not None and not stream:
                    continue
                if fault.model is None or fault.model == model:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # --- limits and dice -------------------------------------------------------------

    def admit(self, model: str, behaviour: ModelBehaviour, tokens: int) -> LimitRefusal | None:
        with self._lock:
            limits = self._limits.setdefault(model, ModelLimits())
            return limits.admit(
                time.monotonic(), tokens, behaviour.rpm, behaviour.tpm, behaviour.burst_s
            )

    def happens(self, probability: float) -> bool:
        if probability <= 0:
            return False  # no RNG draw, so zero-rate models do not shift anyone's dice
        with self._lock:
            return self._rng.random() < probability

    def latency_s(self, behaviour: ModelBehaviour) -> float:
        jitter = behaviour.latency_jitter_ms
        if jitter <= 0:
            return behaviour.latency_ms / 1000
        with self._lock:
            offset = self._rng.uniform(-jitter, jitter)
        return max(0.0, behaviour.latency_ms + offset) / 1000


def _check_fault(count: int, status: int, retry_after: float | None) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError(f"status must be an HTTP error status (400-599), got {status!r}")
    if retry_after is not None and (
        isinstance(retry_after, bool) or not isinstance(retry_after, int | float) or retry_after < 0
    ):
        raise ValueError(f"retry_after must be a number >= 0 or null, got {retry_after!r}")
