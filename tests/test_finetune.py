"""Fine-tune submission end to end against the simulator over real HTTP: a training file
written by the reducer from a teacher job's rows in SQLite, `finetune submit`, `finetune
status` to a succeeded job, the job id on the training_files row, the student tier added to
the config and answering chat completions; and the bad cases, which upload nothing."""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner
from sqlmodel import Session

from models import (
    FineTune,
    FineTuneBackend,
    FineTuneStatus,
    Job,
    JobMode,
    JobStatus,
    Prompt,
    PromptStatus,
    TrainingFile,
)
from producer.cli.finetune import finetune
from simulator import ModelBehaviour, RunningSimulator, SimConfig, start_in_thread
from tests.helpers.config import write_config
from tests.helpers.pipeline import write_jsonl
from tests.helpers.services import make_engine
from workers.errors import ExitCode

ANSWER = "A long enough answer from the teacher, well over the reducer's fifty characters."


@pytest.fixture
def ft_sim() -> Iterator[RunningSimulator]:
    with start_in_thread(SimConfig(default=ModelBehaviour(latency_ms=1))) as running:
        set_pace(running, 0)  # one stage per retrieve: no sleeps
        yield running


def set_pace(sim: RunningSimulator, step_s: float) -> None:
    httpx.post(f"{sim.url}/admin/fine_tuning", json={"step_s": step_s}, timeout=10)


@pytest.fixture
def env(
    tmp_path: Path, ft_sim: RunningSimulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """A config whose tiers are on the simulator, a SQLite database, settings re-read."""
    from workers.settings import get_settings

    config = write_config(
        tmp_path / "distillery.toml", base_url=ft_sim.base_url, database_url=sqlite_url
    )
    monkeypatch.setenv("DISTILLERY_CONFIG", str(config))
    get_settings.cache_clear()
    client = openai.OpenAI(base_url=ft_sim.base_url, api_key="x", max_retries=0)
    yield {
        "config": config,
        "engine": make_engine(sqlite_url),
        "client": client,
        "base_url": ft_sim.base_url,
        "tmp": tmp_path,
    }
    get_settings.cache_clear()


def invoke(*args: str) -> Any:
    return CliRunner().invoke(finetune, list(args), catch_exceptions=False)


def invoke_json(*args: str) -> dict[str, Any]:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def reduced_training_file(engine: Any, out: Path, examples: int = 24) -> TrainingFile:
    """A teacher job's answered rows, reduced by the real reducer into files and a row."""
    from workers.reducer import reduce_job
    from workers.settings import ReducerConfig

    with Session(engine) as session:
        job = Job(mode=JobMode.TEACHER, status=JobStatus.FINISHED, total=examples)
        session.add(job)
        session.flush()
        assert job.id is not None
        for idx in range(examples):
            messages = [{"role": "user", "content": f"Question number {idx}?"}]
            session.add(
                Prompt(
                    job_id=job.id,
                    idx=idx,
                    messages=messages,
                    status=PromptStatus.SUCCEEDED,
                    response=f"{ANSWER} ({idx})",
                )
            )
        session.commit()
        job_id = job.id
    config = ReducerConfig(validation_fraction=0.25)
    return reduce_job(engine=engine, job_id=job_id, out=out, config=config).record


def example(n: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"question {n}"},
            {"role": "assistant", "content": f"answer {n}"},
        ]
    }


def test_submit_status_and_the_student_tier(env: dict[str, Any]) -> None:
    record = reduced_training_file(env["engine"], env["tmp"] / "out" / "train.jsonl")
    assert record.validation_path is not None
    submitted = invoke_json(
        "submit",
        record.path,
        "--model",
        "sim-small",
        "--validation",
        record.validation_path,
        "--suffix",
        "loop",  # ":loop:" is an emoji code to rich: the name must print as it is
    )
    job_id = submitted["fine_tune_job_id"]
    assert submitted["status"] == "validating_files"
    assert submitted["training_file"]["examples"] == record.examples
    assert submitted["validation_file"]["examples"] == record.validation_examples
    assert submitted["training_files_row"] == {
        "id": record.id,
        "job_id": record.job_id,
        "matched_by": "sha256",
        "replaced_fine_tune_job_id": None,
    }
    with Session(env["engine"]) as session:
        row = session.get(TrainingFile, record.id)
        assert row is not None and row.fine_tune_job_id == job_id

    remote = env["client"].fine_tuning.jobs.retrieve(job_id)  # one stage on: queued
    assert remote.training_file == submitted["training_file"]["file_id"]
    assert remote.validation_file == submitted["validation_file"]["file_id"]

    first = invoke("status", job_id)
    assert first.exit_code == 0 and f"fine-tune job {job_id}: running" in first.output
    watched = invoke("status", job_id, "--watch", "--interval", "0")
    assert watched.exit_code == 0, watched.output
    model = f"ft:sim-small:distillery:loop:{job_id.removeprefix('ftjob-')}"
    assert "Fine-tuning job started" in watched.output
    assert f"fine-tuned model: {model}" in watched.output
    assert "[tiers.student]" in watched.output and f'model = "{model}"' in watched.output

    status = invoke_json("status", job_id)
    assert status["status"] == "succeeded" and status["fine_tuned_model"] == model
    # the provider's job is a fine_tunes row too, moved along by status
    with Session(env["engine"]) as session:
        run = session.get(FineTune, submitted["fine_tune_id"])
        assert run is not None and run.backend == FineTuneBackend.OPENAI
        assert run.provider_job_id == job_id and run.status == FineTuneStatus.SUCCEEDED
        assert run.training_sha256 == record.sha256 and run.training_file_id == record.id
        assert run.artifacts == {"model": model} and run.finished_at is not None
    by_our_id = invoke("status", str(submitted["fine_tune_id"]))  # our id: the same job
    assert by_our_id.exit_code == 0 and f"fine-tune job {job_id}: succeeded" in by_our_id.output
    assert status["events"][-1]["message"] == "The job has successfully completed"
    assert f'[tiers.student]\nbase_url = "{env["base_url"]}"' in status["tier_block"]
    assert f'model = "{model}"' in status["tier_block"]
    check_student_tier_answers(env, job_id, model, status["tier_block"])


def check_student_tier_answers(env: dict[str, Any], job_id: str, model: str, block: str) -> None:
    from workers.caller import run_calls
    from workers.chat import ChatRequest
    from workers.settings import load_settings

    added = invoke(
        "status",
        job_id,
        "--add-tier",
        "student",
        "--config",
        str(env["config"]),
        "--position",
        "first",
    )
    assert added.exit_code == 0, added.output
    assert f"added to {env['config']}" in added.output
    assert f"\n\n{block}\n[tiers.small]\n" in env["config"].read_text()  # before the others
    settings = load_settings(env["config"])
    assert list(settings.tiers) == ["student", "small", "medium", "frontier"]
    assert settings.tiers["student"].model == model
    request = ChatRequest([{"role": "user", "content": "What is the capital of France?"}])
    student = settings.tiers["student"]
    answer = run_calls(settings, lambda caller: caller.call(student, request))
    assert answer.text and answer.completion_tokens > 0
    assert model in [m.id for m in env["client"].models.list()]


def test_a_file_the_reducer_did_not_write_is_submitted_anyway(env: dict[str, Any]) -> None:
    path = write_jsonl(env["tmp"] / "handmade.jsonl", [example(n) for n in range(12)])
    result = invoke("submit", str(path), "--model", "sim-small")
    assert result.exit_code == 0, result.output
    assert "not in training_files" in result.output
    (job,) = env["client"].fine_tuning.jobs.list().data
    assert job.model == "sim-small"


def test_an_edited_training_file_matches_its_row_by_path(env: dict[str, Any]) -> None:
    record = reduced_training_file(env["engine"], env["tmp"] / "train.jsonl")
    path = Path(record.path)
    path.write_text(path.read_text().replace("teacher", "editor"), encoding="utf-8")
    submitted = invoke_json("submit", str(path), "--model", "sim-small")
    assert submitted["training_files_row"]["matched_by"] == "path"
    again = invoke_json("submit", str(path), "--model", "sim-small")
    assert (
        again["training_files_row"]["replaced_fine_tune_job_id"] == (submitted["fine_tune_job_id"])
    )


BAD_FILES = [
    ("missing.jsonl", None, "not found"),
    ("empty.jsonl", "", "is empty"),
    ("broken.jsonl", json.dumps(example(1)) + "\nnot json\n", "broken.jsonl:2: invalid JSON"),
    (
        "no_answer.jsonl",
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n",
        "no_answer.jsonl:1: no assistant message",
    ),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_training_file_uploads_nothing(
    env: dict[str, Any], name: str, content: str | None, message: str
) -> None:
    path = env["tmp"] / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = invoke("submit", str(path), "--model", "sim-small")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert message in result.output and "nothing was uploaded" in result.output
    assert "Traceback" not in result.output
    assert env["client"].files.list().data == []


def test_bad_validation_file_uploads_not_even_the_training_file(env: dict[str, Any]) -> None:
    train = write_jsonl(env["tmp"] / "train.jsonl", [example(n) for n in range(12)])
    valid = env["tmp"] / "valid.jsonl"
    valid.write_text('{"messages": "not a list"}\n', encoding="utf-8")
    result = invoke("submit", str(train), "--model", "m", "--validation", str(valid))
    assert result.exit_code == ExitCode.BAD_INPUT and "valid.jsonl:1" in result.output
    assert env["client"].files.list().data == []


def test_too_few_examples_fails_the_job_and_watch_exits_non_zero(env: dict[str, Any]) -> None:
    path = write_jsonl(env["tmp"] / "small.jsonl", [example(n) for n in range(3)])
    submitted = invoke("submit", str(path), "--model", "sim-small")
    assert submitted.exit_code == 0 and "at least 10" in submitted.output  # a warning only
    job_id = env["client"].fine_tuning.jobs.list().data[0].id
    watched = invoke("status", job_id, "--watch", "--interval", "0", "--add-tier", "student")
    assert watched.exit_code == ExitCode.ERROR
    assert f"fine-tune job {job_id} failed" in watched.output and "at least 10" in watched.output
    assert "[tiers." not in watched.output
    assert "student" not in env["config"].read_text()


def test_unknown_job_and_unknown_tier(env: dict[str, Any]) -> None:
    missing = invoke("status", "ftjob-nope")
    assert missing.exit_code == ExitCode.NOT_FOUND and "HTTP 404" in missing.output
    path = write_jsonl(env["tmp"] / "train.jsonl", [example(n) for n in range(12)])
    wrong_tier = invoke("submit", str(path), "--model", "m", "--tier", "nope")
    assert (
        wrong_tier.exit_code == ExitCode.BAD_CONFIG and "unknown tier 'nope'" in wrong_tier.output
    )


def test_add_tier_refuses_what_would_break_the_config(env: dict[str, Any]) -> None:
    path = write_jsonl(env["tmp"] / "train.jsonl", [example(n) for n in range(12)])
    job_id = invoke_json("submit", str(path), "--model", "sim-small")["fine_tune_job_id"]
    early = invoke("status", job_id, "--add-tier", "student")
    assert early.exit_code == ExitCode.USAGE and "needs a succeeded job" in early.output
    before = env["config"].read_text()
    taken = invoke("status", job_id, "--watch", "--interval", "0", "--add-tier", "small")
    assert taken.exit_code == ExitCode.BAD_CONFIG and "already has [tiers.small]" in taken.output
    assert env["config"].read_text() == before
    bare = env["tmp"] / "bare.toml"
    bare.write_text('[teacher]\ntier = "frontier"\n', encoding="utf-8")
    no_tiers = invoke("status", job_id, "--add-tier", "student", "--config", str(bare))
    assert no_tiers.exit_code == ExitCode.BAD_CONFIG and "built-in tiers" in no_tiers.output
    assert bare.read_text() == '[teacher]\ntier = "frontier"\n'


# --- the simulator's fine-tuning API, through the openai client -------------------------


def test_simulator_refuses_bad_uploads_and_unknown_files(env: dict[str, Any]) -> None:
    client = env["client"]
    with pytest.raises(openai.BadRequestError, match="line 2: not JSON"):
        client.files.create(file=("x.jsonl", b'{"messages": [1]}\n{oops\n'), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="invalid training_file: file-nope"):
        client.fine_tuning.jobs.create(model="sim-small", training_file="file-nope")
    batch = client.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="purpose 'batch'"):
        client.fine_tuning.jobs.create(model="sim-small", training_file=batch.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")


def test_simulator_jobs_advance_with_time(env: dict[str, Any], ft_sim: RunningSimulator) -> None:
    set_pace(ft_sim, 0.05)
    client = env["client"]
    data = "".join(json.dumps(example(n)) + "\n" for n in range(10)).encode()
    upload = client.files.create(file=("t.jsonl", data), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="base", training_file=upload.id)
    deadline = time.monotonic() + 30
    while job.status != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded" and job.fine_tuned_model == f"ft:base:distillery::{job.id[6:]}"
    assert job.trained_tokens and job.finished_at is not None
    events = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(events.data) == 2 and events.has_more
    older = client.fine_tuning.jobs.list_events(job.id, after=events.data[-1].id)
    assert [e.message for e in older.data][-1].startswith("Validating training file")
