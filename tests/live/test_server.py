"""The live server in-process (starlette's TestClient): the token, Host and Origin checks, and bad requests
getting a clear 4xx JSON error that changes nothing."""

import json

import pytest
from starlette.testclient import TestClient
from test_control import make

from tokentrim_cli.live.guard import Guard
from tokentrim_cli.live.server import MAX_BODY, build_app
from tokentrim_cli.live.session import LiveSession

PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"


@pytest.fixture
def served():
    """(client, session, token) for a run at block 3 of 22, served on 127.0.0.1:8765."""
    control = make()
    control.boundary(3)
    session = LiveSession(control, "clip", (64, 64, 16))
    app = Guard(build_app(session), "127.0.0.1", PORT, session.token)
    with TestClient(app, base_url=BASE) as client:
        yield client, session, session.token


def post(client, path, body, token, **headers):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, content=data, headers={"Content-Type": "application/json", "X-Tokentrim-Token": token,
                                                     **headers})


def test_the_page_is_served_and_a_prompt_with_the_token_becomes_a_switch(served):
    client, session, token = served
    page = client.get("/")
    assert page.status_code == 200 and "<video" in page.text and "live.js" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert client.get("/live.js").status_code == 200 and client.get("/live.css").status_code == 200
    got = post(client, "/api/prompt", {"prompt": "a blue square", "mode": "keep blend=2"}, token,
               Origin=BASE)
    assert got.status_code == 202 and got.json() == {"entry": 1, "block": 4, "start": 0.75, "mode": "keep",
                                                     "blend": 2}
    state = client.get(f"/api/state?token={token}").json()
    assert state["timeline"][1] == {"start": 0.75, "prompt": "a blue square", "switch": "keep", "blend": 2}
    exported = client.get("/api/timeline", headers={"X-Tokentrim-Token": token})
    assert exported.json() == state["timeline"] and "clip.timeline.json" in exported.headers["content-disposition"]
    assert post(client, "/api/extend", {"seconds": 2}, token).json()["seconds"] == 6.0
    assert post(client, "/api/stop", {}, token).status_code == 202 and session.control.stop_requested


@pytest.mark.parametrize("path,method", [("/api/state", "GET"), ("/api/events", "GET"), ("/api/video", "GET"),
                                         ("/api/timeline", "GET"), ("/api/prompt", "POST"), ("/api/stop", "POST")])
def test_without_the_right_token_nothing_is_read_or_changed(served, path, method):
    client, session, token = served
    before = session.control.state()
    for given in ({}, {"X-Tokentrim-Token": "wrong"}, {"X-Tokentrim-Token": token[:-1]}):
        r = client.request(method, path, headers={"Content-Type": "application/json", **given},
                           content=json.dumps({"prompt": "x"}))
        assert r.status_code == 403 and "token" in r.json()["error"]
    assert client.get(f"{path}?token=nope").status_code == 403
    assert session.control.state() == before and not session.control.stop_requested


@pytest.mark.parametrize("host", ["evil.example:8765", f"127.0.0.1:{PORT + 1}", "localhost", "127.0.0.1.nip.io:8765"])
def test_a_host_that_is_not_this_server_is_refused_even_with_the_token(served, host):
    """DNS rebinding: a name of another site that resolves to 127.0.0.1 reaches the server with its own Host."""
    client, session, token = served
    r = post(client, "/api/prompt", {"prompt": "x"}, token, Host=host)
    assert r.status_code == 403 and "Host" in r.json()["error"]
    assert client.get("/", headers={"Host": host}).status_code == 403
    assert len(session.control.state()["timeline"]) == 1
    assert client.get(f"/api/state?token={token}", headers={"Host": f"localhost:{PORT}"}).status_code == 200


@pytest.mark.parametrize("origin", ["http://evil.example", f"http://localhost:{PORT + 1}", "null",
                                    f"https://127.0.0.1:{PORT}"])
def test_a_request_from_another_origin_is_refused_even_with_the_token(served, origin):
    client, session, token = served
    r = post(client, "/api/prompt", {"prompt": "x"}, token, Origin=origin)
    assert r.status_code == 403 and "origin" in r.json()["error"]
    assert post(client, "/api/stop", {}, token, Origin=origin).status_code == 403
    assert len(session.control.state()["timeline"]) == 1 and not session.control.stop_requested


@pytest.mark.parametrize("body,status,words", [
    ({"prompt": ""}, 400, "empty"), ({"prompt": "x", "mode": "explode"}, 400, "unknown switch mode"),
    ({"prompt": "x", "mode": 3}, 400, "mode must be"), ({"prompt": "x", "colour": "red"}, 400, "unknown field"),
    ({"prompt": "x", "start": 30}, 409, "at or past the end"), ({"prompt": "x", "start": 0.1}, 409, "is past"),
    (b"not json", 400, "not valid JSON"), (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"prompt": "x" * (MAX_BODY + 10)}), 413, "larger than")])
def test_a_bad_prompt_gets_a_clear_4xx_and_changes_nothing(served, body, status, words):
    client, session, token = served
    before = session.control.state()
    r = post(client, "/api/prompt", body, token)
    assert r.status_code == status and words in r.json()["error"], r.text
    assert session.control.state() == before


def test_huge_or_unframed_bodies_wrong_types_and_late_requests_change_nothing(served):
    client, session, token = served
    before = session.control.state()
    chunks = (b"x" * 4096 for _ in range(64))  # no Content-Length: counted while read
    r = client.post("/api/prompt", content=chunks, headers={"Content-Type": "application/json",
                                                            "X-Tokentrim-Token": token})
    assert r.status_code == 413
    r = client.post("/api/prompt", content=b"{}", headers={"X-Tokentrim-Token": token, "Content-Type": "text/plain"})
    assert r.status_code == 415
    assert post(client, "/api/extend", {"seconds": -1}, token).status_code == 400
    assert post(client, "/api/extend", {"seconds": 1, "x": 2}, token).status_code == 400
    assert session.control.state() == before
    session.control.boundary(session.control.plan.blocks - 1)  # the last block has started
    r = post(client, "/api/prompt", {"prompt": "after the end"}, token)
    assert r.status_code == 409 and "after the end" in r.json()["error"]
    assert post(client, "/api/extend", {"seconds": 1}, token).status_code == 409
    assert len(session.control.state()["timeline"]) == 1


def test_no_listing_no_files_outside_the_page_no_video_before_the_first_block(served):
    client, session, token = served
    for path in ["/page/", "/../pyproject.toml", "/%2e%2e/%2e%2e/etc/passwd", "/index.html", "/live/",
                 "/api/", "/api/../../etc/passwd"]:
        r = client.get(f"{path}?token={token}")
        assert r.status_code in (403, 404) and "root:" not in r.text, path
    assert client.post("/", headers={"X-Tokentrim-Token": token}).status_code == 405
    r = client.get(f"/api/video?token={token}")
    assert r.status_code == 409 and "no video yet" in r.json()["error"]
