"""The producer's own errors (a broker that cannot be reached, a user error with its exit
code) and `safe_url`, which every printed URL goes through. The exit codes and the rest of
the error tree are in workers/errors.py."""

from urllib.parse import parse_qsl, urlencode, urlsplit

from workers.errors import DistilleryError, ExitCode, ServiceUnavailable


class BrokerUnavailable(ServiceUnavailable):
    """Redis cannot be reached; nothing was stored."""

    @classmethod
    def at(cls, url: str, reason: object) -> "BrokerUnavailable":
        """The error for the broker at URL, which is shown with its password masked."""
        return cls(
            f"Redis is unreachable at {safe_url(url)}: {reason}\n"
            "start Redis (redis-server), or unset REDIS_URL to run embedded with --wait"
        )


class UserError(DistilleryError):
    """An error the user can fix whose exit code is given where it is raised: a bad option
    is USAGE; an upload the provider rejects is BAD_INPUT or BAD_CONFIG by its HTTP status."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = code


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
