"""The Label Studio client's retries and error messages (annotations/review/client.py).

A real server cannot be made to answer 5xx on demand, so these faults are played by an httpx
MockTransport; connection loss, a wrong token and a killed server are tested against the real server
in tests/integration/test_review_labelstudio.py.
"""

from __future__ import annotations

import httpx
import pytest

from annotations.review.client import (
    ENV_TOKEN,
    ENV_URL,
    LabelStudioClient,
    RetryPolicy,
    ReviewAuthError,
    ReviewConfigError,
    ReviewRequestError,
    ReviewUnavailable,
    connect,
)

TOKEN = "0123456789abcdef0123456789abcdef01234567"
FAST = RetryPolicy(attempts=4, initial_delay_s=0.001, max_delay_s=0.002)


def _client(handler, retry: RetryPolicy = FAST) -> LabelStudioClient:
    return LabelStudioClient("http://ls.test", TOKEN, retry=retry, transport=httpx.MockTransport(handler))


def test_5xx_is_retried_with_backoff_then_succeeds_through_the_sdk() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        assert request.headers["Authorization"] == f"Token {TOKEN}"
        return httpx.Response(503 if len(calls) < 3 else 200, json={"id": 4, "title": "faces"})

    project = _client(handler).project(4)
    assert (project["id"], project["title"]) == (4, "faces")
    assert len(calls) == 3  # our policy's retries only: the SDK's own are off
    assert calls[0].headers["User-Agent"].startswith("label_studio_sdk/")  # the request was the SDK's


def test_a_failed_page_is_retried_alone_and_the_listing_ends_at_the_404_after_the_last() -> None:
    pages: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        page = request.url.params["page"]
        pages.append(page)
        if page == "2" and pages.count("2") == 1:
            return httpx.Response(502)
        if page == "3":
            return httpx.Response(404, json={"detail": "Invalid page."})
        tasks = [{"id": 10 * int(page) + i, "data": {"sample_id": f"s{page}{i}"}} for i in range(2)]
        return httpx.Response(200, json={"tasks": tasks, "total": 99, "total_annotations": 0, "total_predictions": 0})

    tasks = list(_client(handler).iter_tasks(1, page_size=2))
    assert [t["id"] for t in tasks] == [10, 11, 20, 21]
    assert pages == ["1", "2", "2", "3"]


def test_budget_spent_raises_unavailable_naming_the_server() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ReviewUnavailable) as err:
        _client(handler).projects()
    assert len(calls) == FAST.attempts and "http://ls.test" in str(err.value) and not err.value.ambiguous


def test_an_import_is_never_resent_after_it_may_have_arrived() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")  # never sent: safe to retry
        if len(calls) == 2:
            raise httpx.ReadTimeout("no answer")  # sent: the server may have imported it
        return httpx.Response(201, json={"task_ids": [1]})

    with pytest.raises(ReviewUnavailable) as err:
        _client(handler).import_tasks(1, [{"data": {}}])
    assert err.value.ambiguous and len(calls) == 2

    answers = iter([httpx.Response(502), httpx.Response(201, json={"task_ids": [7]})])
    with pytest.raises(ReviewUnavailable):
        _client(lambda r: next(answers)).import_tasks(1, [{"data": {}}])
    answers = iter([httpx.Response(503), httpx.Response(201, json={"task_ids": [7]})])  # 503: refused, not applied
    assert _client(lambda r: next(answers)).import_tasks(1, [{"data": {}}]) == [7]


def test_auth_errors_say_which_setting_and_never_show_the_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"detail": f"Invalid token {TOKEN}."})  # even if a server echoed it

    with pytest.raises(ReviewAuthError) as err:
        _client(handler).whoami()
    text = str(err.value)
    assert ENV_TOKEN in text and "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN" in text
    assert TOKEN not in text and TOKEN not in repr(_client(handler))


def test_client_errors_carry_the_server_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"detail": "title too short"})

    with pytest.raises(ReviewRequestError, match="title too short") as err:
        _client(handler).create_project("ab", "<View/>")
    assert err.value.status_code == 400


def test_missing_configuration_names_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    with pytest.raises(ReviewConfigError, match=ENV_URL):
        connect()
    monkeypatch.setenv(ENV_URL, "http://ls.test")
    with pytest.raises(ReviewConfigError, match=ENV_TOKEN):
        connect()


def test_personal_access_token_is_exchanged_for_a_bearer_access_token() -> None:
    # header.payload.signature with payload {"token_type": "refresh", "exp": 9999999999}
    pat = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCIsImV4cCI6OTk5OTk5OTk5OX0.c2ln"
    access = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoiYWNjZXNzIiwiZXhwIjo5OTk5OTk5OTk5fQ.c2ln"
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/token/refresh/":
            return httpx.Response(200, json={"access": access})
        seen.append(request.headers["Authorization"])
        return httpx.Response(200, json={"id": 1})

    client = LabelStudioClient("http://ls.test", pat, retry=FAST, transport=httpx.MockTransport(handler))
    client.whoami()
    client.whoami()
    assert seen == [f"Bearer {access}"] * 2
