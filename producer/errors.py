"""Named exit codes, and the translation of known failures into one clear line each.
A user error never prints a stack trace."""

from enum import IntEnum
from urllib.parse import parse_qsl, urlencode, urlsplit


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


# Query parameters that carry a secret (redis-py reads `?password=`, libpq `sslpassword`).
SECRET_QUERY_KEYS = frozenset({"password", "pass", "pwd", "sslpassword", "token", "api_key"})


def safe_url(url: str) -> str:
    """A URL fit to print: the password masked, in the user-info and in the query string.
    Everything else is kept as written (`unix:///path`, `postgresql+psycopg://`)."""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return "<unparsable URL>"
    shown = url  # edited in place: urlunsplit would turn `sqlite:///x` into `sqlite:/x`
    if has_password:
        userinfo, host = parts.netloc.rsplit("@", 1)
        shown = shown.replace(parts.netloc, f"{userinfo.split(':', 1)[0]}:***@{host}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        masked = [(k, "***" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs]
        base, _, rest = shown.partition("?")
        fragment = rest[len(parts.query) :]
        shown = f"{base}?{urlencode(masked, safe='*/:')}{fragment}"
    return shown
