"""`distillery student serve ID`: llama.cpp's OpenAI-compatible server on a local run's
student GGUF (the work is in `producer.student`; this module only parses and runs)."""

import click

from producer.cli.common import engine, handle_errors, out, settings

# Commands import the modules they work with when they run, so that `--help` loads none of
# them (producer/cli/common.py says which are heavy).


@click.group()
def student() -> None:
    """Serve a student trained with `finetune submit --backend local`."""


@student.command("serve")
@click.argument("fine_tune_id", type=int)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), help="default: [training] student_port")
@click.option("--n-ctx", type=click.IntRange(64), default=2048, show_default=True)
@click.option(
    "--adapter",
    is_flag=True,
    help="serve the base GGUF with the LoRA adapter GGUF on top instead of the merged "
    "student (smaller on disk, slower to answer: docs/training.md)",
)
@handle_errors
def serve(fine_tune_id: int, host: str, port: int | None, n_ctx: int, adapter: bool) -> None:
    """Serve FINE_TUNE_ID's student (model name student-ID) with logprobs, until stopped.
    `finetune status ID --add-tier NAME` writes the tier block that points at it."""
    import os
    from pathlib import Path

    from producer.local_finetune import load, student_model_name
    from producer.student import require_server, server_command, server_environment, student_gguf

    row = load(engine(), fine_tune_id)
    if adapter:
        lora: Path | None = student_gguf(row, "adapter_gguf")
        gguf = Path(row.base_model)
    else:
        lora, gguf = None, student_gguf(row)
    require_server()
    port = port or settings().training.student_port
    alias = student_model_name(fine_tune_id)
    command = server_command(gguf, port, alias=alias, n_ctx=n_ctx, host=host, lora=lora)
    out.print(f"serving {gguf} as {alias} at http://{host}:{port}/v1", markup=False)
    out.file.flush()
    # exec: the server becomes this process, so a supervisor's signals reach it directly.
    os.execve(command[0], command, server_environment())
