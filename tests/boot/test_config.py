"""Configuration: precedence value by value, upstream kernel-line facts, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest

from agent.config import (
    OPTIONS,
    AgentConfig,
    ConfigError,
    format_config,
    load_config,
    parse_cli,
    split_cmdline,
)

from .nsrun import python_env


@pytest.fixture
def env(tmp_path):
    """Write a kernel command line and a config file; load with them."""

    class Env:
        cmdline = tmp_path / "cmdline"
        toml = tmp_path / "agent.toml"

        def load(self, cmdline="", toml=None, environ=None, cli=()):
            self.cmdline.write_text(cmdline + "\n")
            argv = ["--cmdline-path", str(self.cmdline), *cli]
            if toml is not None:
                self.toml.write_text(toml)
                argv += ["--config", str(self.toml)]
            return load_config(argv, environ or {})[0]

    return Env()


# name, TOML line, kernel token, env value, CLI args, and the value each layer gives.
LAYERS = [
    (
        "log_level",
        'log_level = "warn"',
        "agent.log=error",
        "debug",
        ["--log-level", "trace"],
        ("info", "warn", "error", "debug", "trace"),
    ),
    (
        "server_addr",
        'server_addr = "vsock://3:1025"',
        "agent.server_addr=vsock://-1:2000",
        "unix:///run/a.sock",
        ["--server-addr", "unix://@agent"],
        ("vsock://-1:1024", "vsock://3:1025", "vsock://-1:2000", "unix:///run/a.sock", "unix://@agent"),
    ),
    (
        "hotplug_timeout",
        "hotplug_timeout = 10",
        "agent.hotplug_timeout=20",
        "30",
        ["--hotplug-timeout", "0.5"],
        (3.0, 10.0, 20.0, 30.0, 0.5),
    ),
    (
        "debug_console_vport",
        "debug_console_vport = 1026",
        "agent.debug_console_vport=1027",
        "1028",
        ["--debug-console-vport", "1029"],
        (0, 1026, 1027, 1028, 1029),
    ),
    (
        "log_vport",
        "log_vport = 1",
        "agent.log_vport=2",
        "3",
        ["--log-vport", "4"],
        (0, 1, 2, 3, 4),
    ),
    (
        "container_pipe_size",
        "container_pipe_size = 4096",
        "agent.container_pipe_size=8192",
        "65536",
        ["--container-pipe-size", "1048576"],
        (0, 4096, 8192, 65536, 1048576),
    ),
    (
        "debug_console",
        "debug_console = true",
        "agent.debug_console=0",
        "yes",
        ["--no-debug-console"],
        (False, True, False, True, False),
    ),
    (
        "dev_mode",
        "dev_mode = true",
        "agent.devmode=false",
        "1",
        ["--no-dev-mode"],
        (False, True, False, True, False),
    ),
    (
        "tracing",
        "tracing = true",
        "agent.trace=false",
        "true",
        ["--no-tracing"],
        (False, True, False, True, False),
    ),
    (
        "unified_cgroup_hierarchy",
        "unified_cgroup_hierarchy = true",
        "systemd.unified_cgroup_hierarchy=0",
        "1",
        ["--no-unified-cgroup-hierarchy"],
        (False, True, False, True, False),
    ),
    (
        "cgroup_no_v1",
        'cgroup_no_v1 = "memory"',
        "cgroup_no_v1=all",
        "cpu,memory",
        ["--cgroup-no-v1", "all"],
        ("", "memory", "all", "cpu,memory", "all"),
    ),
    (
        "oci_runtime",
        'oci_runtime = "runc"',
        "agent.oci_runtime=crun",
        "runc",
        ["--oci-runtime", "crun"],
        ("crun", "runc", "crun", "runc", "crun"),
    ),
    (
        "shared_dir",
        'shared_dir = "/a"',
        "agent.shared_dir=/b",
        "/c",
        ["--shared-dir", "/d/"],
        ("/run/kata-containers/shared/containers", "/a", "/b", "/c", "/d"),
    ),
    (
        "sysfs_root",
        'sysfs_root = "/s1"',
        "agent.sysfs_root=/s2",
        "/s3",
        ["--sysfs-root", "/s4"],
        ("/sys", "/s1", "/s2", "/s3", "/s4"),
    ),
    (
        "proc_root",
        'proc_root = "/p1"',
        "agent.proc_root=/p2",
        "/p3",
        ["--proc-root", "/p4"],
        ("/proc", "/p1", "/p2", "/p3", "/p4"),
    ),
    (
        "cgroup_root",
        'cgroup_root = "/c1"',
        "agent.cgroup_root=/c2",
        "/c3",
        ["--cgroup-root", "/c4"],
        ("/sys/fs/cgroup", "/c1", "/c2", "/c3", "/c4"),
    ),
    (
        "debug_console_addr",
        'debug_console_addr = "unix:///d1"',
        "agent.debug_console_addr=unix:///d2",
        "unix:///d3",
        ["--debug-console-addr", "unix:///d4"],
        ("", "unix:///d1", "unix:///d2", "unix:///d3", "unix:///d4"),
    ),
    (
        "log_addr",
        'log_addr = "unix:///l1"',
        "agent.log_addr=unix:///l2",
        "unix:///l3",
        ["--log-addr", "unix:///l4"],
        ("", "unix:///l1", "unix:///l2", "unix:///l3", "unix:///l4"),
    ),
    (
        "trace_addr",
        'trace_addr = "unix:///t1"',
        "agent.trace_addr=unix:///t2",
        "unix:///t3",
        ["--trace-addr", "unix:///t4"],
        ("", "unix:///t1", "unix:///t2", "unix:///t3", "unix:///t4"),
    ),
    (
        "guest_hook_path",
        'guest_hook_path = "/h1"',
        "agent.guest_hook_path=/h2",
        "/h3",
        ["--guest-hook-path", "/h4"],
        ("", "/h1", "/h2", "/h3", "/h4"),
    ),
    (
        "policy_file",
        'policy_file = "/p1"',
        "agent.policy_file=/p2",
        "/p3",
        ["--policy-file", "/p4"],
        ("", "/p1", "/p2", "/p3", "/p4"),
    ),
]


def test_every_option_has_a_precedence_case():
    assert {row[0] for row in LAYERS} == {o.name for o in OPTIONS}


@pytest.mark.parametrize("row", LAYERS, ids=[r[0] for r in LAYERS])
def test_precedence_defaults_file_cmdline_env_cli(env, row):
    name, toml, token, env_value, cli, expected = row
    environ = {"KATA_AGENT_" + name.upper(): env_value}
    steps = [
        env.load(),
        env.load(toml=toml),
        env.load(token, toml=toml),
        env.load(token, toml=toml, environ=environ),
        env.load(token, toml=toml, environ=environ, cli=cli),
    ]
    assert [getattr(c, name) for c in steps] == list(expected)
    sources = [c.source_of(name) for c in steps]
    assert sources[0] == "default"
    assert sources[1].startswith(f"config file {env.toml}")
    assert sources[2] == f"kernel cmdline {env.cmdline} ({token.partition('=')[0]})"
    assert sources[3] == f"env KATA_AGENT_{name.upper()}"
    assert sources[4].startswith("cli --")
    # Each layer left every other option alone.
    for c in steps:
        for other in OPTIONS:
            if other.name != name:
                assert getattr(c, other.name) == other.default, other.name


# Upstream kernel command-line behaviour (src/agent/src/config.rs facts).
@pytest.mark.parametrize(
    "cmdline, expected",
    [
        ("agent.debug_consolex agent.devmode", {"debug_console": False, "dev_mode": True}),
        ("foo agent.debug_console bar", {"debug_console": True, "dev_mode": False}),
        ("agent.logx=debug", {"log_level": "info"}),
        ("agent.log=debug", {"log_level": "debug"}),
        ("agent.log=fatal", {"log_level": "critical"}),
        ("agent.log=warning", {"log_level": "warn"}),
        ("agent.hotplug_timeout=100", {"hotplug_timeout": 100.0}),
        ("agent.trace", {"tracing": True}),
        ("agent.trace=1", {"tracing": True}),
        ("systemd.unified_cgroup_hierarchy=11", {"unified_cgroup_hierarchy": True}),
        ("agent.unified_cgroup_hierarchy=true", {"unified_cgroup_hierarchy": True}),
        ("agent.log=debug agent.log=error", {"log_level": "error"}),  # last one wins
        ("foo debug_console agent bar devmode", {"debug_console": False, "dev_mode": False}),
        ("quiet -- agent.log=debug", {"log_level": "info"}),  # init's argv, not kernel params
        ('agent.guest_hook_path="/a b"', {"guest_hook_path": "/a b"}),
    ],
)
def test_kernel_cmdline_parsing(env, cmdline, expected):
    config = env.load(cmdline)
    assert {k: getattr(config, k) for k in expected} == expected


def test_cgroup_v2_choice(env):
    assert env.load().cgroup_v2 is False
    assert env.load("cgroup_no_v1=all").cgroup_v2 is True
    assert env.load("cgroup_no_v1=memory,cpu").cgroup_v2 is False
    assert env.load("systemd.unified_cgroup_hierarchy=1").cgroup_v2 is True


def test_split_cmdline_quotes_and_end_marker():
    assert split_cmdline(' a  "b c"=d e="f g" -- h') == ["a", "b c=d", "e=f g"]
    assert split_cmdline("x --") == ["x"]
    assert split_cmdline("") == []


# option, bad raw value; each checked from the kernel line, the environment and the CLI.
MALFORMED = [
    ("log_level", "loud"),
    ("server_addr", "tcp://1.2.3.4:80"),
    ("server_addr", "vsock://x:1024"),
    ("server_addr", "unix://relative"),
    ("hotplug_timeout", "soon"),
    ("hotplug_timeout", "0"),
    ("hotplug_timeout", "-3"),
    ("debug_console_vport", "-1"),
    ("debug_console_vport", "port"),
    ("log_vport", "4294967296"),
    ("container_pipe_size", "-5"),
    ("container_pipe_size", "1MB"),
    ("debug_console", "maybe"),
    ("unified_cgroup_hierarchy", "perhaps"),
    ("oci_runtime", "docker"),
    ("shared_dir", "relative/dir"),
    ("guest_hook_path", "hooks"),
]
_KEY = {o.name: o.cmdline[0] for o in OPTIONS}


@pytest.mark.parametrize("name, raw", MALFORMED, ids=[f"{n}={r}" for n, r in MALFORMED])
def test_malformed_values_name_option_and_source(env, name, raw):
    key = _KEY[name]
    with pytest.raises(ConfigError) as err:
        env.load(f"quiet {key}={raw}")
    assert err.value.option == name
    assert str(err.value).startswith(f"{name}: invalid value {raw!r}")
    assert f"kernel cmdline {env.cmdline} ({key})" in str(err.value)

    var = "KATA_AGENT_" + name.upper()
    with pytest.raises(ConfigError, match=f"^{name}: .*from env {var}"):
        env.load(environ={var: raw})

    flag = next(o.flags[0] for o in OPTIONS if o.name == name)
    args = [f"{flag}={raw}"] if not next(o for o in OPTIONS if o.name == name).is_bool else []
    if args:
        with pytest.raises(ConfigError, match=f"^{name}: .*from cli {flag}"):
            env.load(cli=args)


def test_malformed_value_in_file(env):
    with pytest.raises(
        ConfigError, match=r"^hotplug_timeout: .*config file .*agent.toml \(hotplug_timeout\)"
    ):
        env.load(toml='hotplug_timeout = "never"')
    with pytest.raises(ConfigError, match=r"^debug_console_vport: "):
        env.load(toml="debug_console_vport = true")  # a bool is not a port
    with pytest.raises(ConfigError, match=r"^cgroup_no_v1: "):
        env.load(toml='cgroup_no_v1 = "memory cpu"')


def test_bad_value_is_an_error_even_when_overridden(env):
    with pytest.raises(ConfigError, match="^log_level: .*kernel cmdline"):
        env.load("agent.log=loud", cli=["--log-level", "debug"])


def test_value_option_without_value(env):
    with pytest.raises(ConfigError, match=r"^log_level: invalid value \(no value\)"):
        env.load("agent.log")


def test_file_details(env, tmp_path):
    config = env.load(
        toml='devmode = true\nlog = "debug"\ntrace = true\n'
        "hotplug_timeout = { secs = 2, nanos = 500000000 }\n"
        "unknown_key = 1\n[some_table]\nx = 1\n"
    )
    assert (config.dev_mode, config.log_level, config.tracing) == (True, "debug", True)
    assert config.hotplug_timeout == 2.5
    assert config.config_file == str(env.toml)
    assert config.source_of("config_file") == "cli --config"

    with pytest.raises(ConfigError, match="^config_file: cannot read .*missing.toml"):
        load_config(["--cmdline-path", "/dev/null", "--config", str(tmp_path / "missing.toml")], {})
    with pytest.raises(ConfigError, match="^config_file: .* is not valid TOML"):
        env.load(toml="this is = = not toml")


def test_config_file_from_kernel_cmdline_and_env(env, tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('log_level = "debug"\n')
    b.write_text('log_level = "error"\n')
    config = env.load(f"agent.config_file={a}")
    assert config.log_level == "debug"
    assert config.source_of("log_level") == f"config file {a} (log_level)"
    assert config.source_of("config_file") == f"kernel cmdline {env.cmdline} (agent.config_file)"
    config = env.load(f"agent.config_file={a}", environ={"KATA_AGENT_CONFIG_FILE": str(b)})
    assert config.log_level == "error"
    # The kernel line still overrides what the file says.
    assert env.load(f"agent.config_file={a} agent.log=warn").log_level == "warn"


def test_cmdline_path_handling(tmp_path):
    with pytest.raises(ConfigError, match="^cmdline_path: kernel command line file not found"):
        load_config(["--cmdline-path", str(tmp_path / "nope")], {})
    line = tmp_path / "line"
    line.write_text("agent.log=debug")
    config, actions = load_config([], {"KATA_AGENT_CMDLINE_PATH": str(line)})
    assert config.log_level == "debug"
    assert actions.cmdline_path == str(line)


def test_empty_env_value_means_unset(env):
    assert env.load("agent.log=debug", environ={"KATA_AGENT_LOG_LEVEL": ""}).log_level == "debug"


def test_cli_actions_and_errors():
    values, actions = parse_cli(["--print-config", "--version", "--config", "/x.toml", "--trace"])
    assert values == {"tracing": True}
    assert (actions.print_config, actions.version, actions.config_file) == (True, True, "/x.toml")
    values, actions = parse_cli([])
    assert values == {} and not actions.print_config and not actions.version
    with pytest.raises(ConfigError, match="unrecognized arguments"):
        parse_cli(["--no-such-flag"])
    with pytest.raises(ConfigError, match="expected one argument"):
        parse_cli(["--log-level"])


def test_print_config_is_valid_toml_and_round_trips(env, tmp_path):
    config = env.load(
        'agent.log=debug agent.guest_hook_path="/odd dir"',
        environ={"KATA_AGENT_HOTPLUG_TIMEOUT": "7.5", "KATA_AGENT_SHARED_DIR": '/sh"ared\\dir\tx'},
        cli=["--oci-runtime", "runc", "--debug-console"],
    )
    text = format_config(config)
    assert 'log_level = "debug"  # kernel cmdline' in text
    assert "hotplug_timeout = 7.5  # env KATA_AGENT_HOTPLUG_TIMEOUT" in text
    assert 'oci_runtime = "runc"  # cli --oci-runtime' in text
    assert config.guest_hook_path == "/odd dir" and config.shared_dir == '/sh"ared\\dir\tx'
    data = tomllib.loads(text)
    assert set(data) == {o.name for o in OPTIONS}
    saved = tmp_path / "saved.toml"
    saved.write_text(text)
    again, _ = load_config(["--cmdline-path", "/dev/null", "--config", str(saved)], {})
    assert again.replace(config_file="") == config


def test_config_object_helpers():
    c = AgentConfig()
    assert c == AgentConfig() and c.log_level == "info" and c.server_addr == "vsock://-1:1024"
    d = c.replace(log_level="debug")
    assert d.log_level == "debug" and c.log_level == "info" and d.source_of("log_level") == "replace"
    assert d != c and d.debug and not c.debug
    with pytest.raises(TypeError):
        c.replace(bogus=1)
    assert "log_level='info'" in repr(c)


def test_no_argparse_or_tomllib_on_a_plain_boot():
    # The usual guest start has no arguments and no file: neither module gets loaded.
    code = (
        "import sys, json; from agent.config import load_config; "
        "load_config([], {}); "
        "print(json.dumps([m in sys.modules for m in ('argparse', 'tomllib', 'dataclasses', 'logging')]))"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, env=python_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [False, False, False, False]
