"""Routers: rules, trained classifier, LLM (over HTTP against the simulator) and random,
plus the level/score → tier mapping and the errors a user sees for a bad setup."""

import asyncio
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import HttpUrl

from tests.helpers.config import write_config
from tests.helpers.services import shared_data
from workers.caller import Caller
from workers.chat import ChatRequest, Completion
from workers.http_client import ChatClient
from workers.ratelimit import open_rate_limiter
from workers.routers import (
    ROUTER_NAMES,
    Decision,
    RouterError,
    make_router,
    router_thresholds,
    tier_for_level,
    tier_for_score,
    validate_router,
)
from workers.routers.labeled import load_labeled
from workers.routers.llm import parse_level
from workers.routers.training import TrainReport, train_classifier
from workers.settings import (
    ConfigError,
    RouterConfig,
    Settings,
    TeacherConfig,
    TierConfig,
    load_settings,
)

THREE = ("small", "medium", "frontier")
FOUR = ("nano", "small", "medium", "frontier")
UNREACHABLE = "http://127.0.0.1:9/v1"  # nothing listens: only the llm router calls out

SHORT_FACT = "What is the capital of France?"
CODE = "Write a Python function that merges two sorted lists."
ANALYSIS = "Compare the trade-offs of SQLite and PostgreSQL for a small web shop."


def settings_for(tiers: Sequence[str], *, base_url: str = UNREACHABLE, **router: Any) -> Settings:
    """Settings with these tiers (cheapest first); the last one teaches and is the fallback."""
    return Settings(
        tiers={t: TierConfig(base_url=HttpUrl(base_url), model=f"sim-{t}") for t in tiers},
        teacher=TeacherConfig(tier=tiers[-1]),
        router=RouterConfig(fallback=[tiers[-1]], **router),
    )


# --- tier_for_level / tier_for_score --------------------------------------------------


@pytest.mark.parametrize(
    ("tiers", "expected"),
    [
        (("only",), ("only", "only", "only")),
        (("small", "frontier"), ("small", "frontier", "frontier")),
        (THREE, ("small", "medium", "frontier")),
        (FOUR, ("nano", "medium", "frontier")),
        (("a", "b", "c", "d", "e"), ("a", "c", "e")),
    ],
)
def test_tier_for_level(tiers: tuple[str, ...], expected: tuple[str, str, str]) -> None:
    got = tuple(tier_for_level(tiers, level) for level in ("easy", "medium", "hard"))
    assert got == expected


def test_tier_for_level_needs_tiers_and_a_known_level() -> None:
    with pytest.raises(RouterError, match="at least one tier"):
        tier_for_level([], "easy")
    with pytest.raises(RouterError, match="unknown difficulty level"):
        tier_for_level(THREE, "trivial")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.0, "small"), (0.29, "small"), (0.3, "medium"), (0.69, "medium"), (0.7, "frontier"),
     (1.0, "frontier")],
)  # fmt: skip
def test_tier_for_score_boundaries(score: float, expected: str) -> None:
    # a score equal to a threshold is at or above it: the more capable tier
    assert tier_for_score(THREE, score, (0.3, 0.7)) == expected


def test_tier_for_score_with_two_and_four_tiers() -> None:
    assert tier_for_score(("small", "frontier"), 0.49, [0.5]) == "small"
    assert tier_for_score(("small", "frontier"), 0.5, [0.5]) == "frontier"
    scores = (0.1, 0.3, 0.6, 0.9)
    assert [tier_for_score(FOUR, s, (0.25, 0.5, 0.75)) for s in scores] == list(FOUR)
    assert tier_for_score(("only",), 0.9, ()) == "only"


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ((0.3, 1.2), r"each be in \[0, 1\]"),
        ((-0.1, 0.7), r"each be in \[0, 1\]"),
        ((float("nan"), 0.7), r"each be in \[0, 1\]"),
        ((0.7, 0.3), "strictly ascending"),
        ((0.5, 0.5), "strictly ascending"),
        ((0.5,), "split scores into 2 tiers, but 3 are configured"),
        ((0.2, 0.4, 0.6), "set \\[router\\] thresholds to 2 ascending values"),
    ],
)
def test_bad_thresholds_are_explained(thresholds: tuple[float, ...], message: str) -> None:
    with pytest.raises(RouterError, match=message):
        tier_for_score(THREE, 0.5, thresholds)


def test_a_score_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(RouterError, match="must be a number"):
        tier_for_score(THREE, math.nan, (0.3, 0.7))


# --- thresholds from the settings -----------------------------------------------------


def test_default_thresholds_spread_over_other_tier_counts() -> None:
    assert router_thresholds(RouterConfig(), THREE) == (0.3, 0.7)
    assert router_thresholds(RouterConfig(), ("small", "frontier")) == (0.5,)
    assert router_thresholds(RouterConfig(), FOUR) == (0.25, 0.5, 0.75)


def test_explicit_thresholds_must_fit_the_tiers() -> None:
    settings = settings_for(FOUR, thresholds=[0.3, 0.7])
    with pytest.raises(RouterError, match="4 are configured"):
        make_router("random", settings=settings)
    with pytest.raises(RouterError, match="4 are configured"):
        validate_router("random", settings=settings)
    fitting = settings_for(FOUR, thresholds=[0.2, 0.4, 0.9])
    assert make_router("random", settings=fitting).decide_now("x").tier in FOUR


def test_config_file_rejects_bad_router_settings(tmp_path: Path) -> None:
    cases = {
        "thresholds = [0.8, 0.2]": "strictly ascending",
        "thresholds = [0.3, 1.5]": "less than or equal to 1",
        'llm_router_tier = "huge"': "unknown tier 'huge' in \\[router\\] llm_router_tier",
        'llm_router_prompt = "Rate {prompt}"': "EASY, MEDIUM, or HARD",
        'llm_router_prompt = "EASY, MEDIUM, or HARD?"': "must contain \\{prompt\\}",
    }
    for line, message in cases.items():
        path = write_config(
            tmp_path / "bad.toml",
            base_url=UNREACHABLE,
            database_url="sqlite://",
            extra=f"[router]\n{line}\n",
        )
        with pytest.raises(ConfigError, match=message):
            load_settings(path)


# --- names, files ---------------------------------------------------------------------


def test_unknown_router_lists_the_known_ones() -> None:
    settings = settings_for(THREE)
    for check in (make_router, validate_router):
        with pytest.raises(
            RouterError,
            match=r"unknown router 'smart'; choose one of: rules, classifier, llm, random",
        ):
            check("smart", settings=settings)
    assert ROUTER_NAMES == ("rules", "classifier", "llm", "random")


def test_unknown_tier_for_a_router() -> None:
    with pytest.raises(RouterError, match="unknown tier"):
        make_router("rules", settings=settings_for(THREE), tiers=["small", "giant"])


def test_missing_classifier_file_names_the_train_command(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.joblib"
    expected = (
        f"classifier file {missing} not found; train one with: "
        f"distillery router train LABELED.csv --out {missing}"
    )
    for check in (make_router, validate_router):
        with pytest.raises(RouterError) as caught:
            check("classifier", settings=settings_for(THREE), classifier_path=missing)
        assert str(caught.value) == expected


def test_missing_default_classifier_names_the_configured_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RouterError, match=r"router\.joblib not found; train one with"):
        validate_router("classifier", settings=settings_for(THREE))


def test_corrupt_classifier_file_names_the_train_command(tmp_path: Path) -> None:
    import joblib

    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(b"this is not a pickle")
    wrong_shape = tmp_path / "wrong.joblib"
    joblib.dump({"version": 1, "kind": "binary", "pipeline": "no model here"}, wrong_shape)
    for path in (garbage, wrong_shape):
        with pytest.raises(RouterError, match=r"is not usable .*distillery router train"):
            validate_router("classifier", settings=settings_for(THREE), classifier_path=path)


# --- rules ----------------------------------------------------------------------------


def test_rules_on_fixed_prompts() -> None:
    router = make_router("rules", settings=settings_for(THREE))
    assert router.name == "rules"
    easy, hard, medium = (router.decide_now(p) for p in (SHORT_FACT, CODE, ANALYSIS))
    assert (easy.tier, easy.score) == ("small", 0.0)
    assert (hard.tier, hard.score) == ("frontier", 1.0)
    assert (medium.tier, medium.score) == ("medium", 0.5)
    assert easy.call is None and easy.error is None and easy.asked_tier is None
    assert 0 <= easy.latency_ms < 50


def test_rules_with_two_and_four_tiers() -> None:
    two = make_router("rules", settings=settings_for(("small", "frontier")))
    assert [two.decide_now(p).tier for p in (SHORT_FACT, ANALYSIS, CODE)] == [
        "small", "frontier", "frontier",
    ]  # fmt: skip
    four = make_router("rules", settings=settings_for(FOUR))
    assert [four.decide_now(p).tier for p in (SHORT_FACT, ANALYSIS, CODE)] == [
        "nano", "medium", "frontier",
    ]  # fmt: skip


def test_rules_length_and_question_marks() -> None:
    router = make_router("rules", settings=settings_for(THREE))
    long_story = " ".join(["The river ran past the old mill."] * 10)  # 70 words, no keyword
    assert router.decide_now(long_story).tier == "medium"
    twenty_word_question = " ".join(["word"] * 19) + " today?"
    assert router.decide_now(twenty_word_question).tier == "small"
    assert router.decide_now("Tell me a joke").tier == "small"


def test_rules_match_whole_words_in_any_case() -> None:
    router = make_router("rules", settings=settings_for(THREE))
    assert router.decide_now("Any good CLASSIC novels?").tier == "small"  # not "class"
    assert router.decide_now("Why do my SQL queries have BUGS?").tier == "frontier"
    assert router.decide_now("Explain   why the sky is blue").tier == "medium"
    assert router.decide_now("Weigh the pros and\ncons of renting").tier == "medium"


def test_rules_keywords_come_from_the_settings() -> None:
    settings = settings_for(THREE, code_keywords=["haskell"], analysis_keywords=[])
    router = make_router("rules", settings=settings)
    assert router.decide_now("Write a python function").tier == "small"
    assert router.decide_now("Is Haskell lazy?").tier == "frontier"
    assert router.decide_now("Compare tea and coffee").tier == "small"


# --- random ---------------------------------------------------------------------------


def test_random_router_is_seeded_and_uniform() -> None:
    settings = settings_for(THREE)
    texts = [f"prompt number {i}" for i in range(3000)]
    first = make_router("random", settings=settings, seed=7)
    again = make_router("random", settings=settings, seed=7)
    other = make_router("random", settings=settings, seed=8)
    decisions = [first.decide_now(t) for t in texts]
    assert [_verdict(first.decide_now(t)) for t in texts[:50]] == [
        _verdict(d) for d in decisions[:50]
    ]
    assert [_verdict(again.decide_now(t)) for t in texts[:50]] == [
        _verdict(d) for d in decisions[:50]
    ]
    assert [d.score for d in decisions[:50]] != [other.decide_now(t).score for t in texts[:50]]
    assert all(d.score is not None and 0 <= d.score <= 1 for d in decisions)
    shares = Counter(d.tier for d in decisions)
    assert abs(shares["small"] / 3000 - 0.3) < 0.04
    assert abs(shares["medium"] / 3000 - 0.4) < 0.04


def _verdict(decision: Decision) -> tuple[str, float | None]:
    return decision.tier, decision.score  # latency differs from call to call


# --- labelled data and the classifier -------------------------------------------------


@pytest.fixture(scope="module")
def mmlu_classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainReport]:
    data = shared_data("mmlu_routing.csv")
    out = tmp_path_factory.mktemp("router") / "router.joblib"
    return out, train_classifier(data, out, seed=0)


def test_classifier_trained_on_mmlu_beats_chance(
    mmlu_classifier: tuple[Path, TrainReport],
) -> None:
    out, report = mmlu_classifier
    assert report.rows == 14042
    assert report.train_rows + report.test_rows == report.rows
    assert abs(report.test_rows / report.rows - 0.2) < 0.01
    assert report.kind == "binary"
    assert 0.15 < report.positive_rate < 0.2  # weak wrong and strong right: ~18 %
    assert report.held_out_auc is not None and report.held_out_auc > 0.55
    assert report.held_out_accuracy > 0.5
    assert report.path == str(out) and out.exists()


def test_classifier_routes_with_the_trained_file(
    mmlu_classifier: tuple[Path, TrainReport],
) -> None:
    out, _ = mmlu_classifier
    settings = settings_for(THREE)
    validate_router("classifier", settings=settings, classifier_path=out)
    router = make_router("classifier", settings=settings, classifier_path=str(out))
    prompts = [SHORT_FACT, CODE, ANALYSIS, "Find the degree of Q(sqrt(2)) over Q.\nA. 2\nB. 4"]
    decisions = [router.decide_now(p) for p in prompts]
    for decision in decisions:
        assert decision.tier in THREE
        assert decision.score is not None and 0 <= decision.score <= 1
        assert decision.tier == tier_for_score(THREE, decision.score, (0.3, 0.7))
    batch = router.score(prompts)  # type: ignore[attr-defined]
    assert batch == pytest.approx([d.score for d in decisions])
    two_tiers = settings_for(("small", "frontier"))
    two = make_router("classifier", settings=two_tiers, classifier_path=out)
    assert two.decide_now(CODE).tier in ("small", "frontier")


def test_small_jsonl_with_levels_trains(tmp_path: Path) -> None:
    rows = [
        *({"prompt": f"What is {i} plus {i}?", "label": "easy"} for i in range(12)),
        *({"prompt": f"Summarise chapter {i} of the novel", "label": "Medium"} for i in range(12)),
        *({"prompt": f"Prove lemma {i} about prime gaps", "label": "frontier"} for i in range(12)),
    ]
    data = tmp_path / "labelled.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    out = tmp_path / "models" / "small.joblib"
    report = train_classifier(data, out, test_fraction=0.25, seed=3)
    assert (report.kind, report.rows, report.test_rows) == ("levels", 36, 9)
    assert report.positive_rate == pytest.approx(1 / 3)
    assert report.held_out_auc == pytest.approx(1.0)
    router = make_router("classifier", settings=settings_for(THREE), classifier_path=out)
    prompts = ("What is 40 plus 2?", "Summarise chapter 30 of the novel", "Prove lemma 99")
    easy, medium, hard = (router.decide_now(p) for p in prompts)
    assert easy.score is not None and medium.score is not None and hard.score is not None
    assert easy.score < medium.score < hard.score  # expected difficulty over three levels
    assert easy.tier == "small" and hard.tier != "small"


def test_retrained_file_is_loaded_afresh(tmp_path: Path) -> None:
    data = tmp_path / "labels.csv"
    out = tmp_path / "router.joblib"
    data.write_text(_csv_rows([("easy question", "easy"), ("hard proof", "hard")] * 6))
    two_tiers = settings_for(("small", "frontier"))  # one cut at 0.5
    train_classifier(data, out)
    router = make_router("classifier", settings=two_tiers, classifier_path=out)
    data.write_text(_csv_rows([("easy question", "hard"), ("hard proof", "easy")] * 6))
    train_classifier(data, out)
    retrained = make_router("classifier", settings=two_tiers, classifier_path=out)
    assert router.decide_now("easy question").tier == "small"
    assert retrained.decide_now("easy question").tier == "frontier"


def _csv_rows(rows: list[tuple[str, str]]) -> str:
    return "prompt,label\n" + "".join(f'"{p}",{label}\n' for p, label in rows)


def test_load_labeled_weak_strong_pairs(tmp_path: Path) -> None:
    data = tmp_path / "pairs.csv"
    data.write_text(
        "domain,prompt,weak_correct,strong_correct\n"
        'x,"weak wrong,\nstrong right",False,True\n'
        "x,both right,1,1\n"
        "x,both wrong,false,0\n"
        "x,weak only,True,False\n",
        encoding="utf-8",
    )
    texts, difficulties = load_labeled(data)
    assert texts[0] == "weak wrong,\nstrong right"
    assert difficulties == [1.0, 0.0, 0.0, 0.0]


def test_load_labeled_tier_names(tmp_path: Path) -> None:
    data = tmp_path / "tiers.jsonl"
    labels = ["nano", "small", "medium", "frontier", "easy", "HARD"]
    data.write_text("".join(json.dumps({"prompt": "p", "label": x}) + "\n" for x in labels))
    # a configured tier's position wins over the usual meaning of its name
    assert load_labeled(data, tiers=FOUR)[1] == [0.0, 0.5, 0.5, 1.0, 0.0, 1.0]
    with pytest.raises(RouterError, match="line 1: 'label' is 'nano'"):
        load_labeled(data)  # without the tiers, "nano" means nothing


def test_load_labeled_reports_bad_rows_with_line_numbers(tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_text(
        "".join(
            [
                "prompt,weak_correct,strong_correct\n",
                '"a prompt\nover two lines",maybe,1\n',
                ",1,0\n",
                "fine,0,1\n",
            ]
        ),
        encoding="utf-8",
    )
    with pytest.raises(RouterError) as caught:
        load_labeled(data)
    message = str(caught.value)
    assert "2 bad row(s)" in message
    assert "line 2: 'weak_correct' is 'maybe'; expected 0/1 or true/false" in message
    assert "line 4: 'prompt' is missing or empty" in message


def test_load_labeled_missing_columns(tmp_path: Path) -> None:
    data = tmp_path / "unlabelled.jsonl"
    data.write_text('{"prompt": "hi", "weak_correct": 1}\n', encoding="utf-8")
    expected = r"line 1: needs a 'label' column .* found columns: prompt, weak_correct$"
    with pytest.raises(RouterError, match=expected):
        load_labeled(data)
    bad_label = tmp_path / "odd.jsonl"
    bad_label.write_text('{"prompt": "a", "label": "easy"}\n{"prompt": "b", "label": "mid"}\n')
    with pytest.raises(RouterError, match="line 2: 'label' is 'mid'; expected one of easy"):
        load_labeled(bad_label)


def test_training_needs_two_levels(tmp_path: Path) -> None:
    data = tmp_path / "same.csv"
    data.write_text(_csv_rows([("q", "easy")] * 10))
    with pytest.raises(RouterError, match="same difficulty"):
        train_classifier(data, tmp_path / "out.joblib")
    assert not (tmp_path / "out.joblib").exists()


# --- llm, over HTTP against the simulator ---------------------------------------------


def sim_settings(tmp_path: Path, sim: Any, extra: str = "") -> Settings:
    path = write_config(
        tmp_path / "distillery.toml",
        base_url=sim.base_url,
        database_url=f"sqlite:///{tmp_path / 'd.db'}",
        extra=extra,
        max_retries=0,
    )
    return load_settings(path)


def test_parse_level() -> None:
    assert parse_level("EASY") == "easy"
    assert parse_level("  **Hard.** because") == "hard"
    assert parse_level("medium") == "medium"
    assert parse_level("I think HARD") is None
    assert parse_level("") is None


class RecordingCaller(Caller):
    """The real call path, remembering what it was asked (to check the router's request)."""

    def __init__(self, **parts: Any) -> None:
        super().__init__(**parts)
        self.sent: list[tuple[str, ChatRequest]] = []

    async def call(self, tier: TierConfig, request: ChatRequest, **options: Any) -> Completion:
        self.sent.append((tier.name, request))
        return await super().call(tier, request, **options)


class ChattyCaller(Caller):
    """A real model that ignores "one word": the simulator always obeys, so say it here."""

    async def call(self, tier: TierConfig, request: ChatRequest, **options: Any) -> Completion:
        answered = await super().call(tier, request, **options)
        return Completion("Well, it depends.", answered.prompt_tokens, 4, None, 1.0, "stop")


def llm_decisions(
    settings: Settings, texts: Sequence[str], caller_class: type[Caller] = Caller
) -> tuple[list[Decision], Caller]:
    """The llm router's decisions, its calls made through a caller of `caller_class` (in the
    event loop of this test, as a worker's are in its call loop)."""

    async def decide() -> tuple[list[Decision], Caller]:
        caller = caller_class(client=ChatClient(), limiter=open_rate_limiter(None))
        try:
            router = make_router("llm", settings=settings, caller=caller)
            return [await router.decide(text) for text in texts], caller
        finally:
            await caller.close()

    return asyncio.run(decide())


def test_llm_router_asks_the_cheapest_tier(tmp_path: Path, sim: Any) -> None:
    settings = sim_settings(tmp_path, sim)
    texts = ["What is two plus two? [easy]", "Prove the Riemann hypothesis [hard]"]
    (easy, hard), caller = llm_decisions(settings, texts, RecordingCaller)
    assert (easy.tier, easy.score, hard.tier, hard.score) == ("small", 0.0, "frontier", 1.0)
    for decision in (easy, hard):
        assert decision.call is not None and decision.error is None
        assert decision.asked_tier == "small"
        assert decision.call.prompt_tokens > 0 and decision.call.completion_tokens > 0
        assert decision.latency_ms >= decision.call.latency_ms
    assert isinstance(caller, RecordingCaller)
    tier, request = caller.sent[0]
    assert tier == "small"
    assert request.temperature == 0 and request.max_tokens == 5
    assert request.messages[0]["role"] == "user"
    assert request.messages[0]["content"].endswith("What is two plus two? [easy]")
    assert "EASY, MEDIUM, or HARD" in request.messages[0]["content"]


def test_llm_router_calls_go_over_http(tmp_path: Path, sim: Any) -> None:
    settings = sim_settings(tmp_path, sim, extra='[router]\nllm_router_tier = "medium"\n')
    (decision,), _ = llm_decisions(settings, ["Implement quicksort [hard]"])
    assert (decision.tier, decision.asked_tier) == ("frontier", "medium")
    assert decision.call is not None and decision.call.text == "HARD"
    assert sim.stats()["by_model"] == {"sim-medium": {"requests": 1, "200": 1}}


def test_llm_router_falls_back_to_the_middle_tier_on_failure(tmp_path: Path, sim: Any) -> None:
    settings = sim_settings(tmp_path, sim)  # max_retries = 0: one try
    sim.fail_next(5, status=500)
    (decision,), _ = llm_decisions(settings, ["What is two plus two? [easy]"])
    assert (decision.tier, decision.score, decision.call) == ("medium", None, None)
    assert decision.error is not None and decision.error.http_status == 500
    assert len(decision.failures) == 1 and decision.asked_tier == "small"


def test_llm_router_retries_like_every_call(sim: Any) -> None:
    """The router's call goes through the tier's retries; a try that fails is kept (the
    route step records each as an attempt), and one that then succeeds decides."""
    sim.fail_next(2, status=503)
    settings = settings_for(THREE, base_url=sim.base_url)
    (decision,), _ = llm_decisions(settings, ["[hard] prove it"])
    assert [error.http_status for error in decision.failures] == [503, 503]
    assert decision.call is not None and decision.error is None and decision.tier == "frontier"


def test_llm_router_failure_with_two_tiers_goes_to_the_better_one(sim: Any) -> None:
    sim.configure(error_rate=1.0)
    settings = settings_for(("small", "frontier"), base_url=sim.base_url)
    (decision,), _ = llm_decisions(settings, ["[easy] hi"])
    assert decision.tier == "frontier"
    assert decision.error is not None and decision.call is None


def test_llm_router_unparsable_answer_is_medium(tmp_path: Path, sim: Any) -> None:
    settings = sim_settings(tmp_path, sim)
    (decision,), _ = llm_decisions(settings, ["[hard] x"], ChattyCaller)
    assert (decision.tier, decision.score, decision.error) == ("medium", None, None)
    assert decision.call is not None and decision.call.text == "Well, it depends."
