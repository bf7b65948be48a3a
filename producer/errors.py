"""Named exit codes, and the translation of known failures into one clear line each.
A user error never prints a stack trace."""

from enum import IntEnum

from sqlalchemy.engine import make_url


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # unexpected: a bug, reported with its traceback
    USAGE = 2  # click's own code for bad options
    BAD_INPUT = 3  # the prompt file (or another input) is invalid; nothing was stored
    BAD_CONFIG = 4  # distillery.toml or the environment is wrong
    SERVICE_DOWN = 5  # Redis or the database cannot be reached
    NOT_FOUND = 6  # no such job


class BrokerUnavailable(Exception):
    """Redis cannot be reached; nothing was stored."""


class UserError(Exception):
    """An error the user can fix, with its exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def safe_url(url: str) -> str:
    """A URL fit to print: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"
