"""RedisClusterChannelLayer over TLS with an ACL user, as on a managed service:
one ``rediss://`` startup node with the user in the URL, client certificates in
``connection_kwargs``; the other nodes are found by their TLS ports.

Needs a redis-server built with TLS (tests/pki.py: ``$ASGI_REDIS_TLS_SERVER`` or
Debian's ``/usr/bin/redis-server``), else skipped with the reason."""

from __future__ import annotations

import pytest

from asgi_redis import LayerConnectionError, RedisClusterChannelLayer

from .cluster import RedisCluster
from .servers import free_port

pytest.importorskip("cryptography.x509")
from .pki import ACL_RULE, PASSWORD, USER, make_pki, tls_server_binary  # noqa: E402


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(str(tmp_path_factory.mktemp("cluster-pki")), "cluster")


@pytest.fixture(scope="module")
def tls_cluster(pki):
    binary, detail = tls_server_binary()
    if binary is None:
        pytest.skip(detail)
    ports = {}

    def tls_lines(port):
        ports[port] = free_port()  # clients speak TLS there; the fixture administers the plain port
        # the cluster bus speaks TLS too (so the nodes announce their TLS ports), on port + 10000
        return [f"tls-port {ports[port]}", f"tls-cert-file {pki['server']}", f"tls-key-file {pki['server_key']}",
                f"tls-ca-cert-file {pki['ca']}", "tls-auth-clients yes", ACL_RULE, "tls-cluster yes",
                f"cluster-port {port + 10000}", f"tls-client-cert-file {pki['client']}",
                f"tls-client-key-file {pki['client_key']}"]

    try:
        nodes = RedisCluster(masters=3, replicas=0, binary=binary, node_timeout_ms=3000, node_config=tls_lines)
    except RuntimeError as error:
        if "tls-" in str(error):
            pytest.skip(f"{binary} ({detail}) was built without TLS; set ASGI_REDIS_TLS_SERVER")
        raise
    nodes.tls_ports = ports
    yield nodes
    nodes.close()


def test_one_tls_startup_node_with_acl_user_reaches_every_master(tls_cluster, pki):
    first = tls_cluster.tls_ports[tls_cluster.nodes[0].port]
    layer = RedisClusterChannelLayer(
        hosts=[f"rediss://{USER}:{PASSWORD}@127.0.0.1:{first}"], expiry=5,
        connection_kwargs={"ssl_ca_certs": pki["ca"], "ssl_certfile": pki["client"],
                           "ssl_keyfile": pki["client_key"], "socket_timeout": 5})
    try:
        tls_ports = {("127.0.0.1", port) for port in tls_cluster.tls_ports.values()}
        assert set(layer.router.masters()) == tls_ports  # found by their TLS ports, not the plain ones
        names = [f"tls.normal{n}" for n in range(20)]
        for name in names:
            layer.send(name, {"secret": b"\x00payload"})
        assert len(layer.router.clients.known()) == 3  # every master was written to, over TLS
        assert sorted(layer.receive(names)[0] for _ in names) == sorted(names)
        layer.group_add("tls.group", "tls!a")
        layer.send_group("tls.group", {"n": 1})
        assert layer.receive(["tls!"], block=True) == ("tls!a", {"n": 1})
        assert layer.global_statistics()["messages_count"] == 21
        assert PASSWORD not in repr(layer)
        layer.flush()
    finally:
        layer.close()


def test_wrong_password_is_a_layer_connection_error_without_it(tls_cluster, pki):
    first = tls_cluster.tls_ports[tls_cluster.nodes[0].port]
    layer = RedisClusterChannelLayer(
        hosts=[f"rediss://{USER}:wrong-{PASSWORD}@127.0.0.1:{first}"],
        connection_kwargs={"ssl_ca_certs": pki["ca"], "ssl_certfile": pki["client"],
                           "ssl_keyfile": pki["client_key"], "socket_timeout": 5})
    try:
        with pytest.raises(LayerConnectionError) as raised:
            layer.send("tls.x", {})
        assert PASSWORD not in str(raised.value)
    finally:
        layer.close()
