"""`distillery eval agreement`: a tier's answers against a reference job's (the work is in
`producer.agreement`; this module only parses and prints)."""

import click

from producer.cli.common import emit_json, engine, handle_errors, out, settings

# Commands import the modules they work with when they run, so that `--help` loads none of
# them (producer/cli/common.py says which are heavy).


@click.group("eval")
def evaluate() -> None:
    """Measure a tier against a reference job's answers."""


@evaluate.command("agreement")
@click.option("--tier", "tier_name", required=True, help="the tier to ask (e.g. the student)")
@click.option(
    "--reference-job", "job_id", type=int, required=True, help="the job whose answers count"
)
@click.option("--limit", type=click.IntRange(1), help="only the job's first N answered prompts")
@click.option("--max-tokens", type=click.IntRange(1), default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (every answer)")
@handle_errors
def agreement(
    tier_name: str, job_id: int, limit: int | None, max_tokens: int, as_json: bool
) -> None:
    """How often --tier answers the reference job's prompts as that job did: exact match
    after normalisation (case, whitespace and surrounding punctuation ignored), greedy."""
    from producer.agreement import measure_agreement

    result = measure_agreement(
        settings(), engine(), tier_name=tier_name, job_id=job_id, limit=limit,
        max_tokens=max_tokens,
    )  # fmt: skip
    if as_json:
        emit_json(result)
        return
    out.print(
        f"tier {tier_name} ({result['model']}) agrees with job {job_id} on "
        f"{result['agreed']} of {result['prompts']} prompts ({result['agreement']:.1%}); "
        f"{result['failed_calls']} calls failed",
        markup=False,
    )
    for item in result["disagreements"]:
        out.print(
            f"  #{item['idx']}: reference {item['reference'][:60]!r}, "
            f"answer {(item['answer'] or '<failed>')[:60]!r}",
            markup=False,
        )
