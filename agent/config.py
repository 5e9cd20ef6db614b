"""Agent configuration: upstream Kata option names, layered sources, provenance.

Precedence, lowest first: defaults < TOML file (``--config FILE`` or
``agent.config_file=`` on the kernel command line) < kernel command line
(``/proc/cmdline``) < ``KATA_AGENT_*`` environment < CLI flags.  Every value
remembers the source that set it, so ``kata-agent --print-config`` can say why
a value is what it is.  Unknown kernel command-line tokens are ignored (the
kernel line is shared with the kernel and systemd); a malformed value for a
known option raises :class:`ConfigError` naming the option and its source.

This module is imported at every agent start, so it deliberately avoids
``dataclasses`` (which drags in ``inspect``, ~0.8 MB resident), ``argparse``
(only loaded when there are CLI arguments) and ``tomllib`` (only loaded when a
config file is given).
"""

from __future__ import annotations

import os

from agent.log import normalize_level

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

DEFAULT_CMDLINE_PATH = "/proc/cmdline"
ENV_PREFIX = "KATA_AGENT_"
CONFIG_FILE_CMDLINE_KEY = "agent.config_file"
CONFIG_FILE_ENV = "KATA_AGENT_CONFIG_FILE"
CMDLINE_PATH_ENV = "KATA_AGENT_CMDLINE_PATH"

_TRUE = frozenset(("1", "true", "yes", "on", "y", "t"))
_FALSE = frozenset(("0", "false", "no", "off", "n", "f"))
_U32 = 0xFFFFFFFF
_I32 = 0x7FFFFFFF


class ConfigError(Exception):
    """A configuration value could not be used; the message names option and source."""

    def __init__(self, option: str, source: str, message: str) -> None:
        super().__init__(f"{option}: {message} (from {source})")
        self.option = option
        self.source = source


# --- value parsers: raw value (str from text sources, typed from TOML/CLI) -> value.
# Each raises ValueError with a short reason; the loader adds option and source.


def _parse_bool(raw: object) -> bool:
    if raw is None:  # a bare kernel flag such as ``agent.debug_console``
        return True
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int):
        return raw != 0
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        if text.isdigit():  # upstream accepts any integer, non-zero meaning true
            return int(text) != 0
    raise ValueError("expected a boolean (true/false, 1/0, yes/no, on/off)")


def _int_in(raw: object, low: int, high: int, what: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ValueError(f"expected {what}")
    try:
        value = int(raw.strip(), 10) if isinstance(raw, str) else raw
    except ValueError:
        raise ValueError(f"expected {what}") from None
    if not low <= value <= high:
        raise ValueError(f"expected {what}, between {low} and {high}")
    return value


def _parse_port(raw: object) -> int:
    """A vsock port; 0 means "not used" (upstream ignores non-positive ports)."""
    return _int_in(raw, 0, _U32, "a vsock port number")


def _parse_pipe_size(raw: object) -> int:
    """F_SETPIPE_SZ size in bytes; 0 keeps the kernel default."""
    return _int_in(raw, 0, _I32, "a non-negative pipe size in bytes")


def _parse_seconds(raw: object) -> float:
    """Seconds as upstream accepts them (integer), plus decimals, ``s``/``ms`` suffixes
    and the ``{secs, nanos}`` table serde writes for a Rust Duration."""
    if isinstance(raw, dict):
        try:
            value = float(raw.get("secs", 0)) + float(raw.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            raise ValueError("expected {secs = N, nanos = N}") from None
    elif isinstance(raw, bool) or raw is None:
        raise ValueError("expected a number of seconds")
    elif isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        text, scale = raw.strip().lower(), 1.0
        if text.endswith("ms"):
            text, scale = text[:-2], 1e-3
        elif text.endswith("s"):
            text = text[:-1]
        try:
            value = float(text) * scale
        except ValueError:
            raise ValueError("expected a number of seconds") from None
    else:
        raise ValueError("expected a number of seconds")
    if not 0 < value < 1e9:  # also rejects NaN
        raise ValueError("expected a positive number of seconds")
    return value


def _parse_level(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("expected a log level name")
    return normalize_level(raw)


def _parse_server_addr(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("expected an address string")
    addr = raw.strip()
    if addr.startswith("vsock://"):
        cid, sep, port = addr[8:].rpartition(":")
        try:
            ok = sep and int(cid) >= -1 and 0 <= int(port) <= _U32
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("expected vsock://CID:PORT (CID -1 means any)")
        return addr
    if addr.startswith("unix://"):
        path = addr[7:]
        if not (path.startswith("/") or (path.startswith("@") and len(path) > 1)):
            raise ValueError("expected unix:///absolute/path or unix://@abstract-name")
        return addr
    raise ValueError("expected vsock://CID:PORT or unix://PATH")


def _parse_optional_addr(raw: object) -> str:
    """An address as for server_addr, or "" for the option's vsock default."""
    if raw == "":
        return ""
    return _parse_server_addr(raw)


def _parse_runtime(raw: object) -> str:
    if raw not in ("crun", "runc"):
        raise ValueError("expected crun or runc")
    return raw  # type: ignore[return-value]


def _parse_abspath(raw: object) -> str:
    if not isinstance(raw, str) or not raw.startswith("/"):
        raise ValueError("expected an absolute path")
    return os.path.normpath(raw)


def _parse_optional_path(raw: object) -> str:
    return "" if raw == "" else _parse_abspath(raw)


def _parse_controllers(raw: object) -> str:
    """``cgroup_no_v1``: the kernel's list (``all`` or controller names)."""
    if not isinstance(raw, str) or any(c.isspace() for c in raw):
        raise ValueError("expected 'all' or a comma-separated controller list")
    return raw


class Option:
    """One option: its field name, default, parser and spellings in each source."""

    __slots__ = ("name", "default", "parse", "cmdline", "aliases", "flags", "help")

    def __init__(
        self,
        name: str,
        default: object,
        parse: Callable[[object], object],
        cmdline: tuple[str, ...],
        help: str,
        aliases: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.default = default
        self.parse = parse
        self.cmdline = cmdline  # kernel command-line keys
        self.aliases = aliases  # extra TOML keys and CLI flag spellings
        self.flags = tuple("--" + n.replace("_", "-") for n in (name, *aliases))
        self.help = help

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def is_bool(self) -> bool:
        return self.parse is _parse_bool


OPTIONS: tuple[Option, ...] = (
    Option("debug_console", False, _parse_bool, ("agent.debug_console",), "start a debug console"),
    Option(
        "dev_mode",
        False,
        _parse_bool,
        ("agent.devmode",),
        "developer mode (core dumps allowed)",
        ("devmode",),
    ),
    Option(
        "log_level",
        "info",
        _parse_level,
        ("agent.log",),
        "trace, debug, info, warn, error or critical",
        ("log",),
    ),
    Option(
        "server_addr",
        "vsock://-1:1024",
        _parse_server_addr,
        ("agent.server_addr",),
        "listen address: vsock://CID:PORT or unix://PATH",
    ),
    Option(
        "hotplug_timeout",
        3.0,
        _parse_seconds,
        ("agent.hotplug_timeout",),
        "seconds to wait for a hot-plugged device",
    ),
    Option(
        "debug_console_vport",
        0,
        _parse_port,
        ("agent.debug_console_vport",),
        "vsock port of the debug console (0: off)",
    ),
    Option("log_vport", 0, _parse_port, ("agent.log_vport",), "vsock port to serve logs on (0: stderr)"),
    Option(
        "debug_console_addr",
        "",
        _parse_optional_addr,
        ("agent.debug_console_addr",),
        "debug console address instead of vsock debug_console_vport (e.g. unix:///run/console.sock)",
    ),
    Option(
        "log_addr",
        "",
        _parse_optional_addr,
        ("agent.log_addr",),
        "address to serve logs on instead of vsock log_vport (e.g. unix:///run/log.sock)",
    ),
    Option(
        "trace_addr",
        "",
        _parse_optional_addr,
        ("agent.trace_addr",),
        "trace collector to dial ('': vsock://2:10240, the host's trace forwarder)",
    ),
    Option(
        "container_pipe_size",
        0,
        _parse_pipe_size,
        ("agent.container_pipe_size",),
        "container stdio pipe size in bytes (0: kernel default)",
    ),
    Option("tracing", False, _parse_bool, ("agent.trace",), "enable tracing", ("trace",)),
    Option(
        "cgroup_no_v1",
        "",
        _parse_controllers,
        ("cgroup_no_v1",),
        "cgroup v1 controllers disabled by the kernel ('all' selects cgroup v2)",
    ),
    Option(
        "unified_cgroup_hierarchy",
        False,
        _parse_bool,
        ("systemd.unified_cgroup_hierarchy", "agent.unified_cgroup_hierarchy"),
        "use cgroup v2 (the unified hierarchy)",
    ),
    Option("oci_runtime", "crun", _parse_runtime, ("agent.oci_runtime",), "OCI runtime: crun or runc"),
    Option(
        "shared_dir",
        "/run/kata-containers/shared/containers",
        _parse_abspath,
        ("agent.shared_dir",),
        "directory shared with the host for containers",
    ),
    Option("sysfs_root", "/sys", _parse_abspath, ("agent.sysfs_root",), "where sysfs is mounted"),
    Option("proc_root", "/proc", _parse_abspath, ("agent.proc_root",), "where procfs is mounted"),
    Option(
        "cgroup_root",
        "/sys/fs/cgroup",
        _parse_abspath,
        ("agent.cgroup_root",),
        "where the cgroup hierarchy is mounted",
    ),
    Option(
        "guest_hook_path",
        "",
        _parse_optional_path,
        ("agent.guest_hook_path",),
        "directory of guest OCI hooks ('' : none)",
    ),
    Option(
        "policy_file",
        "",
        _parse_optional_path,
        ("agent.policy_file",),
        "Rego policy checked before every AgentService call ('': none)",
    ),
)

_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
_BY_TOML_KEY: dict[str, Option] = {k: o for o in OPTIONS for k in (o.name, *o.aliases)}
_BY_CMDLINE_KEY: dict[str, Option] = {k: o for o in OPTIONS for k in o.cmdline}


class AgentConfig:
    """The agent's settings, with the source of each value in ``sources``.

    A slotted class rather than a ``@dataclass``: same shape, without the
    import cost (see the module docstring).  ``replace`` and ``as_dict`` cover
    what ``dataclasses.replace``/``asdict`` would be used for.
    """

    debug_console: bool
    dev_mode: bool
    log_level: str
    server_addr: str
    hotplug_timeout: float
    debug_console_vport: int
    log_vport: int
    debug_console_addr: str
    log_addr: str
    trace_addr: str
    container_pipe_size: int
    tracing: bool
    cgroup_no_v1: str
    unified_cgroup_hierarchy: bool
    oci_runtime: str
    shared_dir: str
    sysfs_root: str
    proc_root: str
    cgroup_root: str
    guest_hook_path: str
    policy_file: str
    config_file: str
    sources: dict[str, str]

    __slots__ = (
        "debug_console",
        "dev_mode",
        "log_level",
        "server_addr",
        "hotplug_timeout",
        "debug_console_vport",
        "log_vport",
        "debug_console_addr",
        "log_addr",
        "trace_addr",
        "container_pipe_size",
        "tracing",
        "cgroup_no_v1",
        "unified_cgroup_hierarchy",
        "oci_runtime",
        "shared_dir",
        "sysfs_root",
        "proc_root",
        "cgroup_root",
        "guest_hook_path",
        "policy_file",
        "config_file",
        "sources",
    )

    def __init__(self, **values: object) -> None:
        """Defaults, overridden by already-parsed ``values`` (sourced as "init")."""
        self.sources = {}
        self.config_file = ""
        for opt in OPTIONS:
            setattr(self, opt.name, opt.default)
            self.sources[opt.name] = "default"
        for name, value in values.items():
            if name not in _BY_NAME and name != "config_file":
                raise TypeError(f"unknown option {name!r}")
            setattr(self, name, value)
            self.sources[name] = "init"

    def set(self, name: str, raw: object, source: str) -> None:
        """Parse ``raw`` for option ``name`` and record ``source``; raises ConfigError."""
        opt = _BY_NAME[name]
        try:
            value = opt.parse(raw)
        except ValueError as exc:
            shown = "(no value)" if raw is None else repr(raw)
            raise ConfigError(name, source, f"invalid value {shown}: {exc}") from None
        setattr(self, name, value)
        self.sources[name] = source

    def source_of(self, name: str) -> str:
        return self.sources.get(name, "default")

    @property
    def cgroup_v2(self) -> bool:
        """True when the guest must use cgroup v2 (the unified hierarchy)."""
        return self.unified_cgroup_hierarchy or "all" in self.cgroup_no_v1.split(",")

    @property
    def debug(self) -> bool:
        return self.dev_mode or self.log_level in ("debug", "trace")

    def as_dict(self) -> dict[str, object]:
        """Option values by name (plus ``config_file``), in declaration order."""
        out: dict[str, object] = {o.name: getattr(self, o.name) for o in OPTIONS}
        out["config_file"] = self.config_file
        return out

    def replace(self, **changes: object) -> AgentConfig:
        """A copy with already-parsed ``changes`` applied (sourced as "replace")."""
        new = AgentConfig()
        for name, value in self.as_dict().items():
            setattr(new, name, value)
        new.sources = dict(self.sources)
        for name, value in changes.items():
            if name not in _BY_NAME and name != "config_file":
                raise TypeError(f"unknown option {name!r}")
            setattr(new, name, value)
            new.sources[name] = "replace"
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AgentConfig):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"AgentConfig({inner})"


class Actions:
    """What the command line asks for besides settings, and where config came from."""

    __slots__ = ("print_config", "version", "config_file", "cmdline_path")

    def __init__(self) -> None:
        self.print_config = False
        self.version = False
        self.config_file: str | None = None  # from --config
        self.cmdline_path: str | None = None  # from --cmdline-path

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"Actions({inner})"


# --- sources ------------------------------------------------------------------


def split_cmdline(text: str) -> list[str]:
    """Split a kernel command line into parameters like the kernel does.

    Double quotes group spaces (``a="b c"``) and are dropped; ``--`` ends the
    kernel's parameters (what follows belongs to init's argv).
    """
    tokens: list[str] = []
    cur: list[str] = []
    quoted = started = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                token = "".join(cur)
                if token == "--":
                    return tokens
                tokens.append(token)
                cur, started = [], False
        else:
            cur.append(ch)
            started = True
    if started and "".join(cur) != "--":
        tokens.append("".join(cur))
    return tokens


def parse_cmdline(text: str) -> list[tuple[str, str, str | None]]:
    """Known settings on a kernel command line as ``(option, key, raw)``, in order.

    ``raw`` is None for a bare token (``agent.devmode``); unknown tokens are
    skipped.  ``agent.config_file`` is reported with option ``config_file``.
    """
    found: list[tuple[str, str, str | None]] = []
    for token in split_cmdline(text):
        key, sep, value = token.partition("=")
        raw = value if sep else None
        if key == CONFIG_FILE_CMDLINE_KEY:
            found.append(("config_file", key, raw))
        elif key in _BY_CMDLINE_KEY:
            found.append((_BY_CMDLINE_KEY[key].name, key, raw))
    return found


def _read_cmdline(path: str, explicit: bool) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except FileNotFoundError:
        # /proc may not be mounted yet (PID 1 before mount_base): no kernel options.
        if explicit:
            raise ConfigError("cmdline_path", path, "kernel command line file not found") from None
        return ""
    except OSError as exc:
        raise ConfigError("cmdline_path", path, f"cannot read: {exc.strerror}") from None


def _load_file(config: AgentConfig, path: str, how: str) -> None:
    """Apply a TOML config file (upstream keys; unknown keys are ignored)."""
    import tomllib  # only paid for when a file is actually used

    source = f"config file {path}"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("config_file", how, f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config_file", how, f"{path} is not valid TOML: {exc}") from None
    for key, raw in data.items():
        opt = _BY_TOML_KEY.get(key)
        if opt is not None:
            config.set(opt.name, raw, f"{source} ({key})")
    config.config_file = path
    config.sources["config_file"] = how


# --- the command line ---------------------------------------------------------


def _make_parser():  # -> argparse.ArgumentParser, annotated loosely to keep argparse lazy
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str):  # type: ignore[override]
            raise ConfigError("command line", "cli", message)

    p = _Parser(prog="kata-agent", description="Kata Containers guest agent (Python, ttRPC)")
    p.add_argument("-c", "--config", metavar="FILE", help="TOML configuration file")
    p.add_argument(
        "--cmdline-path",
        metavar="FILE",
        help=f"kernel command line to read (default {DEFAULT_CMDLINE_PATH})",
    )
    p.add_argument("--print-config", action="store_true", help="print the configuration and exit")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    for opt in OPTIONS:
        if opt.is_bool:
            p.add_argument(*opt.flags, dest=opt.name, action=argparse.BooleanOptionalAction, help=opt.help)
        else:
            metavar = "SECONDS" if opt.parse is _parse_seconds else opt.name.upper()
            p.add_argument(*opt.flags, dest=opt.name, metavar=metavar, help=opt.help)
    return p


def parse_cli(argv: Sequence[str]) -> tuple[dict[str, object], Actions]:
    """Parse CLI arguments into raw per-option values (unparsed) and the actions.

    With no arguments (the usual guest boot) argparse is not even imported.
    Raises ConfigError for unknown flags or missing flag values.
    """
    actions = Actions()
    if not argv:
        return {}, actions
    ns = _make_parser().parse_args(list(argv))
    actions.print_config = ns.print_config
    actions.version = ns.version
    actions.config_file = ns.config
    actions.cmdline_path = ns.cmdline_path
    values = {o.name: getattr(ns, o.name) for o in OPTIONS if getattr(ns, o.name) is not None}
    return values, actions


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[AgentConfig, Actions]:
    """Build the configuration from every source; raises ConfigError on bad values.

    ``argv`` excludes the program name (default ``sys.argv[1:]``); ``environ``
    defaults to ``os.environ``.  A malformed value is an error even when a
    higher-precedence source overrides it: the kernel line or file is wrong.
    """
    if argv is None:
        import sys

        argv = sys.argv[1:]
    if environ is None:
        environ = os.environ
    cli_values, actions = parse_cli(argv)
    config = AgentConfig()

    explicit = actions.cmdline_path or environ.get(CMDLINE_PATH_ENV) or None
    cmdline_path = explicit or DEFAULT_CMDLINE_PATH
    actions.cmdline_path = cmdline_path
    cmdline = parse_cmdline(_read_cmdline(cmdline_path, explicit is not None))

    # Where the file comes from follows the same precedence as the values.
    file_path, file_how = None, ""
    for _, key, raw in (t for t in cmdline if t[0] == "config_file"):
        if not raw:
            raise ConfigError("config_file", f"kernel cmdline {cmdline_path} ({key})", "missing path")
        file_path, file_how = raw, f"kernel cmdline {cmdline_path} ({key})"
    if environ.get(CONFIG_FILE_ENV):
        file_path, file_how = environ[CONFIG_FILE_ENV], f"env {CONFIG_FILE_ENV}"
    if actions.config_file:
        file_path, file_how = actions.config_file, "cli --config"
    if file_path:
        _load_file(config, file_path, file_how)
    actions.config_file = file_path

    for name, key, raw in cmdline:
        if name != "config_file":
            config.set(name, raw, f"kernel cmdline {cmdline_path} ({key})")

    for opt in OPTIONS:
        raw = environ.get(opt.env)
        if raw:  # empty means unset, as for most tools
            config.set(opt.name, raw, f"env {opt.env}")

    for name, raw in cli_values.items():
        config.set(name, raw, f"cli {_BY_NAME[name].flags[0]}")
    return config, actions


# --- printing -----------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def format_config(config: AgentConfig) -> str:
    """The configuration as TOML, each line commented with its source.

    The output is itself a valid config file (``config_file`` is a comment).
    """
    lines = ["# kata-agent configuration: value  # source"]
    for name, value in config.as_dict().items():
        line = f"{name} = {_toml_value(value)}  # {config.source_of(name)}"
        lines.append(("# " + line) if name == "config_file" else line)
    return "\n".join(lines) + "\n"
