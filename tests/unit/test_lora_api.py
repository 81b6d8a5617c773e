"""/v1/load_lora_adapter and /v1/unload_lora_adapter without --allow-runtime-lora: a 404 that says how to turn
them on, behind the API key like every /v1 route (the cluster test covers them on: test_openai_http.py)."""

from fastapi.testclient import TestClient

from router.front.auth import ApiKeys
from router.front.http_api import HttpContext, create_app
from router.front.intake import Frontend


def app(allow: bool) -> TestClient:
    frontend = Frontend.__new__(Frontend)
    frontend.tokenizer = None  # the app only keeps it
    return TestClient(create_app(HttpContext(frontend, None, None, ApiKeys(["k"]), "m", allow_runtime_lora=allow)))


def test_runtime_lora_updating_is_off_unless_asked_for():
    client = app(False)
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        body = {"lora_name": "x", "lora_path": "/a"}
        assert client.post(path, json=body).status_code == 401
        reply = client.post(path, json=body, headers={"Authorization": "Bearer k"})
        assert reply.status_code == 404 and "--allow-runtime-lora" in reply.json()["error"]["message"]


def test_bad_bodies_are_400s_before_any_node_is_asked():
    client = app(True)
    headers = {"Authorization": "Bearer k"}
    for body, message in (({"lora_name": "x"}, "lora_path"), ({"lora_name": "a b", "lora_path": "/a"}, "name"),
                          ({"lora_name": "m", "lora_path": "/a"}, "names the base model"),
                          ({"lora_name": "x", "lora_path": "/a", "extra": 1}, "extra")):
        reply = client.post("/v1/load_lora_adapter", json=body, headers=headers)
        assert reply.status_code == 400 and message in reply.json()["error"]["message"], reply.json()


def test_an_unload_the_store_cannot_record_is_a_503_that_changes_nothing():
    from tests.unit.test_lora_reconcile import DownStore, FakeRegistry

    from router.cluster.lora_admin import RuntimeAdapters

    store = DownStore()
    store.down = True
    frontend = Frontend.__new__(Frontend)
    frontend.tokenizer = None
    runtime = RuntimeAdapters(FakeRegistry([]), 1.0, store)
    client = TestClient(create_app(HttpContext(frontend, None, None, ApiKeys(["k"]), "m", allow_runtime_lora=True,
                                               runtime_loras=runtime)))
    reply = client.post("/v1/unload_lora_adapter", json={"lora_name": "x"}, headers={"Authorization": "Bearer k"})
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "lora_store_unavailable"
