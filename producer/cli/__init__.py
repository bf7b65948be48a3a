"""The `distillery` command (DESIGN.md → CLI contract; scripts rely on its options, its
`--json` output and its exit codes): the group, with one module per group of commands and
their shared helpers in `common`."""

import click

from producer.cli import cost, dashboard, db, evaluate, finetune, jobs, ops, router, student


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="distillery")
def main() -> None:
    """Distil a frontier LLM into cheaper models, and route requests to the cheapest tier."""


GROUPS = [router.router, cost.cost, finetune.finetune, student.student, evaluate.evaluate, db.db]
for command in [*jobs.COMMANDS, *ops.COMMANDS, *dashboard.COMMANDS, *GROUPS]:
    main.add_command(command)
