"""The student as llama.cpp serves it. The export is pinned by a round trip: SmolLM2's
*untrained* weights, as transformers dequantised them, exported the same way as a student
(`quant="base"`: each tensor in the base GGUF's own type, Q4_1 for the projections) are the
original GGUF's tensors byte for byte, and llama.cpp gives the same greedy answers for both.
Then a real LoRA run on SmolLM2 exports a student that `distillery student serve` serves
with logprobs, and `finetune status --add-tier` writes its tier block."""

import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.cli import invoke, use_config_text
from tests.helpers.config import write_config
from tests.helpers.realmodel import MODEL_ALIAS, llama_server, require_real_model
from tests.helpers.services import free_port, make_engine
from tests.helpers.training import smollm2, smollm2_loader, write_training_file
from tests.helpers.workers import wait_until

__all__ = ["smollm2", "smollm2_loader"]  # fixtures, used by name

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "What is 12 times 12?",
    "Give me a synonym for happy.",
]


def greedy_answers(base_url: str, model: str) -> list[str]:
    answers = []
    for prompt in PROMPTS:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": 24,
        }
        reply = httpx.post(f"{base_url}/chat/completions", json=body, timeout=120).json()
        answers.append(reply["choices"][0]["message"]["content"])
    return answers


def test_the_untrained_base_exports_to_the_original(
    smollm2: tuple[Any, Any], tmp_path: Path
) -> None:
    import gguf

    from workers.training.export import export_gguf

    original = require_real_model()
    model, _ = smollm2
    exported = export_gguf(model, original, tmp_path / "base.gguf", quant="base")
    before, after = gguf.GGUFReader(original), gguf.GGUFReader(exported)
    ours = {t.name: t for t in after.tensors}
    assert sorted(ours) == sorted(t.name for t in before.tensors)
    for tensor in before.tensors:
        assert ours[tensor.name].tensor_type == tensor.tensor_type, tensor.name
        assert bytes(ours[tensor.name].data) == bytes(tensor.data), tensor.name
    assert after.fields["tokenizer.chat_template"].contents() == (
        before.fields["tokenizer.chat_template"].contents()
    )
    with llama_server() as url:
        expected = greedy_answers(url, MODEL_ALIAS)
    with llama_server(model=exported) as url:
        assert greedy_answers(url, MODEL_ALIAS) == expected
    assert "Paris" in expected[0]  # the answers compared are real ones


@pytest.fixture
def trained(
    smollm2_loader: Any, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """A two-step LoRA run on SmolLM2, exported as the student GGUF."""
    from producer import local_finetune as local
    from workers.settings import get_settings
    from workers.training.run import train_fine_tune

    require_real_model()
    config = write_config(
        tmp_path / "distillery.toml",
        base_url="http://127.0.0.1:9/v1",
        database_url=sqlite_url,
        extra="[training]\nstudent_price_per_1k = 0.02\n",
    )
    monkeypatch.setenv("DISTILLERY_CONFIG", str(config))
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    engine = make_engine(sqlite_url)
    training = write_training_file(tmp_path / "train.jsonl", 12)
    params = local.hyperparameters(
        epochs=1, batch_size=4, learning_rate=None, max_steps=2, export="base"
    )
    request = local.LocalRequest(training, None, None, params)
    row = local.submit_local(request, settings=get_settings(), engine=engine)
    assert row.id is not None
    ended = train_fine_tune(engine, row.id, loader=smollm2_loader)
    yield {"row": ended, "config": config, "engine": engine}
    get_settings.cache_clear()


def test_a_trained_student_is_served_with_logprobs(trained: dict[str, Any]) -> None:
    import gguf

    row = trained["row"]
    assert row.status.value == "succeeded", row.error
    student = Path(row.artifacts["gguf"])
    base = gguf.GGUFReader(row.base_model)
    ours = {t.name: t for t in gguf.GGUFReader(student).tensors}
    changed = [t.name for t in base.tensors if bytes(ours[t.name].data) != bytes(t.data)]
    assert any(name.endswith("attn_q.weight") for name in changed)  # the LoRA was merged
    assert not any(name.endswith("norm.weight") for name in changed)  # nothing else moved

    adapter = gguf.GGUFReader(row.artifacts["adapter_gguf"])
    assert len(adapter.tensors) == 30 * 7 * 2  # a and b for 7 projections of 30 layers
    assert adapter.fields["general.type"].contents() == "adapter"
    for extra in ([], ["--adapter"]):  # the merged student, then base + LoRA adapter
        tokens = _serve_and_ask(row, trained["config"], student.parent, *extra)
        assert tokens and all(token["logprob"] <= 0 for token in tokens)

    added = invoke("finetune", "status", str(row.id), "--add-tier", "student")
    assert added.exit_code == 0, added.output
    tier = tomllib.loads(trained["config"].read_text())["tiers"]["student"]
    assert tier == {
        "base_url": "http://127.0.0.1:8910/v1",
        "model": f"student-{row.id}",
        "input_per_1k": 0.02,
        "output_per_1k": 0.02,
        "concurrency": 1,
    }


def _serve_and_ask(row: Any, config: Path, logs: Path, *extra: str) -> list[dict[str, Any]]:
    """`distillery student serve ID [EXTRA]` asked one greedy question: its token logprobs."""
    port = free_port()
    log = (logs / f"serve{len(extra)}.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "student", "serve", str(row.id),
         "--port", str(port), *extra],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "DISTILLERY_CONFIG": str(config)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until(lambda: _ready(url), timeout=180, what="student serve to answer")
        body = {
            "model": f"student-{row.id}",
            "messages": [{"role": "user", "content": "Loved it, five stars."}],
            "temperature": 0,
            "max_tokens": 4,
            "logprobs": True,
            "top_logprobs": 0,
        }
        reply = httpx.post(f"{url}/chat/completions", json=body, timeout=120).json()
        tokens: list[dict[str, Any]] = reply["choices"][0]["logprobs"]["content"]
        return tokens
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_serving_a_run_without_a_student_is_refused(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlmodel import Session

    from models import FineTune, FineTuneBackend, FineTuneStatus
    from workers.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    with Session(make_engine(sqlite_url)) as session:
        failed = FineTune(
            backend=FineTuneBackend.LOCAL, base_model="b", training_path="t",
            training_sha256="s", status=FineTuneStatus.FAILED,
        )  # fmt: skip
        session.add(failed)
        session.commit()
        failed_id = failed.id
    result = invoke("student", "serve", str(failed_id))
    assert result.exit_code == 3
    assert f"fine-tune {failed_id} is failed: no student to serve yet" in result.stderr
    missing = invoke("student", "serve", "99")
    assert missing.exit_code == 6 and "no fine-tune 99" in missing.stderr
    get_settings.cache_clear()


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sentiment"


def sentiment_teacher_file(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The example's first step as run.sh does it: a teacher job over the 160 training
    sentences, the simulator playing the teacher from the example's answer key, reduced with
    the example's settings. Returns the training file it wrote."""
    from simulator import SimConfig, start_in_thread

    monkeypatch.delenv("REDIS_URL", raising=False)  # embedded: the job runs in process
    text = (EXAMPLE / "sentiment.toml").read_text(encoding="utf-8")
    text = text.replace("sqlite:///sentiment.db", sqlite_url)
    text = text.replace('output_dir = "output"', f'output_dir = "{tmp_path / "output"}"')
    with start_in_thread(SimConfig.from_file(EXAMPLE / "teacher-sim.toml")) as teacher:
        text = text.replace("http://127.0.0.1:8917/v1", teacher.base_url)
        use_config_text(monkeypatch, tmp_path / "distillery.toml", text)
        result = invoke("submit", str(EXAMPLE / "prompts.jsonl"), "--mode", "teacher", "--wait")
    assert result.exit_code == 0, result.output
    (train_file,) = (tmp_path / "output").glob("job-*/train.jsonl")
    return train_file


def test_the_example_teacher_job_writes_the_labelled_examples(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Teacher job → reduce gives exactly the labelled examples, in order: the file the
    README's measurements were trained on is the one this pipeline writes."""
    train_file = sentiment_teacher_file(tmp_path, sqlite_url, monkeypatch)
    written = [json.loads(line) for line in train_file.read_text(encoding="utf-8").splitlines()]
    labelled = (EXAMPLE / "labelled.jsonl").read_text(encoding="utf-8").splitlines()
    assert written == [json.loads(line) for line in labelled]
    assert len(written) == 160


@pytest.mark.slow
def test_the_sentiment_example_student_agrees_more_than_the_base(
    smollm2_loader: Any, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped example, shortened for CI (8 LoRA steps instead of 40, 40 held-out
    sentences instead of 100): trained on what the example's teacher job wrote, the student
    answers with the people's label measurably more often than the untrained base, both
    served by llama.cpp and measured by eval agreement."""
    from producer import local_finetune as local
    from producer.agreement import measure_agreement
    from workers.settings import get_settings, load_settings
    from workers.training.run import train_fine_tune

    require_real_model()
    train_file = sentiment_teacher_file(tmp_path, sqlite_url, monkeypatch)
    config = tmp_path / "distillery.toml"
    engine = make_engine(sqlite_url)
    params = local.hyperparameters(
        epochs=1, batch_size=8, learning_rate=None, max_steps=8, export="q8_0"
    )
    request = local.LocalRequest(train_file, None, None, params)
    row = local.submit_local(request, settings=get_settings(), engine=engine)
    assert row.id is not None
    ended = train_fine_tune(engine, row.id, loader=smollm2_loader)
    assert ended.status.value == "succeeded", ended.error
    agreed = {}
    with llama_server() as base_url, llama_server(model=Path(ended.artifacts["gguf"])) as url:
        tiers = f'[tiers.base]\nbase_url = "{base_url}"\nmodel = "{MODEL_ALIAS}"\n'
        tiers += f'[tiers.student]\nbase_url = "{url}"\nmodel = "{MODEL_ALIAS}"\n'
        tiers += '[teacher]\ntier = "base"\n[router]\nfallback = ["base"]\n'
        config.write_text(tiers)
        settings = load_settings(config)
        for tier in ("base", "student"):
            result = measure_agreement(
                settings, engine, tier_name=tier, reference_file=EXAMPLE / "heldout.jsonl",
                limit=40, max_tokens=4,
            )  # fmt: skip
            assert result["failed_calls"] == 0
            agreed[tier] = result["agreed"]
    print(f"held-out sentences agreeing with the labels, of 40: {agreed}")
    assert agreed["student"] >= agreed["base"] + 10, agreed
    get_settings.cache_clear()
