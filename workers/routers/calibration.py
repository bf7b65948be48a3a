"""Routers applied to a whole sample of prompts, and thresholds calibrated on one.

Routing a sample: routers with a batch `score(texts)` (classifier, random) score every
prompt in one vectorised pass and cut the scores with their thresholds, exactly as `decide`
would; the others (rules, llm) decide prompt by prompt, the llm router as many at once as
its tier's `concurrency`, since each decision is an HTTP call (through this process's
standalone caller, `workers.caller.standalone_caller`).

Calibrating: as RouteLLM calibrates its routers on a sample of traffic, the last threshold
is set so that a chosen share of the sample scores at or above it (goes to the last tier).
Prompts with equal scores cannot be split by a threshold, so they stay together: the cut is
made at the tie-group boundary nearest the target count (nearer to fewer last-tier calls on
a draw). With distinct scores that is the target count exactly. The other thresholds keep
their proportions: each is scaled by new_last / old_last, so [0.3, 0.7] calibrated to a
last threshold of 0.56 becomes [0.24, 0.56] and the middle tiers keep their share of the
score range below the cut.

Calibrated thresholds are written to the classifier file (a "thresholds" key) or to the
config file's [router] table. Precedence when a classifier router is built: thresholds set
explicitly in the config, then the file's calibrated ones (when they fit the tiers), then
the config's defaults.
"""

import itertools
import os
import re
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from workers.callloop import call_loop
from workers.routers import (
    Decision,
    Router,
    RouterError,
    decide_all,
    has_scores,
    make_router,
    router_thresholds,
)
from workers.routers.base import ScoringRouter, check_thresholds
from workers.settings import RouterConfig, Settings

__all__ = ["ScoringRouter", "has_scores"]  # re-exported: the producer's evaluation uses them

SCALED_DECIMALS = 4  # lower thresholds need no exactness: short numbers read better in TOML
MAX_DECIMALS = 17


def route_sample(router: Router, texts: Sequence[str], *, workers: int = 1) -> list[Decision]:
    """Every text's decision (blocking; in this process's call loop). Batch-scored decisions
    carry the batch's time per prompt as their latency; time single `decide_now` calls when
    per-decision latency matters."""
    return call_loop().run(decide_all(router, texts, concurrency=workers))


def decision_workers(router: Router, settings: Settings) -> int:
    """Decisions in flight: as many as the router's model tier allows (llm router), else 1."""
    asked_tier = getattr(router, "asked_tier", None)
    return settings.tiers[asked_tier].calls_in_flight if asked_tier in settings.tiers else 1


def usable_router(
    name: str, *, settings: Settings, classifier_path: str | Path | None, probe: str
) -> Router | str:
    """The router, or why it cannot run here: no classifier file, or (from one trial
    decision on `probe`) an llm router whose tier does not answer. A long run then skips
    that router with the reason, instead of timing out prompt by prompt."""
    try:
        router = build_router(name, settings=settings, classifier_path=classifier_path)
    except RouterError as exc:
        return str(exc)
    if not hasattr(router, "asked_tier"):
        return router
    trial = call_loop().run(router.decide(probe))
    if trial.error is None:
        return router
    tier = settings.tiers[trial.asked_tier or ""]
    return f"its tier {trial.asked_tier} at {tier.base_url} did not answer ({trial.error})"


# --- calibrating -------------------------------------------------------------------------


def calibration_scores(router: ScoringRouter, texts: Sequence[str]) -> list[float]:
    """The router's scores, with 0 for prompts it defers (out of distribution): those go to
    the first tier whatever the thresholds, so they cannot count toward the last tier's share."""
    decide = getattr(router, "decisions", None)
    if decide is None:
        return router.score(texts)
    return [0.0 if d.deferred else float(d.score) for d in decide(texts)]


@dataclass(frozen=True)
class Calibration:
    thresholds: tuple[float, ...]
    previous: tuple[float, ...]
    target_share: float
    rows: int
    target_count: int  # round(target_share * rows): prompts meant for the last tier
    achieved_count: int  # prompts of the sample scoring at or above the last threshold

    @property
    def achieved_share(self) -> float:
        return self.achieved_count / self.rows


def calibrate(
    scores: Sequence[float], *, target_share: float, previous: Sequence[float]
) -> Calibration:
    """Thresholds sending round(target_share * len(scores)) prompts to the last tier."""
    if not scores:
        raise RouterError("cannot calibrate on an empty sample")
    if not previous:
        raise RouterError("one tier has no thresholds to calibrate; configure two or more")
    if not 0.0 <= target_share <= 1.0:
        raise RouterError(f"target share must be in [0, 1], got {target_share}")
    target = round(target_share * len(scores))
    last = last_threshold(scores, target)
    thresholds = spaced_below(previous, last)
    achieved = sum(1 for score in scores if score >= last)
    return Calibration(thresholds, tuple(previous), target_share, len(scores), target, achieved)


def last_threshold(scores: Sequence[float], count: int) -> float:
    """A threshold in [0, 1] with `count` scores at or above it, or as near as ties allow."""
    ranked = sorted(scores, reverse=True)
    cut = min(_cut_positions(ranked), key=lambda position: (abs(position - count), position))
    if cut == len(ranked):
        return ranked[-1]  # everything: the lowest score itself
    upper = ranked[cut - 1] if cut else 1.0  # nothing: just above the highest score
    return short_between(ranked[cut], upper)


def _cut_positions(ranked: list[float]) -> list[int]:
    """How many top prompts a threshold can separate: the tie-group boundaries, all of
    them, and none of them while the top score is below 1 (a threshold cannot exceed 1)."""
    positions = [p for p in range(1, len(ranked)) if ranked[p] < ranked[p - 1]]
    positions.append(len(ranked))
    if ranked[0] < 1.0:
        positions.append(0)
    return positions


def short_between(low: float, high: float) -> float:
    """The shortest decimal strictly between low and high, near their midpoint; `high` when
    they are neighbouring floats. Strictly inside, so a score recomputed one ulp differently
    (one prompt alone instead of in a batch) still falls on the same side."""
    middle = (low + high) / 2
    for decimals in range(1, MAX_DECIMALS + 1):
        value = round(middle, decimals)
        if low < value < high:
            return value
    return high


def spaced_below(previous: Sequence[float], last: float) -> tuple[float, ...]:
    """`previous` scaled so that its last value becomes `last` (proportions kept)."""
    if previous[-1] <= 0:
        raise RouterError(f"cannot scale thresholds {list(previous)}: the last one is 0")
    ratio = last / previous[-1]
    for decimals in (SCALED_DECIMALS, MAX_DECIMALS):
        lower = tuple(round(value * ratio, decimals) for value in previous[:-1])
        candidate = (*lower, last)
        if _ascending(candidate):
            return candidate
    raise RouterError(
        f"no room below {last} for {len(previous) - 1} more ascending threshold(s); "
        "choose a smaller target share"
    )


def _ascending(values: Sequence[float]) -> bool:
    in_range = all(0.0 <= value <= 1.0 for value in values)
    return in_range and all(low < high for low, high in itertools.pairwise(values))


# --- where calibrated thresholds live: the classifier file -------------------------------


def file_thresholds(path: str | Path) -> tuple[float, ...] | None:
    """The calibrated thresholds stored in a classifier file; None when it has none (or the
    file is missing: building the router reports that, with the command that makes one)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return None
    return _stored_thresholds(path.resolve(), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _stored_thresholds(path: Path, _mtime_ns: int, _size: int) -> tuple[float, ...] | None:
    import joblib  # only classifier users pay for it

    try:
        data = joblib.load(path)
    except Exception:  # not loadable: load_classifier reports it properly
        return None
    stored = data.get("thresholds") if isinstance(data, dict) else None
    return tuple(float(value) for value in stored) if stored else None


def classifier_thresholds(
    path: str | Path, config: RouterConfig, tiers: Sequence[str]
) -> tuple[float, ...]:
    """The thresholds a classifier router over `tiers` uses (precedence in the docstring)."""
    if "thresholds" in config.model_fields_set:
        return router_thresholds(config, tiers)
    stored = file_thresholds(path)
    if stored is not None and len(stored) == len(tiers) - 1:
        check_thresholds(stored, tiers)
        return stored
    return router_thresholds(config, tiers)


def build_router(
    name: str,
    *,
    settings: Settings,
    tiers: Sequence[str] | None = None,
    classifier_path: str | Path | None = None,
    seed: int = 0,
) -> Router:
    """`make_router`, with a classifier honouring the thresholds calibrated into its file
    (redundant once make_router reads them itself, and harmless)."""
    from workers.caller import standalone_caller  # the HTTP stack, for the llm router only

    caller = standalone_caller(settings) if name == "llm" else None
    router = make_router(
        name,
        settings=settings,
        tiers=tiers,
        classifier_path=classifier_path,
        caller=caller,
        seed=seed,
    )
    if name != "classifier":
        return router
    from workers.routers.classifier import ClassifierRouter

    assert isinstance(router, ClassifierRouter)
    path = classifier_path or settings.router.classifier
    thresholds = classifier_thresholds(path, settings.router, router.tiers)
    return ClassifierRouter(
        router.model, router.tiers, thresholds, defer=settings.router.defer_out_of_distribution
    )


def write_file_thresholds(
    path: str | Path, calibration: Calibration, *, tiers: Sequence[str]
) -> None:
    """Add the thresholds to the classifier file, replacing it atomically (as training
    does) so a worker loading it meanwhile sees the old file or the new one."""
    import joblib

    from workers.routers.classifier import load_classifier

    path = Path(path)
    load_classifier(path)  # a missing or foreign file fails here, with the usual message
    data = joblib.load(path)
    data["thresholds"] = list(calibration.thresholds)
    data["calibration"] = {
        "tiers": list(tiers),
        "target_share": calibration.target_share,
        "rows": calibration.rows,
        "achieved_count": calibration.achieved_count,
    }
    _dump_atomically(data, path)


def _dump_atomically(data: dict[str, Any], path: Path) -> None:
    import joblib

    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        joblib.dump(data, temporary)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; workers may run as another user
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- ... or the config file's [router] table ---------------------------------------------

_TABLE_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_THRESHOLDS_KEY = re.compile(r"^\s*thresholds\s*=")


def thresholds_toml(thresholds: Sequence[float]) -> str:
    return "thresholds = [" + ", ".join(repr(float(value)) for value in thresholds) + "]"


def with_thresholds(text: str, thresholds: Sequence[float]) -> str:
    """The config text with [router] thresholds set and every other line unchanged: the
    key's line (or lines, for a multi-line array) replaced, or added under [router], or a
    [router] table appended. The result is parsed back to prove nothing else moved."""
    lines = text.splitlines(keepends=True)
    setting = thresholds_toml(thresholds) + "\n"
    section = _router_section(lines)
    if section is None:
        separator = "" if not text or text.endswith("\n") else "\n"
        edited = text + separator + ("\n" if text.strip() else "") + "[router]\n" + setting
    else:
        start, end = section
        edited = "".join(_set_key(lines, start, end, setting))
    _check_edit(text, edited, thresholds)
    return edited


def _router_section(lines: list[str]) -> tuple[int, int] | None:
    """(index of the [router] header line, index of the next table's header or the end)."""
    start = None
    for index, line in enumerate(lines):
        header = _TABLE_HEADER.match(line)
        if header and start is not None:
            return start, index
        if header and header.group(1) == "router":
            start = index
    return None if start is None else (start, len(lines))


def _set_key(lines: list[str], start: int, end: int, setting: str) -> list[str]:
    for index in range(start + 1, end):
        if _THRESHOLDS_KEY.match(lines[index]):
            stop = _value_end(lines, index, end)
            return [*lines[:index], setting, *lines[stop:]]
    return [*lines[: start + 1], setting, *lines[start + 1 :]]


def _value_end(lines: list[str], index: int, end: int) -> int:
    """One past the last line of the array that starts on lines[index]."""
    depth = 0
    for stop in range(index, end):
        code = lines[stop].split("#", 1)[0]  # numbers hold no '#': a comment starts there
        depth += code.count("[") - code.count("]")
        if depth <= 0:
            return stop + 1
    return end


def _check_edit(before: str, after: str, thresholds: Sequence[float]) -> None:
    try:
        old = tomllib.loads(before)
    except tomllib.TOMLDecodeError as exc:
        raise RouterError(f"the config file is not valid TOML ({exc})") from None
    try:
        new = tomllib.loads(after)
    except tomllib.TOMLDecodeError:
        new = {}
    expected = [float(value) for value in thresholds]  # repr() round-trips floats exactly
    router = old.get("router")
    if isinstance(router, dict):
        router["thresholds"] = expected
    else:
        old["router"] = {"thresholds": expected}
    if old != new:
        raise RouterError(
            "the config file's [router] table is written in a way this edit does not handle; "
            f"set it by hand: [router] {thresholds_toml(thresholds)}"
        )


def write_config_thresholds(path: str | Path, thresholds: Sequence[float]) -> None:
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(with_thresholds(text, thresholds), encoding="utf-8")
