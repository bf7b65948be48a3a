"""The dashboard's login: with gateway keys configured (`DISTILLERY_GATEWAY_KEYS`), a page
asks for one, and a correct key gets a session cookie.

The cookie never holds the key: it is `EXPIRY.MAC`, the MAC an HMAC-SHA256 of the expiry
keyed by the key's SHA-256 digest (what `ApiKeys` keeps). Any process holding the same keys
checks it (`serve --processes N`) with no shared store; removing a key from the variable ends
its sessions at the next restart. The cookie is HttpOnly (no script reads it), SameSite=Strict
(no other site's page sends it) and scoped to the UI's path. The key travels only in the login
form's POST body, never in a URL."""

import hashlib
import hmac
import time

from producer.gateway.keys import ApiKeys

COOKIE = "distillery_ui"
SESSION_S = 12 * 3600


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _mac(digest: bytes, expiry: int) -> str:
    return hmac.new(digest, f"distillery-ui:{expiry}".encode(), hashlib.sha256).hexdigest()


def session_for(keys: ApiKeys, key: str, *, now: float | None = None) -> str | None:
    """A session cookie's value for a listed key; None for any other."""
    digest = key_digest(key.strip())
    matched = False
    for known in keys.digests:  # every digest, always: no early exit to time
        matched |= hmac.compare_digest(digest, known)
    if not key.strip() or not matched:
        return None
    expiry = int(now if now is not None else time.time()) + SESSION_S
    return f"{expiry}.{_mac(digest, expiry)}"


def valid_session(keys: ApiKeys, cookie: str | None, *, now: float | None = None) -> bool:
    """Whether `cookie` was made by `session_for` with one of `keys` and has not expired."""
    expiry_text, _, mac = (cookie or "").partition(".")
    if not expiry_text.isdigit() or not mac:
        return False
    expiry = int(expiry_text)
    if expiry < (now if now is not None else time.time()):
        return False
    matched = False
    for digest in keys.digests:
        matched |= hmac.compare_digest(_mac(digest, expiry), mac)
    return matched
