"""The local fine-tuning backend: `finetune submit --backend local` trains a few LoRA steps
on a tiny llama with SmolLM2's tokenizer and chat template (in process without REDIS_URL, in
a real `distillery worker --tiers training` with it), records the run and its loss curve in
`fine_tunes`; labels cover the assistant's tokens only; and the bad cases start nothing or
end as a failed row with a clear error, never a traceback."""

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, func, select

from models import FineTune, FineTuneStatus
from tests.helpers.cli import invoke
from tests.helpers.config import write_config
from tests.helpers.flower import PASSWORD, USER, Flower, start_flower, stop
from tests.helpers.services import make_engine
from tests.helpers.training import (
    example,
    require_train_extra,
    tiny_model_dir,
    write_training_file,
)
from tests.helpers.workers import Workers, wait_until
from workers.errors import ExitCode
from workers.task_names import TRAIN_TASK

__all__ = ["tiny_model_dir"]  # a fixture, used by name


@pytest.fixture
def env(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """Embedded mode (no REDIS_URL), a SQLite database, output under tmp_path."""
    from workers.settings import get_settings

    require_train_extra()
    config = write_config(
        tmp_path / "distillery.toml", base_url="http://127.0.0.1:9/v1", database_url=sqlite_url
    )
    monkeypatch.setenv("DISTILLERY_CONFIG", str(config))
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    yield {"config": config, "engine": make_engine(sqlite_url), "tmp": tmp_path}
    get_settings.cache_clear()


def rows(engine: Any) -> list[FineTune]:
    with Session(engine) as session:
        return list(session.exec(select(FineTune).order_by(FineTune.id)))  # type: ignore[arg-type]


def count(engine: Any) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(FineTune)).one()


def submit(*args: str) -> Any:
    return invoke("finetune", "submit", *args, "--backend", "local")


def test_labels_cover_only_the_assistant_tokens(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from workers.training.data import IGNORE, encode

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = example("Great phone.", "positive")["messages"]
    messages += [
        {"role": "user", "content": "And this: awful phone."},
        {"role": "assistant", "content": "negative"},
    ]
    row = encode(messages, tokenizer)
    trained = [t for t, label in zip(row.input_ids, row.labels, strict=True) if label != IGNORE]
    assert tokenizer.decode(trained) == "positive<|im_end|>\nnegative<|im_end|>\n"
    # the labels are the tokens themselves where trained (the model shifts them)
    assert all(label in (IGNORE, t) for t, label in zip(row.input_ids, row.labels, strict=True))
    # the prompt is the base model's own chat template, with its system turn
    assert tokenizer.decode(row.input_ids).startswith("<|im_start|>system\nClassify")


def test_local_run_in_process_records_steps_and_loss(
    env: dict[str, Any], tiny_model_dir: Path
) -> None:
    training = write_training_file(env["tmp"] / "train.jsonl", 12)
    validation = write_training_file(env["tmp"] / "valid.jsonl", 4)
    result = submit(
        str(training), "--validation", str(validation), "--base", str(tiny_model_dir),
        "--epochs", "2", "--batch-size", "4", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded"
    assert summary["steps_done"] == summary["steps_total"] == 6  # 2 epochs x 3 batches
    assert summary["examples"] == 12 and summary["dropped"] == {}
    curve = summary["loss_curve"]
    assert [point["step"] for point in curve] == [1, 2, 3, 4, 5, 6]
    assert all(point["train_loss"] > 0 for point in curve)
    assert curve[-1]["validation_loss"] is not None  # the last step is evaluated
    assert Path(summary["artifacts"]["adapter"], "adapter_config.json").is_file()
    assert "gguf" not in summary["artifacts"]  # a Hugging Face directory base: no GGUF
    (row,) = rows(env["engine"])
    assert row.status == FineTuneStatus.SUCCEEDED and row.started_at and row.finished_at
    assert row.training_sha256 and row.validation_sha256
    assert row.hyperparameters["epochs"] == 2 and row.hyperparameters["lora_r"] == 16

    status = invoke("finetune", "status", str(row.id))
    assert status.exit_code == 0, status.output
    assert f"fine-tune {row.id} (local): succeeded, step 6/6" in status.stdout
    listed = invoke("finetune", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == [
        {"id": row.id, "backend": "local", "status": "succeeded", "steps": "6/6",
         "base": str(tiny_model_dir), "provider_job_id": None}
    ]  # fmt: skip


def test_a_bad_file_is_reported_by_line_and_starts_nothing(
    env: dict[str, Any], tiny_model_dir: Path
) -> None:
    bad = write_training_file(env["tmp"] / "bad.jsonl", 12)
    lines = bad.read_text().splitlines()
    lines[2] = "{not json"
    lines[6] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    bad.write_text("\n".join(lines) + "\n")
    result = submit(str(bad), "--base", str(tiny_model_dir))
    assert result.exit_code == ExitCode.BAD_INPUT
    assert f"{bad}:3: invalid JSON" in result.stderr
    assert f"{bad}:7: no assistant message" in result.stderr
    assert "nothing was started" in result.stderr
    assert count(env["engine"]) == 0


def test_fewer_than_ten_examples_are_refused(env: dict[str, Any], tiny_model_dir: Path) -> None:
    few = write_training_file(env["tmp"] / "few.jsonl", 9)
    result = submit(str(few), "--base", str(tiny_model_dir))
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "has 9 examples; training needs at least 10" in result.stderr
    assert count(env["engine"]) == 0


def long_example(words: int) -> dict[str, Any]:
    return example(" ".join(["terrible"] * words), "negative")


def test_examples_over_the_context_are_dropped_and_counted(
    env: dict[str, Any], tiny_model_dir: Path
) -> None:
    path = write_training_file(env["tmp"] / "train.jsonl", 12)
    with path.open("a") as stream:  # the tiny model's context is 256 tokens
        for _ in range(3):
            stream.write(json.dumps(long_example(400)) + "\n")
    result = submit(str(path), "--base", str(tiny_model_dir), "--max-steps", "1", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["examples"] == 12 and summary["dropped"] == {"over_context": 3}


def test_too_few_examples_within_the_context_fail_the_run(
    env: dict[str, Any], tiny_model_dir: Path
) -> None:
    path = env["tmp"] / "long.jsonl"
    rows_ = [long_example(400)] * 8 + [example("Fine.", "positive")] * 4
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_))
    result = submit(str(path), "--base", str(tiny_model_dir))
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "4 examples fit in 256 tokens (8 longer were dropped)" in result.stderr
    assert "Traceback" not in result.output
    (row,) = rows(env["engine"])
    assert row.status == FineTuneStatus.FAILED and "8 longer were dropped" in (row.error or "")


@pytest.mark.parametrize("kind", ["missing", "empty-dir", "text-file"])
def test_a_base_that_is_not_a_model_is_refused(env: dict[str, Any], kind: str) -> None:
    training = write_training_file(env["tmp"] / "train.jsonl", 12)
    base = env["tmp"] / "base"
    if kind == "empty-dir":
        base.mkdir()
    elif kind == "text-file":
        base.write_text("hello")
    result = submit(str(training), "--base", str(base))
    assert result.exit_code == ExitCode.BAD_INPUT
    expected = "no such file or directory" if kind == "missing" else "not a model"
    assert f"--base {base}: {expected}" in result.stderr
    assert count(env["engine"]) == 0


def test_without_the_train_extra_local_says_what_to_install(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if torch were not installed: find_spec answers None for a None entry.
    monkeypatch.setitem(sys.modules, "torch", None)
    training = write_training_file(env["tmp"] / "train.jsonl", 12)
    result = submit(str(training))
    assert result.exit_code == ExitCode.BAD_CONFIG
    assert "needs the train extra (torch not installed)" in result.stderr
    assert "pip install -e '.[train]'" in result.stderr
    assert count(env["engine"]) == 0


def test_cancel_stops_a_run_after_its_current_step(
    env: dict[str, Any], tiny_model_dir: Path
) -> None:
    from producer import local_finetune as local
    from workers.settings import get_settings
    from workers.training.run import train_fine_tune

    training = write_training_file(env["tmp"] / "train.jsonl", 12)
    params = local.hyperparameters(
        epochs=3, batch_size=2, learning_rate=None, max_steps=0, export="base"
    )
    request = local.LocalRequest(training, None, str(tiny_model_dir), params)
    row = local.submit_local(request, settings=get_settings(), engine=env["engine"])
    assert row.id is not None
    run_id = row.id

    def cancel_at_step_2(log: Any) -> None:
        if log.step == 2:
            assert invoke("finetune", "cancel", str(run_id)).exit_code == 0

    ended = train_fine_tune(env["engine"], run_id, on_step=cancel_at_step_2)
    assert ended.status == FineTuneStatus.CANCELLED
    assert ended.steps_done == 2 and ended.steps_total == 18
    assert "adapter" not in ended.artifacts
    # a cancelled run's redelivered message does nothing
    assert train_fine_tune(env["engine"], run_id).steps_done == 2


def test_a_training_worker_runs_it_from_the_queue(
    tmp_path: Path,
    sqlite_url: str,
    tiny_model_dir: Path,
    clean_redis: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.helpers.services import TEST_REDIS_URL
    from workers.settings import get_settings

    require_train_extra()
    config = write_config(
        tmp_path / "distillery.toml", base_url="http://127.0.0.1:9/v1", database_url=sqlite_url
    )
    monkeypatch.setenv("DISTILLERY_CONFIG", str(config))
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    get_settings.cache_clear()
    workers = Workers(tmp_path)
    flower = start_flower(tmp_path, config, [], {"FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"})
    try:
        workers.start(config, tiers="training")
        training = write_training_file(tmp_path / "train.jsonl", 12)
        result = submit(str(training), "--base", str(tiny_model_dir), "--max-steps", "2")
        assert result.exit_code == 0, result.output
        assert "queued for a `distillery worker --tiers training`" in result.stdout
        engine = make_engine(sqlite_url)
        wait_until(
            lambda: rows(engine)[0].status == FineTuneStatus.SUCCEEDED,
            timeout=300,
            what="the training worker to finish the run",
            logs=workers.log_text,
        )
        watched = invoke("finetune", "status", str(rows(engine)[0].id), "--watch")
        assert watched.exit_code == 0, watched.output
        assert "succeeded, step 2/2" in watched.stdout
        check_flower_shows_the_run(flower)
    finally:
        workers.stop()
        stop(flower)
        get_settings.cache_clear()


def check_flower_shows_the_run(flower: Flower) -> None:
    """The run is Celery work like any other: Flower lists the training worker on its queue
    and the task, succeeded, from the worker's events."""
    workers_seen = flower.get("/api/workers?refresh=1").raise_for_status().json()
    queues = {q["name"] for info in workers_seen.values() for q in info["active_queues"]}
    assert "training" in queues, workers_seen
    found: list[dict[str, Any]] = []

    def succeeded() -> bool:
        tasks = flower.get(f"/api/tasks?taskname={TRAIN_TASK}").raise_for_status().json()
        found[:] = [task for task in tasks.values() if task.get("state") == "SUCCESS"]
        return bool(found)

    wait_until(succeeded, timeout=60, what="Flower to show the training task", logs=flower.log_text)
    assert found[0]["name"] == TRAIN_TASK


def test_the_training_queue_needs_a_worker_of_its_own(env: dict[str, Any]) -> None:
    from producer.worker import worker_queues
    from workers.settings import get_settings

    assert worker_queues(get_settings(), "training", control=True) == ["training"]
    with pytest.raises(Exception, match="needs a worker of its own"):
        worker_queues(get_settings(), "training,small", control=True)


def test_a_run_killed_mid_way_resumes_from_its_checkpoint(
    env: dict[str, Any], tiny_model_dir: Path
) -> None:
    """SIGKILL a real `finetune submit` process after a checkpoint; `finetune resume` goes
    on from that step, not from the start, and ends with every step recorded once."""
    import os
    import signal
    import subprocess

    training = write_training_file(env["tmp"] / "train.jsonl", 12)
    command = [
        sys.executable, "-m", "producer.cli", "finetune", "submit", str(training),
        "--backend", "local", "--base", str(tiny_model_dir), "--epochs", "100",
        "--batch-size", "2", "--max-steps", "200", "--checkpoint-every", "5",
    ]  # fmt: skip
    log = (env["tmp"] / "run.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def past_a_checkpoint() -> bool:
        found = rows(env["engine"])
        return bool(found) and "checkpoint" in found[0].artifacts and found[0].steps_done > 7

    try:
        wait_until(past_a_checkpoint, timeout=300, what="a checkpoint",
                   logs=lambda: (env["tmp"] / "run.log").read_text())  # fmt: skip
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    (killed,) = rows(env["engine"])
    assert killed.status == FineTuneStatus.RUNNING  # nobody was told: the process just died
    assert killed.steps_done < 200
    checkpoint = Path(killed.artifacts["checkpoint"])
    saved_at = int(checkpoint.name.removeprefix("step-"))
    assert saved_at % 5 == 0 and saved_at <= killed.steps_done

    result = invoke("finetune", "resume", str(killed.id), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded"
    # from that checkpoint or a later one the process wrote before it died; not from 0
    assert int(summary["artifacts"]["resumed_from_step"]) >= saved_at > 0
    assert [point["step"] for point in summary["loss_curve"]] == list(range(1, 201))


def test_resume_refuses_a_finished_run(env: dict[str, Any], tiny_model_dir: Path) -> None:
    training = write_training_file(env["tmp"] / "train.jsonl", 12)
    assert submit(str(training), "--base", str(tiny_model_dir), "--max-steps", "1").exit_code == 0
    (row,) = rows(env["engine"])
    result = invoke("finetune", "resume", str(row.id))
    assert result.exit_code == ExitCode.BAD_INPUT
    assert f"fine-tune {row.id} is succeeded: nothing to resume" in result.stderr


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_one(tmp_path: Path) -> None:
    """A write that fails (here: its directory's parent is a file, as good as a full disk
    for the code) is a clear error naming the checkpoint kept, and that one still loads."""
    from workers.training.run import CheckpointFailed, Checkpoints

    class Saves:
        def save_state(self, directory: Path) -> None:
            (directory / "trainer.pt").write_bytes(b"state")

    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.save(Saves(), 5, [{"step": 5}])
    (tmp_path / "checkpoints" / "step-10").write_text("in the way")  # mkdir will fail

    class Fails(Saves):
        def save_state(self, directory: Path) -> None:
            raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointFailed, match="the checkpoint at step 5 is kept"):
        checkpoints.save(Fails(), 10, [])
    assert checkpoints.latest_step() == 5
    assert (tmp_path / "checkpoints" / "step-5" / "trainer.pt").read_bytes() == b"state"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that really fills up (mounting needs root, as here and in CI)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_while_checkpointing_keeps_the_last_one(small_disk: Path) -> None:
    """The kernel's own ENOSPC, not a simulated one: the failed checkpoint is a clear error
    naming the one kept, its partial files are gone, and the kept one still loads."""
    from workers.training.run import CheckpointFailed, Checkpoints

    class Writes:
        def __init__(self, size: int) -> None:
            self.size = size

        def save_state(self, directory: Path) -> None:
            (directory / "trainer.pt").write_bytes(b"s" * self.size)

    checkpoints = Checkpoints(small_disk / "checkpoints")
    checkpoints.save(Writes(16_000), 5, [{"step": 5}])
    with pytest.raises(CheckpointFailed, match="the checkpoint at step 5 is kept"):
        checkpoints.save(Writes(1_000_000), 10, [])  # four times the whole disk
    assert checkpoints.latest_step() == 5
    assert (small_disk / "checkpoints" / "step-5" / "trainer.pt").stat().st_size == 16_000
    assert not (small_disk / "checkpoints" / "step-10").exists()
