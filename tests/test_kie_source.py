"""kie.ai callbacks: HMAC over ``<taskId>.<timestamp>``, the URL token, and the envelope.

Unit tests drive ``KieSource`` directly for every refusal code; the ingest tests post to the real
app under uvicorn, on SQLite and Postgres, and check what the delivery row records.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from receiver.body import ReceivedBody
from receiver.errors import AuthError
from receiver.registry import Registry
from receiver.settings import Settings
from receiver.sources.kie import EVENT_TYPE, KieSource, sign_headers, task_id_of
from receiver.sources.kie.models import parse_callback
from receiver.store.models import Delivery
from tests.conftest import FIXTURES, make_settings

KEY = "kie_hmac_key_for_tests"
OLD_KEY = "kie_hmac_key_retired"
TOKEN = "kie-url-token-for-tests-0123456789"
SUCCESS_ID = "5f1c0a9e3b7d4c2a8e6f1b0d9c8a7e01"
FAIL_ID = "9d2e4b6a8c0f1e3d5b7a9c1e3f5d7b02"
VARIANT_ID = "c3a1e5f7b9d1c3e5a7f9b1d3e5c7a903"
deliveries = Delivery.__table__


def fixture_doc(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "kie" / f"{name}.json").read_text(encoding="utf-8"))


def fixture_body(name: str) -> bytes:
    return (FIXTURES / "kie" / f"{name}.json").read_bytes()


def received(body: bytes) -> ReceivedBody:
    return ReceivedBody(len(body), hashlib.sha256(body).hexdigest(), data=body)


def kie_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    # The tests' audio server is on loopback, which the guarded fetch refuses by default.
    values: dict[str, object] = {
        "kie_hmac_keys": [KEY],
        "kie_url_token": None,
        "fetch_allow_private": True,
    }
    values.update(overrides)
    return make_settings(database_url, data_dir, **values)


def post_kie(
    url: str,
    body: bytes,
    *,
    key: str | None = None,
    task_id: str | None = None,
    timestamp: int | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST ``body`` to ``/webhooks/kie``, signed with ``key`` and/or with ``?token=``."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent |= sign_headers(key, task_id or task_id_of(json.loads(body)) or "", timestamp)
    params = {"token": token} if token is not None else None
    return httpx.post(f"{url}/webhooks/kie", content=body, headers=sent, params=params, timeout=30)


# -- KieSource, unit -------------------------------------------------------------------------


def source(keys: tuple[str, ...] = (KEY,), token: str | None = None, **kw: object) -> KieSource:
    return KieSource(Settings(kie_hmac_keys=list(keys), kie_url_token=token, **kw))  # type: ignore[arg-type]


def check(
    src: KieSource,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    body: bytes | None = None,
):  # type: ignore[no-untyped-def]
    body = fixture_body("success") if body is None else body
    verifier = src.begin(httpx.Headers(headers or {}), query or {})
    verifier.update(body)
    return verifier.verify(received(body))


def refusal(src: KieSource, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(AuthError) as info:
        check(src, *args, **kwargs)
    assert info.value.status == 401
    return info.value.code


def test_signature_is_base64_hmac_sha256_of_task_id_dot_timestamp() -> None:
    ts = int(time.time())
    expected = base64.b64encode(
        hmac.new(KEY.encode(), f"{SUCCESS_ID}.{ts}".encode(), hashlib.sha256).digest()
    ).decode()
    headers = sign_headers(KEY, SUCCESS_ID, ts)
    assert headers == {"X-Webhook-Timestamp": str(ts), "X-Webhook-Signature": expected}
    auth = check(source(), headers)
    assert (auth.method, auth.key_index) == ("hmac", 0)


def test_rotation_accepts_each_configured_key_and_records_which() -> None:
    src = source((KEY, OLD_KEY))
    assert check(src, sign_headers(KEY, SUCCESS_ID)).key_index == 0
    assert check(src, sign_headers(OLD_KEY, SUCCESS_ID)).key_index == 1
    assert refusal(source((KEY,)), sign_headers(OLD_KEY, SUCCESS_ID)) == "signature_mismatch"


def test_hmac_refusals_have_distinct_codes() -> None:
    src = source()
    now = int(time.time())
    assert refusal(src, sign_headers("wrong", SUCCESS_ID)) == "signature_mismatch"
    # a signature for another task does not vouch for this body
    assert refusal(src, sign_headers(KEY, FAIL_ID)) == "signature_mismatch"
    assert refusal(src, sign_headers(KEY, SUCCESS_ID, now - 1801)) == "timestamp_expired"
    assert check(src, sign_headers(KEY, SUCCESS_ID, now - 1700)).method == "hmac"
    assert refusal(src, sign_headers(KEY, SUCCESS_ID, now + 301)) == "timestamp_in_future"
    assert check(src, sign_headers(KEY, SUCCESS_ID, now + 200)).method == "hmac"
    good = sign_headers(KEY, SUCCESS_ID, now)
    bad_ts = {**good, "X-Webhook-Timestamp": "soon"}
    assert refusal(src, bad_ts) == "invalid_timestamp"
    for garbage in ("not base64!", base64.b64encode(b"short").decode(), ""):
        malformed = {**good, "X-Webhook-Signature": garbage}
        assert refusal(src, malformed) == "malformed_signature"
    assert refusal(src, {"X-Webhook-Timestamp": str(now)}) == "missing_signature"
    only_sig = {"X-Webhook-Signature": good["X-Webhook-Signature"]}
    assert refusal(src, only_sig) == "missing_signature"
    assert refusal(src, {}) == "missing_signature"


def test_tolerance_follows_the_setting() -> None:
    src = source(kie_tolerance_seconds=60)
    assert refusal(src, sign_headers(KEY, SUCCESS_ID, int(time.time()) - 90)) == (
        "timestamp_expired"
    )


def test_hmac_needs_a_task_id_in_the_body() -> None:
    body = json.dumps({"code": 200, "data": {"state": "success"}}).encode()
    assert refusal(source(), sign_headers(KEY, ""), body=body) == "missing_task_id"
    assert refusal(source(), sign_headers(KEY, "x"), body=b"{not json") == "missing_task_id"


def test_signature_uses_the_task_id_wherever_it_is() -> None:
    variant = fixture_body("task_id_variant")
    assert check(source(), sign_headers(KEY, VARIANT_ID), body=variant).method == "hmac"
    top = json.dumps({"taskId": "top-level-id", "data": {"state": "waiting"}}).encode()
    assert check(source(), sign_headers(KEY, "top-level-id"), body=top).method == "hmac"


def test_url_token_accepted_and_refused() -> None:
    src = source((), token=TOKEN)
    auth = check(src, {}, {"token": TOKEN})
    assert (auth.method, auth.key_index) == ("url_token", None)
    assert refusal(src, {}, {"token": TOKEN + "x"}) == "invalid_token"
    assert refusal(src, {}, {"token": TOKEN[:-1]}) == "invalid_token"
    assert refusal(src, {}, {}) == "missing_token"
    assert refusal(src, {}, {"token": ""}) == "missing_token"


def test_keys_without_signature_headers_fall_back_to_the_token_only_if_one_is_set() -> None:
    both = source((KEY,), token=TOKEN)
    assert check(both, {}, {"token": TOKEN}).method == "url_token"
    assert refusal(both, {}, {"token": "nope"}) == "invalid_token"
    assert refusal(source((KEY,)), {}, {"token": TOKEN}) == "missing_signature"


def test_signature_headers_take_precedence_over_the_token() -> None:
    both = source((KEY,), token=TOKEN)
    assert check(both, sign_headers(KEY, SUCCESS_ID), {"token": "ignored"}).method == "hmac"
    # a bad signature is not rescued by a good token: whoever signs must sign right
    bad = sign_headers("wrong", SUCCESS_ID)
    assert refusal(both, bad, {"token": TOKEN}) == "signature_mismatch"


def test_nothing_configured_refuses_everything() -> None:
    src = source(())
    assert not src.configured()
    assert "VOICEHOOKS_KIE_HMAC_KEYS" in src.unconfigured_hint()
    assert refusal(src, sign_headers(KEY, SUCCESS_ID)) == "not_configured"
    assert refusal(src, {}, {"token": TOKEN}) == "not_configured"
    assert source((), token="").configured() is False


def test_refusal_details_never_contain_a_secret() -> None:
    src = source((KEY,), token=TOKEN)
    details = []
    for headers, query in [
        (sign_headers("wrong", SUCCESS_ID), {}),
        ({}, {"token": "wrong"}),
        ({"X-Webhook-Timestamp": "1"}, {}),
    ]:
        with pytest.raises(AuthError) as info:
            check(src, headers, query)
        details.append(info.value.detail)
    expected_sig = sign_headers(KEY, SUCCESS_ID)["X-Webhook-Signature"]
    for detail in details:
        assert KEY not in detail and TOKEN not in detail and expected_sig not in detail


# -- envelope ----------------------------------------------------------------------------------


def test_task_id_of_looks_in_all_three_places_in_order() -> None:
    assert task_id_of(fixture_doc("success")) == SUCCESS_ID
    assert task_id_of(fixture_doc("task_id_variant")) == VARIANT_ID
    assert task_id_of({"taskId": "top", "data": {"task_id": "inner"}}) == "top"
    assert task_id_of({"taskId": "top", "data": {"taskId": "data"}}) == "data"
    assert task_id_of({"data": {"taskId": "", "task_id": "snake"}}) == "snake"
    assert task_id_of({"data": None}) is None
    assert task_id_of(["not", "a", "dict"]) is None


def test_identify_keys_on_task_state_and_body_hash() -> None:
    src = source()
    for name, task_id, state in [
        ("success", SUCCESS_ID, "success"),
        ("waiting", SUCCESS_ID, "waiting"),
        ("fail", FAIL_ID, "fail"),
        ("task_id_variant", VARIANT_ID, "success"),
    ]:
        body = fixture_body(name)
        identity = src.identify(received(body))
        assert identity.event_type == EVENT_TYPE
        assert identity.subject_id == task_id
        assert identity.parse_error is None
        assert identity.dedupe_key == f"{task_id}:{state}:{hashlib.sha256(body).hexdigest()}"


def test_identify_marks_unusable_bodies_without_raising() -> None:
    src = source()
    broken = src.identify(received(b"{not json"))
    assert broken.event_type is None and "not valid JSON" in (broken.parse_error or "")
    no_id = src.identify(received(b'{"code": 200, "data": {"state": "waiting"}}'))
    assert no_id.event_type is None and "taskId" in (no_id.parse_error or "")
    assert src.identify(received(b"[1, 2]")).parse_error == "body is JSON but not an object"
    long_id = json.dumps({"data": {"taskId": "x" * 500}}).encode()
    assert src.identify(received(long_id)).parse_error is not None


def test_identify_reads_a_spooled_body_from_disk(tmp_path: Path) -> None:
    body = fixture_body("task_id_variant")
    spooled = tmp_path / "body.json"
    spooled.write_bytes(body)
    identity = source().identify(
        ReceivedBody(len(body), hashlib.sha256(body).hexdigest(), path=spooled)
    )
    assert identity.subject_id == VARIANT_ID and identity.event_type == EVENT_TYPE


def test_models_parse_every_fixture() -> None:
    success = parse_callback(fixture_doc("success"))
    record = success.data
    assert (success.code, success.msg, success.task_id) == (200, "success", SUCCESS_ID)
    assert record.model == "elevenlabs/text-to-dialogue-v3" and record.terminal
    assert [(t.voice, t.text[:7]) for t in record.dialogue] == [  # type: ignore[index]
        ("Rachel", "Welcome"),
        ("Adam", "Thanks,"),
        ("Rachel", "Sure, b"),
        ("Adam", "Then yo"),
    ]
    assert (record.stability, record.language_code) == (0.5, "en")
    assert record.result_urls == [f"https://tempfile.example.com/kie/{SUCCESS_ID}.mp3"]
    assert (record.cost_time, record.complete_time, record.create_time) == (
        8423,
        1760000512345,
        1760000503922,
    )
    assert record.params["callBackUrl"] == "https://voicehooks.example.com/webhooks/kie"

    fail = parse_callback(fixture_doc("fail"))
    assert (fail.code, fail.data.state, fail.data.fail_code) == (501, "fail", "500")
    assert fail.data.fail_msg and "audio generation failed" in fail.data.fail_msg
    assert fail.data.result_json is None and fail.data.result_urls == []
    assert len(fail.data.dialogue) == 3

    waiting = parse_callback(fixture_doc("waiting"))
    assert waiting.data.result_json == "" and waiting.data.result == {}
    assert not waiting.data.terminal and waiting.data.cost_time is None

    variant = parse_callback(fixture_doc("task_id_variant"))
    assert variant.task_id == VARIANT_ID
    assert variant.data.dialogue[2].voice == "21m00Tcm4TlvDq8ikWAM"


@pytest.mark.parametrize(
    "param, result_json",
    [
        ("", ""),
        (None, None),
        ("{not json", "[1, 2"),
        ('"a string"', '"also a string"'),
        ("[1, 2, 3]", '{"resultUrls": "not a list"}'),
        ('{"input": {"dialogue": "nope", "stability": "high"}}', '{"resultUrls": [1, null]}'),
        (42, {"unexpected": "object"}),
    ],
)
def test_embedded_json_garbage_is_tolerated(param: object, result_json: object) -> None:
    document = fixture_doc("success")
    document["data"] |= {"param": param, "resultJson": result_json}
    record = parse_callback(document).data
    assert record.dialogue == [] and record.result_urls == []
    assert record.stability is None and record.language_code is None


def test_unknown_fields_are_kept_and_odd_types_do_not_sink_the_record() -> None:
    document = fixture_doc("success")
    document["futureEnvelopeField"] = {"a": 1}
    document["data"] |= {"progress": 1.0, "costTime": "8423", "createTime": "yesterday"}
    document["data"]["failCode"] = 500
    callback = parse_callback(document)
    assert callback.model_extra == {"futureEnvelopeField": {"a": 1}}
    assert callback.data.model_extra == {"progress": 1.0}
    assert callback.data.cost_time == 8423 and callback.data.create_time is None
    assert callback.data.fail_code == "500"
    no_data = parse_callback({"code": 200, "msg": "success", "data": "oops", "taskId": "t"})
    assert no_data.task_id == "t" and no_data.data.state is None


def test_param_holding_only_the_input_is_understood() -> None:
    document = fixture_doc("success")
    document["data"]["param"] = json.dumps(
        {"dialogue": [{"text": "Hi", "voice": "Adam"}], "stability": 1, "language_code": "de"}
    )
    record = parse_callback(document).data
    assert [(t.text, t.voice) for t in record.dialogue] == [("Hi", "Adam")]
    assert (record.stability, record.language_code) == (1.0, "de")


# -- through the real ingest path --------------------------------------------------------------


def stored(services) -> list[Any]:  # type: ignore[no-untyped-def]
    with services.engine.connect() as conn:
        return conn.execute(select(deliveries).order_by(deliveries.c.id)).all()


def count(services) -> int:  # type: ignore[no-untyped-def]
    with services.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(deliveries)).scalar_one()


def test_hmac_through_ingest(database_url, tmp_path, services_factory, live_server) -> None:  # type: ignore[no-untyped-def]
    settings = kie_settings(database_url, tmp_path / "data", kie_hmac_keys=[KEY, OLD_KEY])
    services = services_factory(settings, Registry())
    server = live_server(services, run_worker=False)
    success, waiting = fixture_body("success"), fixture_body("waiting")
    now = int(time.time())

    refusals = [
        post_kie(server.url, success, key="wrong"),
        post_kie(server.url, success, key=KEY, timestamp=now - 3600),
        post_kie(server.url, success, key=KEY, timestamp=now + 3600),
        post_kie(server.url, success, key=KEY, task_id=FAIL_ID),
        post_kie(server.url, success),
    ]
    assert [(r.status_code, r.json()["error"]) for r in refusals] == [
        (401, "signature_mismatch"),
        (401, "timestamp_expired"),
        (401, "timestamp_in_future"),
        (401, "signature_mismatch"),
        (401, "missing_signature"),
    ]
    assert count(services) == 0  # nothing unauthentic costs storage

    first = post_kie(server.url, success, key=KEY)
    rotated = post_kie(server.url, waiting, key=OLD_KEY)
    assert first.status_code == 200 and rotated.status_code == 200
    assert first.json()["duplicate"] is False
    rows = stored(services)
    assert [(r.auth_method, r.auth_key_index) for r in rows] == [("hmac", 0), ("hmac", 1)]
    assert [r.id for r in rows] == [first.json()["delivery_id"], rotated.json()["delivery_id"]]
    assert all(r.source == "kie" and r.event_type == EVENT_TYPE for r in rows)
    assert [r.subject_id for r in rows] == [SUCCESS_ID, SUCCESS_ID]
    assert rows[0].dedupe_key.startswith(f"{SUCCESS_ID}:success:")
    assert rows[0].body == success


def test_url_token_through_ingest(database_url, tmp_path, services_factory, live_server) -> None:  # type: ignore[no-untyped-def]
    settings = kie_settings(database_url, tmp_path / "data", kie_hmac_keys=[], kie_url_token=TOKEN)
    services = services_factory(settings, Registry())
    server = live_server(services, run_worker=False)
    body = fixture_body("fail")

    bad = post_kie(server.url, body, token="guess")
    missing = post_kie(server.url, body)
    assert (bad.status_code, bad.json()["error"]) == (401, "invalid_token")
    assert (missing.status_code, missing.json()["error"]) == (401, "missing_token")
    assert TOKEN not in bad.text
    assert count(services) == 0

    good = post_kie(server.url, body, token=TOKEN)
    assert good.status_code == 200
    (row,) = stored(services)
    assert (row.auth_method, row.auth_key_index) == ("url_token", None)
    assert row.subject_id == FAIL_ID and row.parse_error is None

    # An authentic body we cannot read is still kept and acknowledged.
    garbage = post_kie(server.url, b"{this is not json", token=TOKEN)
    assert garbage.status_code == 200
    kept = stored(services)[-1]
    assert kept.body == b"{this is not json" and "not valid JSON" in kept.parse_error
    assert kept.event_type is None and kept.auth_method == "url_token"


def test_token_fallback_and_not_configured_through_ingest(  # type: ignore[no-untyped-def]
    database_url, tmp_path, services_factory, live_server
) -> None:
    both = services_factory(
        kie_settings(database_url, tmp_path / "both", kie_url_token=TOKEN), Registry()
    )
    server = live_server(both, run_worker=False)
    body = fixture_body("task_id_variant")
    assert post_kie(server.url, body, token=TOKEN).status_code == 200
    assert post_kie(server.url, fixture_body("waiting"), key=KEY, token="wrong").status_code == 200
    assert [(r.auth_method, r.subject_id) for r in stored(both)] == [
        ("url_token", VARIANT_ID),
        ("hmac", SUCCESS_ID),
    ]

    bare = services_factory(
        kie_settings(database_url, tmp_path / "bare", kie_hmac_keys=[]), Registry()
    )
    assert any("kie.ai" in hint for hint in bare.warn_unconfigured())
    server = live_server(bare, run_worker=False)
    before = count(bare)  # the same database as above
    for response in (
        post_kie(server.url, body, key=KEY),
        post_kie(server.url, body, token=TOKEN),
        post_kie(server.url, body),
    ):
        assert (response.status_code, response.json()["error"]) == (401, "not_configured")
    assert count(bare) == before
