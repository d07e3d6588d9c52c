"""featsep.hub: one offline rule and one reachability rule (proxy first), no network needed."""

from __future__ import annotations

import socket
import time

import pytest

from featsep import hub


@pytest.fixture
def clean_env(monkeypatch):
    for v in (*hub.PROXY_VARIABLES, *hub.OFFLINE_VARIABLES, "HF_ENDPOINT"):
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("variable", hub.OFFLINE_VARIABLES)
@pytest.mark.parametrize("value, expected", [("1", True), ("TRUE", True), ("yes", True), ("0", False), ("", False)])
def test_offline_reads_each_variable_like_huggingface_hub(clean_env, variable, value, expected):
    assert not hub.offline()
    clean_env.setenv(variable, value)
    assert hub.offline() is expected


def test_unreachable_endpoint_is_reported_fast(clean_env):
    clean_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    assert hub.reachable(timeout=2.0) is False
    assert time.perf_counter() - start < 1.5


def test_endpoint_and_proxy_rule(clean_env):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        clean_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub.reachable(timeout=2.0) is True
        # a proxy decides: the (closed) endpoint is not probed, the (listening) proxy is
        clean_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
        for variable in ("HTTPS_PROXY", "all_proxy"):
            clean_env.setenv(variable, f"127.0.0.1:{port}")
            assert hub.reachable(timeout=2.0) is True
            clean_env.delenv(variable)
    clean_env.setenv("ALL_PROXY", f"http://127.0.0.1:{_closed_port()}")
    assert hub.reachable(timeout=2.0) is False


def test_default_endpoint_and_ports(clean_env):
    asked = []

    def fake_connect(address, timeout):
        asked.append(address)
        raise OSError("no network")

    clean_env.setattr(socket, "create_connection", fake_connect)
    assert hub.reachable() is False
    clean_env.setenv("https_proxy", "http://proxy.example:3128")
    assert hub.reachable() is False
    assert asked == [("huggingface.co", 443), ("proxy.example", 3128)]
