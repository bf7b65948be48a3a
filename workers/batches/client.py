"""The provider's Files and Batch endpoints, through the official `openai` SDK (the wire
format of these endpoints is larger than chat's, and they are called a few times per batch,
not per prompt, so the SDK's cost does not matter here: workers/http_client.py says why the
chat path speaks HTTP itself).

The SDK's own retries are off: a failed poll is retried by the next poll (with backoff), a
failed upload or create by the task's retry, so the two never multiply."""

from dataclasses import dataclass, field
from typing import Any, Final

import openai

from workers.settings import TierConfig

CHAT_ENDPOINT: Final = "/v1/chat/completions"
COMPLETION_WINDOW: Final = "24h"  # the only window OpenAI offers
METADATA_KEY = "distillery_batch"  # our batches row id, to find a batch we lost track of
MIN_FILE_TIMEOUT_S = 300.0  # a 200 MB upload or download takes longer than a chat call
LIST_PAGES = 5  # how far back `find` looks (100 batches a page)


class BatchProviderError(Exception):
    """The provider could not be reached or had a transient failure (connection, 429, 5xx):
    try again later."""


class BatchRejected(Exception):
    """The provider refused the request (4xx): trying the same again will not help."""


@dataclass(frozen=True, slots=True)
class ProviderBatch:
    id: str | None
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, batch: Any) -> "ProviderBatch":
        counts = batch.request_counts
        errors = batch.errors.data if batch.errors and batch.errors.data else []
        return cls(
            id=batch.id,
            status=batch.status,
            input_file_id=batch.input_file_id,
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            completed=counts.completed if counts else 0,
            failed=counts.failed if counts else 0,
            errors=[error.model_dump() for error in errors],
        )


class BatchClient:
    def __init__(self, tier: TierConfig) -> None:
        self._client = openai.OpenAI(
            base_url=str(tier.base_url).rstrip("/"),
            api_key=tier.api_key(),
            max_retries=0,
            timeout=max(tier.timeout_s, MIN_FILE_TIMEOUT_S),
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "BatchClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def upload(self, name: str, content: bytes) -> str:
        return _guarded(lambda: self._client.files.create(file=(name, content), purpose="batch")).id

    def create(self, input_file_id: str, batch_row_id: int, job_id: int) -> ProviderBatch:
        metadata = {METADATA_KEY: str(batch_row_id), "distillery_job": str(job_id)}
        created = _guarded(
            lambda: self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=CHAT_ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata=metadata,
            )
        )
        return ProviderBatch.of(created)

    def retrieve(self, batch_id: str) -> ProviderBatch:
        return ProviderBatch.of(_guarded(lambda: self._client.batches.retrieve(batch_id)))

    def cancel(self, batch_id: str) -> ProviderBatch:
        return ProviderBatch.of(_guarded(lambda: self._client.batches.cancel(batch_id)))

    def content(self, file_id: str | None) -> bytes:
        if file_id is None:
            return b""
        return _guarded(lambda: self._client.files.content(file_id)).content

    def find(self, batch_row_id: int) -> ProviderBatch | None:
        """The provider's batch made for our row, if one was created before we could record
        its id (a worker died between the create and the commit)."""
        after: str | None = None
        for _ in range(LIST_PAGES):
            page = self._page(after)
            for batch in page.data:
                if (batch.metadata or {}).get(METADATA_KEY) == str(batch_row_id):
                    return ProviderBatch.of(batch)
            if not page.has_more or not page.data:
                return None
            after = page.data[-1].id
        return None

    def _page(self, after: str | None) -> Any:
        kwargs: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        return _guarded(lambda: self._client.batches.list(**kwargs))


def _guarded(call: Any) -> Any:
    try:
        return call()
    except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
        raise BatchProviderError(_describe(exc)) from None
    except openai.APIStatusError as exc:
        if exc.status_code >= 500 or exc.status_code in (408, 409):
            raise BatchProviderError(_describe(exc)) from None
        raise BatchRejected(_describe(exc)) from None


def _describe(exc: openai.OpenAIError) -> str:
    status = getattr(exc, "status_code", None)
    prefix = f"HTTP {status}: " if status else ""
    return f"{prefix}{exc}"[:500]
