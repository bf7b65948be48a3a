"""The gateway's own API keys (`DISTILLERY_GATEWAY_KEYS`, or the variable `[gateway]
api_keys_env` names): a request presents one as `Authorization: Bearer KEY`.

Only the keys' SHA-256 digests are kept in memory, and a presented key is hashed and
compared with every digest by `hmac.compare_digest`: the time taken depends neither on
how much of a key matched nor on which key it was. A key is never logged, stored or sent
back; a request's prompt row keeps the first 12 hex digits of its key's digest
(`metadata.key_sha256`), enough to tell keys apart in a report, not to recover one."""

import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from producer.gateway.wire import ApiError
from workers.settings import Settings

KEY_ID = web.RequestKey("key_sha256", str)
KEY_ID_CHARS = 12


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class ApiKeys:
    digests: tuple[bytes, ...]

    @classmethod
    def from_env(cls, settings: Settings) -> "ApiKeys":
        return cls(tuple(_digest(key) for key in settings.gateway.api_keys()))

    def __bool__(self) -> bool:
        return bool(self.digests)

    def check(self, authorization: str | None) -> str:
        """The presented key's short id, or 401 in OpenAI's shape."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _refused("You didn't provide an API key: send Authorization: Bearer KEY")
        presented = _digest(key.strip())
        matched = False
        for digest in self.digests:  # every digest, always: no early exit to time
            matched |= hmac.compare_digest(presented, digest)
        if not matched:
            raise _refused("Incorrect API key provided")
        return presented.hex()[:KEY_ID_CHARS]


def _refused(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
