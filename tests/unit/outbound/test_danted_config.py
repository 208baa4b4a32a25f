"""The one danted.conf writer (ztun.servers.danted): text in, text out, no danted run.

The integration tests (outbound, the harness's TCP/UDP behaviours) run danted with it.
"""

from __future__ import annotations

from ztun.servers.danted import danted_config


def test_dual_stack_with_username_auth_and_route_rotation() -> None:
    text = danted_config(
        [("10.0.0.2", 1080), ("fd00::2", 1080)], ["veth0", "veth1"], username_auth=True
    )
    assert text == (
        "logoutput: stderr\n"
        "internal: 10.0.0.2 port = 1080\n"
        "internal: fd00::2 port = 1080\n"
        "external: veth0\n"
        "external: veth1\n"
        "external.rotation: route\n"
        "clientmethod: none\n"
        "socksmethod: username\n"
        "user.privileged: root\n"
        "user.unprivileged: nobody\n"
        "client pass {\n  from: 0/0 to: 0/0\n  log: error connect disconnect\n}\n"
        "socks pass {\n  from: 0/0 to: 0/0\n  command: bind connect udpassociate\n"
        "  log: error connect disconnect\n}\n"
        "socks pass {\n  from: 0/0 to: 0/0\n  command: bindreply udpreply\n"
        "  log: error connect disconnect\n}\n"
    )


def test_quiet_single_address_without_rotation() -> None:
    text = danted_config([("127.0.0.1", 1083)], ["lo"], log="", rotation_by_route=False)
    assert "external.rotation" not in text and "log:" not in text
    assert "socksmethod: none\n" in text
    # udpreply needs a rule of its own: target replies are matched against it.
    assert "  command: bindreply udpreply\n" in text
    assert text.count("pass {") == 3
