"""workers.job_settings: a job's settings, built once at submit from the config and the
flags, stored as JSON, and loaded (old rows included) when a worker takes a message."""

import pytest
from pydantic import ValidationError

from models import JobMode
from workers.chat import Completion
from workers.job_settings import RouteSettings, TeacherSettings, load_job_settings
from workers.settings import (
    DEFAULT_TEMPERATURE,
    UNKNOWN_CONFIDENCE,
    RouterConfig,
    Settings,
    TeacherConfig,
)

THREE = ("small", "medium", "frontier")
QUESTION = [{"role": "user", "content": "q"}]
# What the code before typed settings stored in `jobs.params`, key for key.
OLD_TEACHER_ROW = {"tier": "frontier", "system_prompt": "S", "temperature": 0.2, "max_tokens": None}
OLD_ROUTE_ROW = {
    "router": "rules",
    "tiers": list(THREE),
    "fallback": ["medium", "frontier"],
    "threshold": 0.8,
    "confidence_method": "geometric_mean",
    "unknown_confidence": 0.5,
    "classifier": "router.joblib",
    "logprobs": True,
    "temperature": 0.7,
    "max_tokens": None,
    "system_prompt": None,
}


def test_the_request_adds_the_jobs_system_prompt_unless_the_prompt_has_one() -> None:
    job = TeacherSettings(tier="frontier", system_prompt="S", temperature=0.2)
    request = job.request(QUESTION)
    assert request.messages[0] == {"role": "system", "content": "S"}
    assert (request.temperature, request.logprobs) == (0.2, False)
    own = [{"role": "developer", "content": "D"}, *QUESTION]
    assert job.request(own).messages == own
    body = RouteSettings(tiers=THREE).request(QUESTION).body("m")
    assert body["logprobs"] is True and body["top_logprobs"] == 0 and body["model"] == "m"


def test_the_escalation_chain_goes_up_the_tiers_only() -> None:
    job = RouteSettings(tiers=THREE, fallback=("medium", "frontier"))
    assert [job.next_tier(t) for t in THREE] == ["medium", "frontier", None]
    assert RouteSettings(tiers=THREE, fallback=("frontier",)).next_tier("small") == "frontier"
    assert RouteSettings(tiers=THREE, fallback=("small",)).next_tier("medium") is None
    assert TeacherSettings(tier="frontier").next_tier("frontier") is None


def test_rows_written_before_typed_settings_still_load() -> None:
    teacher = load_job_settings(JobMode.TEACHER, OLD_TEACHER_ROW)
    route = load_job_settings("route", OLD_ROUTE_ROW)
    assert isinstance(teacher, TeacherSettings) and teacher.tiers == ("frontier",)
    assert teacher.system_prompt == "S" and teacher.temperature == 0.2
    assert isinstance(route, RouteSettings) and route.tiers == THREE
    assert route.to_params() == OLD_ROUTE_ROW  # stored again, the row is the same


def test_a_stored_row_round_trips() -> None:
    settings = Settings()
    for job in (
        TeacherSettings.from_config(settings, temperature=0.1),
        RouteSettings.from_config(settings, router="random", max_tokens=30),
    ):
        mode = JobMode.TEACHER if isinstance(job, TeacherSettings) else JobMode.ROUTE
        assert load_job_settings(mode, job.to_params()) == job


def test_flags_override_the_config_and_unset_flags_do_not() -> None:
    settings = Settings()
    job = RouteSettings.from_config(settings, router=None, threshold=None, temperature=0.0)
    assert job.router == settings.router.strategy
    assert job.threshold == settings.router.confidence_threshold
    assert job.temperature == 0.0
    assert job.tiers == tuple(settings.tiers)


def test_defaults_come_from_one_place() -> None:
    teacher = TeacherSettings(tier="t")
    assert TeacherConfig().temperature == teacher.temperature == DEFAULT_TEMPERATURE
    route = RouteSettings(tiers=THREE)
    assert RouterConfig().unknown_confidence == route.unknown_confidence == UNKNOWN_CONFIDENCE
    # an answer without logprobs has the unknown confidence, which escalates by default
    silent = Completion("x", 1, 1, None, 1.0, "stop")
    threshold = route.escalation_threshold
    assert threshold is not None and route.confidence(silent) == UNKNOWN_CONFIDENCE < threshold
    assert teacher.confidence(silent) is None and teacher.escalation_threshold is None


def test_a_corrupt_row_is_refused_when_loaded() -> None:
    with pytest.raises(ValidationError):
        load_job_settings(JobMode.TEACHER, {"tier": "frontier", "temperature": "hot"})
    with pytest.raises(ValidationError):
        load_job_settings(JobMode.ROUTE, {**OLD_ROUTE_ROW, "surprise": 1})


def test_a_batch_tier_sends_teacher_jobs_via_batch_unless_told_otherwise() -> None:
    online = Settings()
    assert TeacherSettings.from_config(online).via == "online"
    tiers = {
        name: {**tier.model_dump(mode="json"), "batch": name == "frontier"}
        for name, tier in online.tiers.items()
    }
    settings = Settings(tiers=tiers)
    assert TeacherSettings.from_config(settings).batched
    assert TeacherSettings.from_config(settings, via="online").via == "online"
    assert not TeacherSettings.from_config(settings, tier="small").batched
    assert (
        TeacherSettings.from_config(online, via="batch", batch_fallback="online").batch_fallback
        == "online"
    )
    assert load_job_settings(JobMode.TEACHER, OLD_TEACHER_ROW).via == "online"  # old rows
