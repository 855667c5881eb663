"""The built-in server's life cycle and access control: /health while loading, the API key, a bad model directory."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.serve import ServeProcess, post_json, request
from support.testmodel import tiny_model

KEY = "sk-test-0123456789abcdef"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Open the settings app."}], "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def keyed(model_dir, tmp_path_factory):
    """A server with an API key from the environment; records what /health and chat said while it loaded."""
    with ServeProcess(model_dir, extra_env={"AUTOGLM_SERVE_API_KEY": KEY},
                      log_path=tmp_path_factory.mktemp("serve") / "server.log") as srv:
        while srv.health() == 0:
            assert srv.proc.poll() is None, srv.log()
        srv.loading_chat = post_json(srv.base + "/v1/chat/completions", CHAT, {"Authorization": "Bearer " + KEY})
        srv.seen = srv.wait_healthy()
        yield srv


def test_health_is_503_while_loading_then_200(keyed):
    seen = [s for s in keyed.seen if s]
    assert seen[0] == 503 and seen[-1] == 200
    # Once 200, it stays 200 (no flapping back to loading).
    assert seen.index(200) == len(seen) - 1
    status, body = keyed.loading_chat
    assert status == 503 and body["error"]["code"] == "model_loading"
    status, _unused, raw = request("GET", keyed.base + "/health")
    assert status == 200 and json.loads(raw)["status"] == "ok"


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic " + KEY, KEY], ids=["none", "wrong", "basic", "bare"])
def test_v1_refuses_a_missing_or_wrong_key(keyed, header):
    headers = {"Authorization": header} if header else {}
    status, body = post_json(keyed.base + "/v1/chat/completions", CHAT, headers)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert request("GET", keyed.base + "/v1/models", headers=headers)[0] == 401


def test_v1_serves_the_right_key_and_probes_need_none(keyed):
    status, body = post_json(keyed.base + "/v1/chat/completions", CHAT, {"Authorization": "Bearer " + KEY})
    assert status == 200 and body["choices"][0]["message"]["content"]
    assert request("GET", keyed.base + "/health")[0] == 200
    assert request("GET", keyed.base + "/metrics")[0] == 200


def test_key_is_never_in_argv_or_logs(keyed):
    post_json(keyed.base + "/v1/chat/completions", CHAT, {"Authorization": "Bearer " + KEY})
    post_json(keyed.base + "/v1/chat/completions", CHAT, {"Authorization": "Bearer " + KEY + "x"})
    cmdline = Path("/proc/%d/cmdline" % keyed.proc.pid).read_bytes().decode()
    assert KEY not in cmdline
    log = keyed.log()
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in log and "401" in log
    assert KEY not in log


def test_a_directory_without_a_model_exits_with_a_reason(tmp_path):
    with ServeProcess(tmp_path, log_path=tmp_path / "server.log") as srv:
        assert srv.proc.wait(timeout=60) == 2
        assert "has no config.json" in srv.log()


def test_unloadable_weights_exit_nonzero_so_systemd_restarts(tmp_path, model_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in model_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model-00002-of-00003.safetensors").write_bytes(b"truncated")
    with ServeProcess(broken, log_path=tmp_path / "server.log") as srv:
        assert srv.proc.wait(timeout=120) == 1
        assert "could not load the model" in srv.log()
