"""The kie.ai task callback: the ``recordInfo`` response, ``{code, msg, data: {...}}``.

kie.ai's task record carries its request (``param``) and its result (``resultJson``) as JSON
encoded inside strings, which may also be empty, ``null`` or (in the wild) anything else. The
models therefore keep the raw values and expose parsed views as properties that never raise: a
callback we cannot fully interpret is still recorded, with whatever could be read from it.
Unknown fields are kept (``extra="allow"``), as kie.ai adds fields without notice.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

TERMINAL_STATES = frozenset({"success", "fail"})


def _lenient_int(value: Any) -> int | None:
    """Integers, or numeric strings, else None: a wrong type must not sink the whole record."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _lenient_str(value: Any) -> str | None:
    """Strings as they are; numbers as text (``failCode`` is ``"500"`` or 500); else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _json_text(value: Any) -> Any:
    """Keep strings (the documented form) and already-decoded objects; drop anything else."""
    if isinstance(value, str | dict | list):
        return value
    return None


LenientInt = Annotated[int | None, BeforeValidator(_lenient_int)]
LenientStr = Annotated[str | None, BeforeValidator(_lenient_str)]
JsonText = Annotated[str | dict[str, Any] | list[Any] | None, BeforeValidator(_json_text)]


def decode_embedded(value: Any) -> dict[str, Any] | None:
    """The object inside a JSON-in-a-string field, or None if it is empty or not an object."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        decoded = json.loads(value)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


class DialogueTurn(BaseModel):
    """One line of the dialogue request: ``{"text", "voice"}`` (voice: preset name or id)."""

    model_config = ConfigDict(extra="allow")

    text: LenientStr = None
    voice: LenientStr = None


class TaskRecord(BaseModel):
    """``data`` of a callback. Use ``KieCallback.task_id``: the id has more than one home."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    task_id: LenientStr = Field(None, alias="taskId")
    model: LenientStr = None
    state: LenientStr = None
    param: JsonText = None
    result_json: JsonText = Field(None, alias="resultJson")
    fail_code: LenientStr = Field(None, alias="failCode")
    fail_msg: LenientStr = Field(None, alias="failMsg")
    cost_time: LenientInt = Field(None, alias="costTime")
    complete_time: LenientInt = Field(None, alias="completeTime")
    create_time: LenientInt = Field(None, alias="createTime")

    @cached_property
    def params(self) -> dict[str, Any]:
        """The createTask request that ``param`` encodes (empty when absent or unreadable)."""
        return decode_embedded(self.param) or {}

    @cached_property
    def input(self) -> dict[str, Any]:
        """``param.input``; tolerates a ``param`` that holds the input object itself."""
        inner = self.params.get("input")
        if isinstance(inner, dict):
            return inner
        return self.params if "dialogue" in self.params else {}

    @cached_property
    def dialogue(self) -> list[DialogueTurn]:
        turns = self.input.get("dialogue")
        if not isinstance(turns, list):
            return []
        return [DialogueTurn.model_validate(turn) for turn in turns if isinstance(turn, dict)]

    @property
    def stability(self) -> float | None:
        value = self.input.get("stability")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return None

    @property
    def language_code(self) -> str | None:
        value = self.input.get("language_code")
        return value if isinstance(value, str) else None

    @cached_property
    def result(self) -> dict[str, Any]:
        """The decoded ``resultJson`` (empty until the task succeeds, or if unreadable)."""
        return decode_embedded(self.result_json) or {}

    @property
    def result_urls(self) -> list[str]:
        """``resultJson.resultUrls``: the http(s) URLs only, in order, without repeats."""
        urls = self.result.get("resultUrls")
        if not isinstance(urls, list):
            return []
        seen: list[str] = []
        for url in urls:
            is_http = isinstance(url, str) and url.startswith(("https://", "http://"))
            if is_http and url not in seen:
                seen.append(url)
        return seen

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class KieCallback(BaseModel):
    """The whole callback body. ``data`` is always present (empty if the body had none)."""

    model_config = ConfigDict(extra="allow")

    code: LenientInt = None
    msg: LenientStr = None
    data: TaskRecord = Field(default_factory=TaskRecord)

    @property
    def task_id(self) -> str | None:
        """The same lookup as ``task_id_of`` on the raw document."""
        candidates = (
            self.data.task_id,
            (self.model_extra or {}).get("taskId"),
            (self.data.model_extra or {}).get("task_id"),
        )
        for candidate in candidates:
            value = _lenient_str(candidate)
            if value:
                return value
        return None


def task_id_of(document: Any) -> str | None:
    """The task id of a callback body: ``data.taskId``, top-level ``taskId``, ``data.task_id``.

    The reference shows all three homes on different kie.ai pages; the first non-empty wins.
    """
    if not isinstance(document, dict):
        return None
    data = document.get("data")
    data = data if isinstance(data, dict) else {}
    for candidate in (data.get("taskId"), document.get("taskId"), data.get("task_id")):
        value = _lenient_str(candidate)
        if value:
            return value
    return None


def parse_callback(document: Any) -> KieCallback:
    """Build the model from a decoded body; a non-object ``data`` counts as missing."""
    if not isinstance(document, dict):
        raise ValueError("a kie.ai callback body must be a JSON object")
    if not isinstance(document.get("data"), dict):
        document = {k: v for k, v in document.items() if k != "data"}
    return KieCallback.model_validate(document)
