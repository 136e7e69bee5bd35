"""The kie.ai jobs API: ``createTask`` for ``elevenlabs/text-to-dialogue-v3`` and ``recordInfo``.

kie.ai wraps every answer in an envelope ``{"code", "msg", "data"}`` whose ``code`` is the real
status: an HTTP 200 carrying ``code`` 402 is a refusal (no credit), not a success. Codes are
sorted as the jobs API documents them: 429 and 5xx may pass, 400/401/402/404/422 will not.

kie.ai accepts about 20 new tasks per 10 s per account; ``CREATE_LIMIT`` keeps this process
under it (``SlidingWindowLimiter``), and a 429 that still comes back (another process, another
tool on the same account) is retried after the ``Retry-After`` it carries.
"""

from __future__ import annotations

from typing import Any

import httpx

from receiver.sources.kie.models import KieCallback, parse_callback
from receiver.sources.provider_api import (
    ProviderRefused,
    ProviderUnavailable,
    SlidingWindowLimiter,
    json_or_none,
    network_error,
    retry_after,
)

PROVIDER = "kie.ai"
DIALOGUE_MODEL = "elevenlabs/text-to-dialogue-v3"
CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"
# kie.ai: about 20 new requests per 10 s. One under, so a clock edge never makes the 20th the 21st.
CREATE_LIMIT = 19
CREATE_PERIOD_SECONDS = 10.0
RETRYABLE_CODES = frozenset({408, 409, 429})
_limiters: dict[str, SlidingWindowLimiter] = {}


def create_limiter(base_url: str) -> SlidingWindowLimiter:
    """The process's one limiter for new tasks on this kie.ai host."""
    limiter = _limiters.get(base_url)
    if limiter is None:
        limiter = _limiters.setdefault(
            base_url, SlidingWindowLimiter(CREATE_LIMIT, CREATE_PERIOD_SECONDS)
        )
    return limiter


class KieClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str,
        *,
        limiter: SlidingWindowLimiter | None = None,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._limiter = limiter if limiter is not None else create_limiter(self._base)

    async def create_task(
        self, input: dict[str, Any], callback_url: str | None, model: str = DIALOGUE_MODEL
    ) -> str:
        """Create a task; returns its ``taskId``."""
        body: dict[str, Any] = {"model": model, "input": input}
        if callback_url:
            body["callBackUrl"] = callback_url
        await self._limiter.acquire()
        data = await self._call("POST", CREATE_PATH, json=body)
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ProviderUnavailable(PROVIDER, "no_task_id", "createTask answered without taskId")
        return task_id

    async def record_info(self, task_id: str) -> tuple[KieCallback, dict[str, Any]]:
        """The task's record as kie.ai knows it now: parsed (the callback's model, since a
        callback is this same answer) and the raw envelope."""
        response = await self._request("GET", RECORD_PATH, params={"taskId": task_id})
        document = self._envelope(response)
        return parse_callback(document), document

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        return self._envelope(response).get("data")

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(
                method, self._base + path, headers=self._headers, **kwargs
            )
        except httpx.HTTPError as exc:
            raise network_error(PROVIDER, exc) from exc

    def _envelope(self, response: httpx.Response) -> dict[str, Any]:
        document = json_or_none(response)
        envelope = document if isinstance(document, dict) else {}
        code = envelope.get("code")
        status = code if isinstance(code, int) else response.status_code
        if response.status_code != 200 and status == 200:
            status = response.status_code  # an HTTP error whose body says 200 is still an error
        message = envelope.get("msg") if isinstance(envelope.get("msg"), str) else None
        message = message or response.reason_phrase or "no message"
        if status == 200:
            if not envelope:
                raise ProviderUnavailable(PROVIDER, "bad_answer", "the answer is not JSON")
            return envelope
        wait = retry_after(response)
        if status in RETRYABLE_CODES or status >= 500 or response.status_code >= 500:
            raise ProviderUnavailable(PROVIDER, str(status), message, wait)
        raise ProviderRefused(PROVIDER, str(status), message)
