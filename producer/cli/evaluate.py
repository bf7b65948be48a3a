"""`distillery eval agreement`: a tier's answers against a reference job's (the work is in
`producer.agreement`; this module only parses and prints)."""

from pathlib import Path

import click

from producer.cli.common import emit_json, engine, handle_errors, out, settings
from producer.errors import UserError
from workers.errors import ExitCode

# Commands import the modules they work with when they run, so that `--help` loads none of
# them (producer/cli/common.py says which are heavy).


@click.group("eval")
def evaluate() -> None:
    """Measure a tier against a reference job's answers."""


@evaluate.command("agreement")
@click.option("--tier", "tier_name", required=True, help="the tier to ask (e.g. the student)")
@click.option("--reference-job", "job_id", type=int, help="the job whose answers count")
@click.option(
    "--reference",
    "reference_file",
    type=click.Path(path_type=Path),
    help="or a chat JSONL file (e.g. a validation split): its last assistant messages count",
)
@click.option("--limit", type=click.IntRange(1), help="only the job's first N answered prompts")
@click.option("--max-tokens", type=click.IntRange(1), default=16, show_default=True)
@click.option(
    "--judge",
    "judge_name",
    help="a tier asked whether each inexact answer agrees in meaning ([eval] judge_tier)",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (every answer)")
@handle_errors
def agreement(
    tier_name: str,
    job_id: int | None,
    reference_file: Path | None,
    limit: int | None,
    max_tokens: int,
    judge_name: str | None,
    as_json: bool,
) -> None:
    """How often --tier answers the reference's prompts as the reference did: exact match
    after normalisation (case, whitespace and surrounding punctuation ignored), greedy; with a
    judge tier, the answers that do not match exactly count when the judge says YES."""
    from producer.agreement import measure_agreement

    if (job_id is None) == (reference_file is None):
        raise UserError(
            "give one reference: --reference-job JOB or --reference FILE", ExitCode.USAGE
        )
    result = measure_agreement(
        settings(), engine(), tier_name=tier_name, job_id=job_id,
        reference_file=reference_file, limit=limit, max_tokens=max_tokens,
        judge_name=judge_name,
    )  # fmt: skip
    if as_json:
        emit_json(result)
        return
    out.print(
        f"tier {tier_name} ({result['model']}) agrees with "
        f"{f'job {job_id}' if job_id is not None else reference_file} on "
        f"{result['agreed']} of {result['prompts']} prompts ({result['agreement']:.1%}); "
        f"{result['failed_calls']} calls failed",
        markup=False,
    )
    if result["judge"] is not None:
        out.print(
            f"  exact {result['exact']}; judge {result['judge']}: "
            f"{result['judged_agree']} agree, {result['judged_disagree']} disagree, "
            f"{result['judge_unparseable']} unparseable, {result['judge_failed']} failed",
            markup=False,
        )
    for item in result["disagreements"]:
        out.print(
            f"  #{item['idx']}: reference {item['reference'][:60]!r}, "
            f"answer {(item['answer'] or '<failed>')[:60]!r}"
            + (f", judge {item['verdict']}" if "verdict" in item else ""),
            markup=False,
        )
