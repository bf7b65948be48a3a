"""The error tree: every failure a user can fix is a DistilleryError, and its class says
which named exit code the CLI ends with (README → exit codes; scripts rely on them).

The CLI prints such an error as one line, never a traceback; the few foreign errors that
mean the same things (a database or Redis that cannot be reached, a schema that is missing)
are mapped onto these classes in one place, `producer/cli/common.py`."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # unexpected: a bug, reported with its traceback
    USAGE = 2  # click's own code for bad options
    BAD_INPUT = 3  # the prompt file (or another input) is invalid; nothing was stored
    BAD_CONFIG = 4  # distillery.toml or the environment is wrong
    SERVICE_DOWN = 5  # Redis or the database cannot be reached
    NOT_FOUND = 6  # no such job


class DistilleryError(Exception):
    """A failure the user can fix; the message says what and how."""

    exit_code: ExitCode = ExitCode.ERROR

    def format_message(self) -> str:
        """What the CLI prints after `error:` (as click's ClickException.format_message)."""
        return str(self)


class BadInput(DistilleryError):
    """A file or value the user gave is invalid; nothing was done with it."""

    exit_code = ExitCode.BAD_INPUT


class BadConfig(DistilleryError):
    """The configuration (distillery.toml, the environment, a router file) is wrong."""

    exit_code = ExitCode.BAD_CONFIG


class ServiceUnavailable(DistilleryError):
    """Redis or the database cannot be reached."""

    exit_code = ExitCode.SERVICE_DOWN


class NotFound(DistilleryError):
    """No such job (or the job is not one the command applies to)."""

    exit_code = ExitCode.NOT_FOUND
