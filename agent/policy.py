"""Agent policy: a Rego document consulted before every AgentService call (upstream SetPolicy).

What follows upstream kata-agent (its regorus-based policy module):

- The document's package is ``agent_policy``.  The rule for a call is named
  after its request message: ``CreateContainerRequest``, ``CopyFileRequest``,
  ``ReadStreamRequest`` (ReadStdout and ReadStderr), ``WriteStreamRequest``
  (WriteStdin), ``GuestDetailsRequest``, ``SetPolicyRequest``...
- ``input`` is the request as upstream's serde JSON: every field present under
  its .proto name (Rust keywords get a ``_`` suffix: ``type_``), enums as
  numbers, 64-bit integers as numbers, an unset message field as ``null``, a
  oneof as ``{"field": value}``.  CopyFile is pre-processed as upstream does:
  no ``data``, plus ``file_type`` and ``symlink_target`` (``symlink_src`` for
  older policies).
- A rule that is true allows the call; false, undefined or a failing
  evaluation refuses it with PERMISSION_DENIED (``<Rule> is blocked by
  policy``), except ReadStdout/ReadStderr whose reply comes back with its data
  blanked, so a container whose logs may not be read does not stall on a full
  pipe.  A rule may also answer ``{"allowed": bool, "ops": [JSON patch]}``;
  the ops update ``data.pstate``, the policy's memory between calls.
- ``AllowRequestsFailingPolicy := true`` turns refusals into warnings.
- SetPolicy replaces the document when the current one allows
  ``SetPolicyRequest``; a document that does not compile is INVALID_ARGUMENT
  and the old one stays.

One deliberate difference: ``bytes`` fields are base64 strings (the protobuf
JSON mapping), not arrays of numbers.  rego-cpp parses a 64 KiB array in about
ten seconds (a 4 MiB string in a quarter of one), and a WriteStdin must not
freeze the agent.

The engine is regopy (rego-cpp).  Each document is compiled once into a plan
with one entrypoint per rule: the plain interpreter recompiles the document on
every query (~8 ms for a 40-rule policy) where the plan answers in tens of
microseconds.  This module is imported only when a policy is configured or
SetPolicy is called, so an agent without a policy never loads the engine.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import stat
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from agent import log
from agent.errors import Internal, InvalidArgument, PermissionDenied

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from agent.app import Agent
    from ttrpc.server import CallContext

PACKAGE = "agent_policy"
ALLOW_FAILURES_RULE = "AllowRequestsFailingPolicy"
AGENT_SERVICE = "grpc.AgentService"
#: Methods whose refusal blanks the reply's data instead of failing the call.
BLANKED_METHODS = frozenset({"ReadStdout", "ReadStderr"})

_log = log.logger("policy")
_UNDEFINED = object()
_PACKAGE_LINE = re.compile(rf"^\s*package\s+{PACKAGE}\s*(#.*)?$", re.MULTILINE)
_ERRMSG = re.compile(r"\(errormsg \d+:([^()]*)\)")

# rust-protobuf renames fields that are Rust keywords with a trailing "_", and serde keeps that name.
# fmt: off
_RUST_KEYWORDS = frozenset((
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while", "abstract", "become", "box", "do", "final", "macro", "override", "priv",
    "typeof", "unsized", "virtual", "yield", "try",
))
# fmt: on


class PolicyError(ValueError):
    """The policy document cannot be used (does not compile, engine missing, unreadable)."""


class Decision(NamedTuple):
    allowed: bool
    reason: str = ""


def rule_names() -> list[str]:
    """Every rule the agent may query: one per AgentService request type, and the failure switch."""
    from agent.protocols import agent_pb2

    service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    return sorted({m.input_type.name for m in service.methods} | {ALLOW_FAILURES_RULE})


def _engine() -> Any:
    if "regopy" not in sys.modules:
        _share_libstdcxx()
    try:
        import regopy
    except ImportError as exc:
        raise PolicyError(f"agent policy needs the regopy package: {exc}") from None
    return regopy


def _share_libstdcxx() -> None:
    """Put an already loaded libstdc++ in the global symbol scope before rego-cpp loads.

    librego_shared.so defines its own ``operator new``/``delete``.  protobuf's upb
    extension has loaded libstdc++ privately by then, so libstdc++'s own code keeps the
    C library's allocator while rego-cpp's uses its own; memory crossing the two leaks
    (measured: ~1 KB per query, 5 MB per 5 000 calls).  With libstdc++ global, rego-cpp
    binds to the same allocator.  If libstdc++ is not loaded yet there is nothing to do.
    """
    import ctypes

    try:
        ctypes.CDLL("libstdc++.so.6", mode=os.RTLD_GLOBAL | os.RTLD_NOLOAD)
    except OSError:
        pass


# --- the request as upstream's serde JSON ---------------------------------------------


def _key(name: str) -> str:
    return name + "_" if name in _RUST_KEYWORDS else name


def _scalar(field: Any, value: Any) -> Any:
    if field.type == field.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return None  # serde_json writes NaN and infinities as null
    return value  # enums are plain numbers already


def _value(field: Any, value: Any) -> Any:
    if field.type == field.TYPE_MESSAGE:
        return message_input(value)
    return _scalar(field, value)


def _synthetic(oneof: Any) -> bool:
    """A proto3 ``optional`` field's hidden oneof: serde sees a plain optional field."""
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


def message_input(msg: Message) -> dict[str, Any]:
    """``msg`` shaped as serde serializes rust-protobuf messages (see the module docstring)."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and _synthetic(oneof):
            # proto3 ``optional``: rust-protobuf's Option<T>, null when unset
            present = msg.HasField(field.name)
            out[_key(field.name)] = _scalar(field, getattr(msg, field.name)) if present else None
            continue
        if oneof is not None:
            key = _key(oneof.name)
            if key not in out:
                which = msg.WhichOneof(oneof.name)
                out[key] = None
                if which is not None:
                    chosen = msg.DESCRIPTOR.fields_by_name[which]
                    out[key] = {which: _value(chosen, getattr(msg, which))}
            continue
        value = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            vfield = field.message_type.fields_by_name["value"]
            out[_key(field.name)] = {str(k): _value(vfield, v) for k, v in value.items()}
        elif field.is_repeated:
            out[_key(field.name)] = [_value(field, v) for v in value]
        elif field.type == field.TYPE_MESSAGE:
            out[_key(field.name)] = message_input(value) if msg.HasField(field.name) else None
        else:
            out[_key(field.name)] = _scalar(field, value)
    return out


def _file_type(mode: int) -> str:
    kind = stat.S_IFMT(mode)
    return {stat.S_IFREG: "Regular", stat.S_IFDIR: "Directory", stat.S_IFLNK: "Symlink"}.get(kind, "Unknown")


def copy_file_input(req: Any) -> dict[str, Any]:
    """Upstream's PolicyCopyFileRequest: the file's metadata, never its (possibly large) data."""
    file_type = _file_type(req.file_mode)
    target = None
    if file_type == "Symlink":
        try:
            target = req.data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("CopyFile: invalid symlink content") from None
    return {
        "path": req.path,
        "file_type": file_type,
        "symlink_target": target,
        "symlink_src": target or "",
        "file_size": req.file_size,
        "file_mode": req.file_mode,
        "dir_mode": req.dir_mode,
        "uid": req.uid,
        "gid": req.gid,
        "offset": req.offset,
    }


def request_input(request: Message) -> dict[str, Any]:
    """The ``input`` document for ``request``."""
    if request.DESCRIPTOR.name == "CopyFileRequest":
        return copy_file_input(request)
    return message_input(request)


# --- JSON patch (RFC 6902) on the policy state -------------------------------------------


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def apply_patch(doc: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    """``doc`` after the add/replace/remove/test operations of ``ops`` (a new object)."""
    doc = json.loads(json.dumps(doc))
    for op in ops:
        if not isinstance(op, dict):
            raise ValueError(f"patch operation {op!r} is not an object")
        kind, parts = op.get("op"), _pointer(str(op.get("path", "")))
        parent, last = _walk(doc, parts[:-1]), parts[-1]
        if kind in ("add", "replace"):
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, op["value"])
                else:
                    parent[index] = op["value"]
            else:
                if kind == "replace" and last not in parent:
                    raise ValueError(f"replace: {op['path']} does not exist")
                parent[last] = op["value"]
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind == "test":
            if _walk(doc, parts) != op.get("value"):
                raise ValueError(f"test failed at {op['path']}")
        else:
            raise ValueError(f"unsupported patch operation {kind!r}")
    return doc


# --- one compiled document -----------------------------------------------------------------


class Policy:
    """A compiled policy document and its state (``data.pstate``)."""

    def __init__(self, text: str, source: str = "policy") -> None:
        if not isinstance(text, str) or not text.strip():
            raise PolicyError(f"{source}: the policy document is empty")
        if not _PACKAGE_LINE.search(text):
            # Any other package leaves every rule undefined: the agent would refuse all calls,
            # SetPolicy included, for good.
            raise PolicyError(f"{source}: the policy must declare 'package {PACKAGE}'")
        self.text = text
        self.source = source
        self.rules = rule_names()
        self.state: dict[str, Any] = {"pstate": {}}
        self._compile()
        value = self._evaluate(ALLOW_FAILURES_RULE, "{}")
        self.allow_failures = value is True
        if self.allow_failures:
            _log.warn("AllowRequestsFailingPolicy is set: policy refusals are only logged", source=source)

    def _compile(self) -> None:
        regopy = _engine()
        interp = regopy.Interpreter()
        interp.log_level = regopy.LogLevel.NONE  # errors come back in the exception, not on stdout
        try:
            interp.add_module(PACKAGE, self.text)
            interp.add_data_json(json.dumps(self.state))
            bundle = interp.build(None, [f"{PACKAGE}/{rule}" for rule in self.rules])
        except Exception as exc:  # noqa: BLE001 - regopy reports syntax errors as RegoError
            raise PolicyError(f"{self.source}: the policy does not compile: {_brief(exc)}") from None
        if not bundle.ok():
            raise PolicyError(f"{self.source}: the policy does not compile: {_brief(bundle.node())}")
        self._interp, self._bundle = interp, bundle

    def _evaluate(self, rule: str, input_json: str) -> Any:
        """The rule's value, or _UNDEFINED; raises on an evaluation error."""
        self._interp.set_input_term(input_json)
        out = self._interp.query_bundle_entrypoint(self._bundle, f"{PACKAGE}/{rule}")
        if not out.ok():
            raise ValueError(_brief(out))
        results = out.results
        if not results or not results[0].expressions:
            return _UNDEFINED
        return results[0].expressions[0]

    def decide(self, rule: str, input_doc: object) -> Decision:
        """Ask the document about one call; never raises (a failure refuses the call)."""
        try:
            value = self._evaluate(rule, json.dumps(input_doc, separators=(",", ":")))
            if isinstance(value, dict):
                allowed = value.get("allowed") is True
                ops = value.get("ops")
                if allowed and ops:
                    self._update_state(ops)
                decision = Decision(allowed, "" if allowed else "the rule answered allowed=false")
            elif value is True:
                decision = Decision(True)
            elif value is _UNDEFINED:
                decision = Decision(False, "the rule is not defined")
            elif value is False:
                decision = Decision(False)
            else:
                decision = Decision(False, f"unexpected rule value {value!r}")
        except Exception as exc:  # noqa: BLE001 - any failure refuses (fail closed)
            decision = Decision(False, f"evaluation failed: {_brief(exc)}")
        if not decision.allowed and self.allow_failures:
            _log.warn(
                "policy refusal ignored (AllowRequestsFailingPolicy)", rule=rule, reason=decision.reason
            )
            return Decision(True, decision.reason)
        return decision

    def _update_state(self, ops: Any) -> None:
        if not isinstance(ops, list):
            raise ValueError("ops must be a list of JSON patch operations")
        state = apply_patch(self.state, ops)
        old = self.state
        self.state = state
        try:
            self._compile()  # the plan embeds the data it was built with
        except PolicyError:
            self.state = old
            raise


def _brief(what: object, limit: int = 300) -> str:
    """One line from an engine error: its messages when it is a rego-cpp error tree."""
    text = " ".join(str(what).split())
    messages = _ERRMSG.findall(text)
    if messages:
        text = "; ".join(dict.fromkeys(m.strip() for m in messages))
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- enforcement -----------------------------------------------------------------------------


def _blank(response: Any, code: int, message: str) -> Any:
    if response is None or code:
        return response
    return type(response)()  # ReadStreamResponse with no data


class Enforcer:
    """The server interceptor that asks the current policy before each AgentService call."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __call__(self, ctx: CallContext, request: Any) -> Any:
        if ctx.service != AGENT_SERVICE:
            return None  # Health stays reachable, as upstream
        if request is None:
            raise PermissionDenied(f"{ctx.method}: streaming calls are not covered by the policy")
        rule = request.DESCRIPTOR.name
        decision = self.policy.decide(rule, request_input(request))
        if decision.allowed:
            return None
        if ctx.method in BLANKED_METHODS:
            _log.debug("policy blanks the reply", method=ctx.method, rule=rule, reason=decision.reason)
            return _blank
        _log.warn("policy refused a call", method=ctx.method, rule=rule, reason=decision.reason)
        reason = f": {decision.reason}" if decision.reason else ""
        raise PermissionDenied(f"{rule} is blocked by policy{reason}")


def enforcer(agent: Agent) -> Enforcer | None:
    """The agent's enforcer, if a policy is installed."""
    return next((i for i in agent.server.interceptors if isinstance(i, Enforcer)), None)


def install(agent: Agent, policy: Policy) -> Enforcer:
    """Enforce ``policy`` from now on (the first install adds the interceptor, later ones swap)."""
    current = enforcer(agent)
    if current is not None:
        current.policy = policy
    else:
        current = Enforcer(policy)
        agent.server.interceptors.insert(0, current)  # refuse before any other interceptor works
    _log.info("policy installed", source=policy.source, bytes=len(policy.text))
    return current


def load_file(path: str) -> Policy:
    """Read and compile a policy file; PolicyError (a ValueError) says why it cannot be used."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read the policy file {path}: {exc}") from None
    return Policy(text, source=path)


def install_file(agent: Agent, path: str) -> Enforcer:
    """Start-up: enforce the policy in ``path`` (KATA_AGENT_POLICY_FILE)."""
    return install(agent, load_file(path))


def replace(agent: Agent, text: str) -> None:
    """SetPolicy: compile ``text`` and enforce it; the old policy stays if it does not compile."""
    try:
        policy = Policy(text, source="SetPolicy")
    except PolicyError as exc:
        if "needs the regopy package" in str(exc):
            raise Internal(str(exc)) from None
        raise InvalidArgument(str(exc)) from None
    install(agent, policy)
