"""`ztun` command line: every bad input exits 2 with a message naming what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ztun.cli import build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztun", *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--proxy", "socks5://host"], "port"),
        (["run", "--proxy", "ftp://h:1"], "scheme"),
        (["run", "--proxy", "socks5://h:99999"], "port"),
        (["run", "--address", "10.0.0.1/31"], "/31"),
        (["run", "--address", "10.0.0.0/30"], "network or broadcast"),
        (["run", "--address", "banana"], "banana"),
        (["run", "--mtu", "100"], "out of range"),
        (["run", "--mtu", "x"], "not a number"),
        (["run", "--device", "eth0"], "tun://NAME or fd://N"),
        (["run", "--device", "tun://a-name-much-too-long"], "1..15"),
        (["run", "--device", "fd://x"], "descriptor"),
        (["run", "--udp-timeout", "0"], "out of range"),
        (["run", "--address", "10.0.0.1", "--address", "10.1.0.1"], "at most one IPv4"),
        (["run", "--mtu", "1000"], "1280"),
        (["run", "--loglevel", "loud"], "invalid choice"),
        (["run", "--workers", "0"], "out of range"),
        (["run", "--workers", "65"], "out of range"),
        (["run", "--workers", "2", "--device", "fd://3"], "multi-queue"),
        (["run", "--portable", "--workers", "2"], "--portable turns off"),
        (["run", "--portable", "--redirect"], "--portable turns off"),
        (["frobnicate"], "invalid choice"),
        (["run", "--icmp", "ping"], "invalid choice"),
        (["run", "--max-udp-sessions", "-1"], "out of range [0, 1048576]"),
        (["run", "--connect-timeout", "0"], "out of range [0.1, 300]"),
    ],
)
def test_bad_input_exits_2_and_says_what_is_wrong(args: list[str], message: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        # Linux's dev_valid_name() (net/core/dev.c) refuses these: TUNSETIFF said EINVAL
        # and ztun exited 1 ("cannot open") instead of 2.
        (["--device", "tun://a:b"], "--device"),
        (["--device", "tun://."], "--device"),
        (["--device", "tun://.."], "--device"),
        # Past a C int: os.fstat raised OverflowError at start-up (exit 1).
        (["--device", "fd://2147483648"], "--device"),
        (["--device", "fd://99999999999999999999"], "--device"),
        # ARABIC-INDIC DIGIT THREE: str.isdigit() took it and int() read 3.
        (["--device", "fd://\u0663"], "--device"),
        (["--metrics", "127.0.0.1:\u0663"], "--metrics"),
        # `ip netns` refuses these names; "" opened /run/netns itself, and a '/' any file.
        (["--netns", ""], "--netns"),
        (["--netns", ".."], "--netns"),
        (["--netns", "../../proc/1/ns/net"], "--netns"),
        # A zone on a TUN address or a route prefix: accepted, refused by the kernel later.
        (["--address", "fd00::1%eth0/64"], "--address"),
        (["--address", "fd00::1%1"], "--address"),
        (["--include", "fd00::%eth0/64"], "--include"),
        (["--exclude", "fd00::%eth0/64"], "--exclude"),
        # Said as the config key the flag sets (like every flag the config validates).
        (["--dns", "remote", "--dns-upstream", "a b"], "dns.upstream"),
        # Read only by remote mode: without --dns remote it was silently unused.
        (["--dns-upstream", "1.1.1.1:53"], "dns.upstream: is used only by --dns remote"),
        (["--dns", "fake-ip", "--dns-upstream", "1.1.1.1:53"], "dns mode is fake-ip"),
        # --metrics checked only HOST:PORT's shape: binding 'h h' failed once ztun was up.
        (["--metrics", "h h:9100"], "metrics"),
        # An empty --pid-file failed once ztun was up (exit 1); --log-file's said only
        # "log file : No such file or directory".
        (["--pid-file", ""], "pid_file: must be a path"),
        (["--log-file", ""], "log_file: must be a path"),
    ],
)
def test_bad_flag_values_exit_2_with_one_line_naming_the_flag(
    args: list[str], flag: str, capsys
) -> None:  # type: ignore[no-untyped-def]
    """Values that used to pass the parser and fail only once ztun was starting (or not
    at all). Parsed and checked with `_options`, never `main`: nothing may start here."""
    from ztun.cli import _options

    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        _options(parser.parse_args(["run", *args]), parser)
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and flag in errors[0], errors


def test_icmp_direct_is_refused_on_windows(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """No ICMP datagram sockets there: a clear refusal (exit 2), not the start-up check's
    message about Linux's ping_group_range."""
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(SystemExit) as exc:
        main(["run", "--icmp", "direct"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--icmp direct: Windows has no unprivileged ICMP sockets" in err
    assert "IcmpSendEcho2" in err and "ping_group_range" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "10.9.0.1/24", "--include", "::/0"], "TUN has no IPv6 address"),
        (["--address", "fd00::1/64", "--include", "10.0.0.0/8"], "TUN has no IPv4 address"),
    ],
)
def test_unplannable_auto_route_exits_2_before_anything_opens(
    args: list[str], message: str, capsys
) -> None:  # type: ignore[no-untyped-def]
    """What every OS's planner refuses is said at start-up (exit 2, the planner's
    message), not as a traceback after the device is open. `_options` is called, not
    `main`: were the check missing, nothing may start a run in this namespace."""
    from ztun.cli import _options

    parser = build_parser()
    ns = parser.parse_args(["run", "--device", "tun://zt9", "--auto-route", *args])
    with pytest.raises(SystemExit) as exc:
        _options(ns, parser)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--auto-route: --include {args[-1]} is IPv" in err and message in err


@pytest.mark.parametrize("os_name", ["darwin", "win32"])
def test_redirect_is_refused_off_linux(os_name: str, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """It was silently ignored there (the accelerations line said redirect=off)."""
    from ztun.cli import _options

    monkeypatch.setattr(sys, "platform", os_name)
    parser = build_parser()
    ns = parser.parse_args(["run", "--redirect"])
    with pytest.raises(SystemExit) as exc:
        _options(ns, parser)
    assert exc.value.code == 2
    assert "--redirect needs Linux" in capsys.readouterr().err


def test_seed_short_flags_map_onto_run() -> None:
    parser = build_parser()
    from ztun.cli import _normalise_argv, _options

    ns = parser.parse_args(
        _normalise_argv(["-x", "socks5://u:p@10.0.0.2:1080", "-i", "10.9.0.1", "-m", "1400", "-d"])
    )
    opts = _options(ns, parser)
    assert ns.command == "run" and ns.debug
    assert opts.proxy == "socks5://u:p@10.0.0.2:1080"
    assert [str(a) for a in opts.addresses] == ["10.9.0.1/30"]
    assert opts.mtu == 1400


def test_help_documents_every_run_flag() -> None:
    out = run_cli("run", "--help")
    assert out.returncode == 0
    for flag in (
        "--device",
        "--proxy",
        "-x",
        "--udp-proxy",
        "--fail-open",
        "--address",
        "-i",
        "--tun-ip",
        "--mtu",
        "-m",
        "--tun-mtu",
        "--udp-timeout",
        "--connect-timeout",
        "--netns",
        "--fwmark",
        "--interface",
        "--workers",
        "--tun-thread",
        "--portable",
        "--icmp",
        "--max-udp-sessions",
        "--loglevel",
        "--debug",
        "-d",
    ):
        assert flag in out.stdout, flag


def test_run_description_points_at_auto_route() -> None:
    text = " ".join(run_cli("run", "--help").stdout.split())  # argparse wraps the lines
    assert "Without --auto-route the routes are left alone" in text
    assert "Routes are not changed" not in text


def test_no_command_prints_help_and_exits_2() -> None:
    out = run_cli()
    assert out.returncode == 2 and "COMMAND" in out.stdout


@pytest.mark.parametrize(
    ("flags", "key", "value"),
    [
        (["--control", "/tmp/x.sock"], "control", "/tmp/x.sock"),
        (["--metrics", "127.0.0.1:9100"], "metrics", ("127.0.0.1", 9100)),
        (["--metrics", "[::1]:9101"], "metrics", ("::1", 9101)),
        (["--log-file", "/tmp/z.log"], "log_file", Path("/tmp/z.log")),
        (["--log-format", "json"], "log_format", "json"),
        (["--log-flows"], "log_flows", True),
        (["--pid-file", "/tmp/z.pid"], "pid_file", Path("/tmp/z.pid")),
        (["--log-level", "warning"], "log_level", "warning"),
        (["-d"], "log_level", "debug"),
    ],
)
def test_each_new_flag_is_its_config_key(
    flags: list[str], key: str, value: object, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A flag and the file's key of the same name are one setting: the flag wins, and
    without it the file's value holds (log_level from the file was once ignored)."""
    from ztun.cli import _normalise_argv, _options

    parser = build_parser()
    opts = _options(parser.parse_args(_normalise_argv(["run", *flags])), parser)
    assert getattr(opts.config, key) == value
    config = tmp_path / "ztun.toml"
    config.write_text(
        'log_level = "error"\nlog_format = "json"\nlog_flows = true\ncontrol = "/c.sock"\n'
        'metrics = "127.0.0.1:1"\nlog_file = "/f.log"\npid_file = "/p.pid"\n'
    )
    from_file = _options(parser.parse_args(["run", "--config", str(config)]), parser).config
    assert (from_file.log_level, from_file.log_format, from_file.log_flows) == (
        "error",
        "json",
        True,
    )
    assert (from_file.control, from_file.metrics) == ("/c.sock", ("127.0.0.1", 1))
    both = _options(parser.parse_args(["run", "--config", str(config), *flags]), parser)
    assert getattr(both.config, key) == value


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('metrics = "127.0.0.1"', "needs HOST:PORT"),
        ('log_format = "xml"', "not one of text, json"),
        ('log_flows = "yes"', "must be true/false"),
        ('control = ""', "must be a path"),
        ('log_level = "loud"', "not one of"),
    ],
)
def test_bad_new_keys_exit_2_naming_file_and_line(
    line: str, message: str, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "ztun.toml"
    config.write_text(f"# first line\n{line}\n")
    with pytest.raises(SystemExit) as exc:
        main(["run", "--config", str(config)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{config}:2" in err and message in err


def test_dns_upstream_flag_needs_remote_mode_from_the_flag_or_the_file(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The flag is checked against the mode in force (flag or file); a file may keep an
    upstream under another mode, as the documented example does (remote mode only)."""
    from ztun.cli import _options
    from ztun.rules import config as config_module

    parser = build_parser()
    remote = tmp_path / "remote.toml"
    remote.write_text('[dns]\nmode = "remote"\nupstream = "9.9.9.9:53"\n')
    args = ["run", "--config", str(remote), "--dns-upstream", "1.1.1.1:53"]
    assert _options(parser.parse_args(args), parser).config.dns.upstream == ("1.1.1.1", 53)
    example = tmp_path / "example.toml"
    example.write_text(config_module.__doc__.split("Example::\n")[1].split("\nProxies")[0])
    loaded = _options(parser.parse_args(["run", "--config", str(example)]), parser).config
    assert (loaded.dns.mode.value, loaded.dns.upstream) == ("fake-ip", ("1.1.1.1", 53))
    with pytest.raises(SystemExit) as exc:
        _options(
            parser.parse_args(["run", "--config", str(example), "--dns-upstream", "8.8.8.8"]),
            parser,
        )
    assert exc.value.code == 2
    assert (
        "dns.upstream: is used only by --dns remote (dns mode is fake-ip)"
        in capsys.readouterr().err
    )


# -- proxies and groups (docs/contracts.md section 2) ----------------------------------------


def _parsed(*args: str):  # type: ignore[no-untyped-def]
    """RunOptions for `args`, without running anything."""
    from ztun.cli import _normalise_argv, _options

    parser = build_parser()
    return _options(parser.parse_args(_normalise_argv(["run", *args])), parser)


def test_repeated_proxy_forms_the_failover_group_default() -> None:
    opts = _parsed(
        "--proxy", "http://u:p@10.0.0.2:3128", "-x", "socks4a://10.0.0.3:1080", "--fail-open"
    )
    cfg = opts.config
    assert [(p.name, p.url) for p in cfg.all_proxies()] == [
        ("proxy1", "http://u:p@10.0.0.2:3128"),
        ("proxy2", "socks4a://10.0.0.3:1080"),
    ]
    group = cfg.all_groups()[0]
    assert (group.name, group.members, group.policy.value) == (
        "default",
        ("proxy1", "proxy2"),
        "failover",
    )
    assert cfg.fail_open is True
    assert opts.proxy == "http://u:p@10.0.0.2:3128"  # what the start-up line names


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        # default_outbound pointed at b, yet the start-up line named proxy1's URL.
        (
            'proxy = "socks5://u:pw@10.0.0.2:1080"\ndefault_outbound = "b"\n'
            '[[proxies]]\nname = "b"\nurl = "http://10.0.0.3:3128"\n',
            "b(http://10.0.0.3:3128)",
        ),
        (
            'proxy = ["socks5://u:pw@10.0.0.2:1080", "http://10.0.0.3:3128"]\n',
            "default(failover:proxy1=socks5://u:***@10.0.0.2:1080,proxy2=http://10.0.0.3:3128)",
        ),
        (
            'default_outbound = "g"\n[[proxies]]\nname = "a"\nurl = "socks5://10.0.0.4:1080"\n'
            '[groups.g]\nmembers = ["a"]\npolicy = "round-robin"\n',
            "g(round-robin:a=socks5://10.0.0.4:1080)",
        ),
        ('proxy = "socks5://10.0.0.2:1080"\ndefault_outbound = "direct"\n', "direct"),
        ('proxy = "reject://"\n', "reject"),
    ],
)
def test_the_start_up_line_names_the_default_outbound(lines: str, named: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`ztun ready ... proxy=` says what new flows use by default (a group as the group,
    with its members), never a password."""
    conf = tmp_path / "ztun.toml"
    conf.write_text(lines)
    assert _parsed("--config", str(conf)).config.default_outbound_summary() == named


def test_without_fail_open_groups_fail_closed() -> None:
    assert _parsed("--proxy", "socks5://10.0.0.2:1080").config.fail_open is False


def test_flags_beat_the_files_proxies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "ztun.toml"
    conf.write_text('proxy = "socks5://10.0.0.9:1080"\nfail_open = false\n')
    opts = _parsed("--config", str(conf), "--proxy", "socks4://10.0.0.2:1080", "--fail-open")
    assert opts.config.proxy_urls == ("socks4://10.0.0.2:1080",) and opts.config.fail_open


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--proxy", "socks5://10.0.0.2:1080", "--proxy", "http://h"], "port missing"),
        (["--proxy", "http://a:b@h:1", "--proxy", "gopher://h:1"], "unsupported scheme"),
        (["--proxy", "socks4://u:pw@h:1"], "has a user id but no password"),
        (["--proxy", "http://us%3Aer:p@h:1"], "RFC 7617"),
        (["--proxy", "socks5://h:1", "--proxy", "direct://"], "it cannot be in a group"),
        (["--udp-proxy", "http//h:1"], "scheme missing"),
        (["--udp-proxy", "http://u:p@h:3128"], "http proxy h:3128: http:// carries no UDP"),
        (["--udp-proxy", "socks4a://h:1080"], "socks4a:// carries no UDP"),
        (["--fail-open=yes"], "ignored explicit argument"),
    ],
)
def test_bad_proxy_flags_exit_2(args: list[str], message: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(["run", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert ":pw@" not in err and ":p@" not in err  # never the password


def test_bad_group_config_exits_2_naming_file_and_line(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "ztun.toml"
    conf.write_text('[[proxies]]\nname = "a"\nurl = "socks5://h:1"\n[groups.g]\nmembers = ["b"]\n')
    with pytest.raises(SystemExit) as exc:
        main(["run", "--config", str(conf)])
    assert exc.value.code == 2
    assert f"{conf}:5: groups.g.members[0]: 'b' is not a proxy" in capsys.readouterr().err


def test_udp_proxy_takes_the_name_udp(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "ztun.toml"
    conf.write_text('[[proxies]]\nname = "udp"\nurl = "socks5://h:1"\n')
    with pytest.raises(SystemExit) as exc:
        main(["run", "--config", str(conf), "--udp-proxy", "socks5://h:2"])
    assert exc.value.code == 2
    assert "--udp-proxy is the proxy named 'udp'" in capsys.readouterr().err


def test_a_valid_run_in_a_unit_test_stops_at_the_guard_not_in_the_kernel(capsys) -> None:  # type: ignore[no-untyped-def]
    """tests/unit/conftest.py stands between `main(["run", ...])` and the host's network
    (a test here once created `ztun0` in the root namespace when a flag it expected to be
    refused became valid). Checked installed first, so this test itself cannot open one."""
    import ztun.app

    assert getattr(ztun.app.run, "guards", "").startswith("ztun.app.run")
    with pytest.raises(AssertionError, match=r"a unit test reached ztun\.app\.run"):
        main(["run", "--device", "tun://ztguard0", "--proxy", "http://10.0.0.2:3128"])
