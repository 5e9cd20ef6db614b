"""The pod: its containers, storages, shared namespaces, guest hooks, DNS and OOM queue.

One :class:`Sandbox` per agent (an agent component, created on first use), so
containers work even if the runtime never sent CreateSandbox; CreateSandbox
configures it and DestroySandbox tears it all down.

Where things live (a guest's /run is a fresh tmpfs):

* ``/run/kata-containers``: storage mount points (the runtime names them), the
  pinned shared namespaces (``sharedns/``), the pod's ``sandbox/resolv.conf``;
* ``/run/kata-agent/bundles/<id>``: each container's bundle (config.json and
  the runtime's transient files); the rootfs itself stays where ``root.path``
  says (``<shared_dir>/<id>/rootfs`` from the virtio-fs share, or a storage's
  mount point), which must lie under the shared dir or ``/run/kata-containers``;
* ``/run/kata-agent/oci``: the OCI runtime's state (``--root``).

Namespaces: every container gets the pod's UTS and IPC namespaces (pinned at
CreateSandbox) and a PID namespace that is its own, or with CreateContainer's
``sandbox_pidns`` the one of the pod's first container (its "infra" container,
as upstream does when it has no separate pause process; CreateSandbox's flag
is recorded but no pause process is made).
Its cgroup is always an absolute ``cgroupsPath`` (see agent/runtime/cli.py).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent import log
from agent.container import Container
from agent.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from agent.oomevents import OomEvents
from agent.tasks import Steps, task

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.devices.hotplug import DeviceSpec
    from agent.ociruntime import OCIRuntime
    from agent.reaper import Reaper
    from agent.storage import StorageManager, StorageSpec
    from agent.uevents import Uevents
    from ttrpc.loop import Loop

CONTAINER_BASE = "/run/kata-containers"
AGENT_RUN = "/run/kata-agent"
GUEST_DNS_FILE = "/etc/resolv.conf"
HOOK_KINDS = ("prestart", "poststart", "poststop")
MAX_CONTAINERS = 1024
MAX_HOOKS = 64  # per kind
MAX_DNS = 64
_MODULE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_log = log.logger("sandbox")


class Sandbox:
    """The agent's one pod (see the module docstring)."""

    def __init__(
        self,
        loop: Loop,
        config: AgentConfig,
        reaper: Callable[[], Reaper],
        *,
        base: str = CONTAINER_BASE,
        run_dir: str = AGENT_RUN,
        uevents: Callable[[], Uevents] | None = None,
    ) -> None:
        self.loop = loop
        self.config = config
        self._reaper = reaper
        self._uevents = uevents
        self.base = base
        self.bundle_root = os.path.join(run_dir, "bundles")
        self.state_root = os.path.join(run_dir, "oci")
        self.console_dir = os.path.join(run_dir, "console")
        self.containers: dict[str, Container] = {}
        self.oom = OomEvents(loop)
        self.created = False
        self.id = ""
        self.hostname = ""
        self.hooks: dict[str, list[dict[str, Any]]] = {}
        self.shared_ns: dict[str, str] = {}
        self.share_pidns = False
        self.pidns: tuple[Container, str] | None = None  # the infra container and its pid ns
        self.dns_mounted = False
        self._storages: StorageManager | None = None
        self._sandbox_storages: list[str] = []
        self._runtime: OCIRuntime | None = None
        self._console_seq = 0

    @classmethod
    def for_agent(cls, agent: Any) -> Sandbox:
        from agent import uevents

        sandbox = cls(agent.loop, agent.config, lambda: agent.reaper, uevents=lambda: uevents.install(agent))
        agent.on_close(sandbox.close)
        return sandbox

    # -- parts made on first use ----------------------------------------------

    @property
    def reaper(self) -> Reaper:
        return self._reaper()

    @property
    def runtime(self) -> OCIRuntime:
        if self._runtime is None:
            from agent.ociruntime import OCIRuntime

            self._runtime = OCIRuntime(self.loop, self.reaper, self.config.oci_runtime, self.state_root)
        return self._runtime

    def storages(self) -> StorageManager:
        """The storage manager (blocking: call from a worker thread)."""
        os.makedirs(self.base, mode=0o755, exist_ok=True)  # DestroySandbox removes it when empty
        if self._storages is None:
            from agent.storage import StorageManager

            self._storages = StorageManager(self.base)
        return self._storages

    def container(self, container_id: str) -> Container:
        try:
            return self.containers[container_id]
        except KeyError:
            raise NotFound(f"container {container_id} not found") from None

    def console_path(self) -> str:
        """A fresh, short socket path for ``--console-socket`` (ids can be 256 bytes)."""
        if self._console_seq == 0:
            os.makedirs(self.console_dir, mode=0o700, exist_ok=True)
        self._console_seq += 1
        return os.path.join(self.console_dir, f"{self._console_seq}.sock")

    # -- CreateSandbox / DestroySandbox ---------------------------------------

    @task
    def create(
        self,
        *,
        sandbox_id: str,
        hostname: str,
        dns: list[str],
        storages: list[StorageSpec],
        share_pidns: bool,
        hook_path: str,
        modules: list[tuple[str, list[str]]],
    ) -> Steps[None]:
        if self.created:
            raise AlreadyExists(f"sandbox {self.id or '(unnamed)'} already exists")
        _check_hostname(hostname)
        _check_dns(dns)
        for name, _params in modules:
            if not _MODULE_RE.fullmatch(name):
                raise InvalidArgument(f"kernel_modules: {name!r} is not a module name")
        self.created = True
        self.id, self.hostname, self.share_pidns = sandbox_id, hostname, share_pidns
        try:
            for name, params in modules:
                yield self._run_tool(["modprobe", name, *params])
            hook_path = hook_path or self.config.guest_hook_path
            if hook_path and not hook_path.startswith("/"):
                raise InvalidArgument(f"guest_hook_path {hook_path!r} must be an absolute path")
            if hook_path:
                self.hooks = yield self.loop.run_in_thread(find_hooks, hook_path)
            for spec in storages:
                yield from self._provide(spec)
                self._sandbox_storages.append(spec.mount_point)
            from agent import sharedns

            self.shared_ns = yield self.loop.run_in_thread(
                sharedns.create, os.path.join(self.base, "sharedns"), hostname
            )
            if dns:
                yield self.loop.run_in_thread(self._setup_dns, dns)
        except BaseException:
            try:
                yield self.loop.run_in_thread(self._teardown, False)
            except Exception as exc:  # noqa: BLE001 - the first failure is the one to report
                _log.error("undoing a failed CreateSandbox", error=str(exc))
            self._reset()
            raise
        _log.info("sandbox created", sandbox_id=sandbox_id, hostname=hostname)

    def _run_tool(self, argv: list[str]) -> Any:
        from agent.process import spawn
        from agent.tasks import then

        def check(run: Any) -> None:
            run.check()

        return then(spawn(self.loop, self.reaper, argv, timeout=60), check)

    def _acquire(self, spec: StorageSpec) -> None:
        self.storages().acquire(spec)

    def _provide(self, spec: StorageSpec) -> Steps[None]:
        """Set a storage up; a block device is first waited for (on the loop, bounded)."""
        from agent.devices import hotplug

        if spec.driver in hotplug.BLOCK_TYPES:
            sysfs = self.config.sysfs_root
            spec = yield hotplug.resolve_storage(self.uevents(), spec, sysfs_root=sysfs)
            yield self.loop.run_in_thread(self._acquire_block, spec)
        else:
            yield self.loop.run_in_thread(self._acquire, spec)

    def _acquire_block(self, spec: StorageSpec) -> None:
        from agent.devices import blockstorage, hotplug  # noqa: F401 - registers the block drivers

        hotplug.check_storage_node(spec, sysfs_root=self.config.sysfs_root)
        self.storages().acquire(spec)

    def uevents(self) -> Uevents | None:
        """The agent's uevent component (None for a sandbox made without an agent)."""
        return self._uevents() if self._uevents is not None else None

    def _setup_dns(self, dns: list[str]) -> None:
        """The pod's resolv.conf; as the guest's init, also bind it over /etc/resolv.conf."""
        directory = os.path.join(self.base, "sandbox")
        os.makedirs(directory, mode=0o755, exist_ok=True)
        path = os.path.join(directory, "resolv.conf")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(line.strip() + "\n" for line in dns))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        if os.getpid() == 1 and os.path.isfile(GUEST_DNS_FILE):
            from agent.storage import MS_BIND, mount

            mount(path, GUEST_DNS_FILE, None, MS_BIND)
            self.dns_mounted = True

    @task
    def destroy(self) -> Steps[None]:
        """Remove every container, release every storage, unpin the namespaces."""
        for container in list(self.containers.values()):
            try:
                yield container.remove(None)
            except Exception as exc:  # noqa: BLE001 - tear down the rest regardless
                _log.error("container removal failed", container_id=container.id, error=str(exc))
            for proc in container.processes.values():
                proc.close()
            self.containers.pop(container.id, None)
        try:
            yield self.loop.run_in_thread(self._teardown, True)
        finally:
            _log.info("sandbox destroyed", sandbox_id=self.id)
            self._reset()

    def _reset(self) -> None:
        self.created = False
        self.id = self.hostname = ""
        self.hooks = {}
        self.share_pidns = False
        self.pidns = None

    def _teardown(self, everything: bool) -> None:
        """Unmount the pod's resolv.conf, unpin its namespaces, release storages (blocking).

        ``everything``: every storage (DestroySandbox); else only the sandbox's own
        (undoing a failed CreateSandbox). Every step runs even if one fails; the
        first failure is raised at the end.
        """
        errors: list[Exception] = []

        def attempt(fn: Callable[..., Any], *args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - collected, the first is raised
                _log.warn("sandbox teardown step failed", error=str(exc))
                errors.append(exc)

        if self.dns_mounted:
            attempt(self._undo_dns)
        attempt(self._unpin)
        if everything:
            if self._storages is not None:
                attempt(self._storages.release_all)
        else:
            for mount_point in reversed(self._sandbox_storages):
                attempt(self.storages().release, mount_point)
        self._sandbox_storages = []
        try:
            os.rmdir(self.base)  # only if empty: others may use it
        except OSError:
            pass
        if errors:
            raise errors[0]

    def _undo_dns(self) -> None:
        from agent.storage import MNT_DETACH, umount

        self.dns_mounted = False
        umount(GUEST_DNS_FILE, MNT_DETACH)

    def _unpin(self) -> None:
        """Unpin the shared namespaces (containers already in them keep them alive)."""
        from agent import sharedns

        paths, self.shared_ns = list(self.shared_ns.values()), {}
        if paths:
            sharedns.remove(paths)
            try:
                os.rmdir(os.path.dirname(paths[0]))
            except OSError:
                pass

    def close(self) -> None:
        """Agent shutdown: drop our fds and pins; containers are left to the VM's end."""
        self.oom.close()
        for container in self.containers.values():
            for proc in container.processes.values():
                proc.close()
        try:
            self._unpin()
        except OSError as exc:
            _log.warn("cannot unpin the sandbox's namespaces", error=str(exc))

    # -- containers -----------------------------------------------------------

    @task
    def create_container(
        self,
        container_id: str,
        exec_id: str,
        spec: dict[str, Any],
        storages: list[StorageSpec],
        share_pidns: bool,
        timeout: float | None,
        devices: list[DeviceSpec] | None = None,
    ) -> Steps[None]:
        from agent.validation import validate_spec

        if container_id in self.containers:
            raise AlreadyExists(f"container {container_id} already exists")
        if len(self.containers) >= MAX_CONTAINERS:
            raise ResourceExhausted(f"the sandbox already has {MAX_CONTAINERS} containers")
        validate_spec(spec)
        spec = self._container_spec(container_id, spec, share_pidns)
        container = Container(self, container_id, exec_id, os.path.join(self.bundle_root, container_id))
        self.containers[container_id] = container
        try:
            for storage in storages:
                yield from self._provide(storage)
                container.storages.append(storage.mount_point)
            if devices:
                spec = yield from self._add_devices(spec, devices)
            container.spec = yield self.loop.run_in_thread(self._write_bundle, container, spec)
            yield container.create(timeout)
        except BaseException as exc:
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            for proc in container.processes.values():  # a WaitProcess may already be pending
                proc.abandon(f"container {container_id} was not created: {reason}")
            yield from self._undo_create(container)
            raise
        if self.pidns is None and container.init.alive:  # alive: its pid cannot have been reused
            self.pidns = (container, f"{self.config.proc_root}/{container.init.pid}/ns/pid")
        try:
            yield self.loop.run_in_thread(self._watch, container)
        except Exception as exc:  # noqa: BLE001 - the container runs; only OOM reports are lost
            _log.warn("no OOM watch", container_id=container_id, error=str(exc))
        _log.info("container created", container_id=container_id, init_pid=container.init.pid)

    def _add_devices(self, spec: dict[str, Any], devices: list[DeviceSpec]) -> Steps[dict[str, Any]]:
        """Wait for each device, then map the spec's devices to the guest's numbers."""
        from agent.devices import hotplug

        sysfs = self.config.sysfs_root
        nodes = []
        for device in devices:
            node = yield hotplug.resolve_device(self.uevents(), device, sysfs_root=sysfs)
            nodes.append((device, node))
        return (yield self.loop.run_in_thread(hotplug.apply_devices, spec, nodes, sysfs))

    def _container_spec(self, container_id: str, spec: dict[str, Any], share_pidns: bool) -> dict[str, Any]:
        """The spec as the runtime must see it in this guest (namespaces, cgroup, hooks)."""
        spec = dict(spec)
        linux = spec["linux"] = dict(spec.get("linux") or {})
        linux["cgroupsPath"] = cgroups_path(linux.get("cgroupsPath", ""), container_id)
        namespaces = [dict(ns) for ns in linux.get("namespaces") or () if ns.get("type") != "pid"]
        for ns in namespaces:
            if ns.get("type") in self.shared_ns and not ns.get("path"):
                ns["path"] = self.shared_ns[ns["type"]]
        pid_ns: dict[str, str] = {"type": "pid"}
        if share_pidns and self.pidns is not None:
            pid_ns["path"] = self.pidns[1]
        linux["namespaces"] = [*namespaces, pid_ns]
        if self.hooks:
            hooks = dict(spec.get("hooks") or {})
            for kind, entries in self.hooks.items():
                hooks[kind] = [*(hooks.get(kind) or ()), *entries]
            spec["hooks"] = hooks
        return spec

    def _write_bundle(self, container: Container, spec: dict[str, Any]) -> dict[str, Any]:
        """Resolve the rootfs, check mount destinations in it, write config.json (blocking)."""
        from agent.runtime.bundle import write_config
        from agent.validation import validate_mount_destinations

        rootfs = self.resolve_rootfs(container.id, spec["root"]["path"])
        validate_mount_destinations(spec.get("mounts") or (), rootfs)
        spec["root"] = {**spec["root"], "path": rootfs}
        os.makedirs(self.bundle_root, mode=0o700, exist_ok=True)
        os.makedirs(container.bundle, mode=0o700, exist_ok=True)
        write_config(container.bundle, spec)
        return spec

    def resolve_rootfs(self, container_id: str, root: str) -> str:
        """``root.path`` in the guest: under the shared dir or the container base, a directory."""
        shared = self.config.shared_dir
        path = root if root.startswith("/") else os.path.join(shared, container_id, root)
        real = os.path.realpath(path)
        if not any(_beneath(real, os.path.realpath(top)) for top in (shared, self.base)):
            raise InvalidArgument(f"root.path {root!r} is outside {shared} and {self.base}")
        if not os.path.isdir(real):
            raise NotFound(f"root.path {root!r} not found (no such directory)")
        return real

    def _watch(self, container: Container) -> None:
        """Find the container's cgroup and register its OOM watch (blocking: cgroup writes)."""
        from agent import cgroups

        root = self.config.cgroup_root
        try:
            container.cgroup = cgroups.cgroup_of_pid(container.init.pid, root, self.config.proc_root)
        except NotFound:  # already reaped: trust the path we gave the runtime
            container.cgroup = cgroups.open_cgroup(container.spec["linux"]["cgroupsPath"], root)
        watch = cgroups.watch_oom(container.cgroup)
        self.loop.call_soon_threadsafe(self._register_watch, container, watch)

    def _register_watch(self, container: Container, watch: Any) -> None:
        if self.containers.get(container.id) is container and container.removing is None:
            self.oom.watch(container.id, watch)
        else:
            watch.close()

    def _undo_create(self, container: Container) -> Steps[None]:
        """A failed CreateContainer leaves nothing behind (a half-made runtime container included)."""
        from agent.ociruntime import RuntimeFailed

        if container.init.pid or os.path.exists(os.path.join(self.state_root, container.id)):
            try:
                yield self.runtime.call(self.runtime.cli.delete(container.id, force=True), container.id)
            except RuntimeFailed:
                pass
        for proc in container.processes.values():
            proc.close()
        yield from self.release_container(container)

    def release_container(self, container: Container) -> Steps[None]:
        """Drop a removed container: its storages, its bundle, its entry."""
        if self.containers.get(container.id) is container:
            del self.containers[container.id]
        if self.pidns is not None and self.pidns[0] is container:
            self.pidns = None
        yield self.loop.run_in_thread(self._release_files, container)

    def _release_files(self, container: Container) -> None:
        for mount_point in reversed(container.storages):
            try:
                self.storages().release(mount_point)
            except Exception as exc:  # noqa: BLE001 - release the rest
                _log.warn("storage release failed", mount_point=mount_point, error=str(exc))
        container.storages = []
        shutil.rmtree(container.bundle, ignore_errors=True)

    def on_init_exit(self, container: Container) -> None:
        """A container's init is gone: its PID namespace can no longer be joined."""
        if self.pidns is not None and self.pidns[0] is container:
            self.pidns = None

    # -- misc RPCs ------------------------------------------------------------

    def stale_share_mounts(self) -> int:
        """RemoveStaleVirtiofsShareMounts: stat every mount under the share (blocking).

        A stat of a mount whose host directory is gone lets virtiofsd drop its
        stale inode and release the host fds, as upstream does.
        """
        from agent.storage import mount_points

        shared = os.path.realpath(self.config.shared_dir)
        count = 0
        for point in mount_points():
            if _beneath(point, shared) and point != shared:
                count += 1
                try:
                    os.stat(point)
                except OSError:
                    pass
        return count

    def update_ephemeral(self, storages: list[StorageSpec]) -> None:
        """UpdateEphemeralMounts: remount tmpfs storages of the pod with new options (blocking)."""
        from agent.storage import MS_REMOUNT, mount, parse_mount_options

        manager = self.storages()
        for spec in storages:
            if spec.driver != "ephemeral" and spec.fstype != "tmpfs":
                raise InvalidArgument(f"storage {spec.mount_point!r}: only ephemeral (tmpfs) storages update")
            if manager.refcount(spec.mount_point) == 0:
                raise NotFound(f"ephemeral storage {spec.mount_point!r} not found")
            opts = parse_mount_options(spec.options)
            path = os.path.normpath(os.path.join(manager.mount_root, spec.mount_point))
            try:
                mount("tmpfs", path, "tmpfs", opts.flags | MS_REMOUNT, opts.data)
            except OSError as exc:
                raise InvalidArgument(f"remounting {spec.mount_point!r}: {exc.strerror}") from None


def cgroups_path(given: str, container_id: str) -> str:
    """An absolute cgroupfs path: '' -> /kata/<id>; systemd ``slice:prefix:name`` flattened."""
    if not given:
        return f"/kata/{container_id}"
    if given.count(":") == 2 and not given.startswith("/"):
        slice_, prefix, name = given.split(":")
        leaf = f"{prefix}-{name}" if prefix else name
        given = "/".join(p for p in (slice_, leaf) if p)
    parts = [p for p in given.split("/") if p not in ("", ".")]
    if ".." in parts or not parts or any("\0" in p for p in parts):
        raise InvalidArgument(f"linux.cgroupsPath {given!r} is not a usable cgroup path")
    return "/" + "/".join(parts)


def find_hooks(path: str) -> dict[str, list[dict[str, Any]]]:
    """Guest OCI hooks under ``path/{prestart,poststart,poststop}``: regular executables only."""
    import stat

    hooks: dict[str, list[dict[str, Any]]] = {}
    for kind in HOOK_KINDS:
        try:
            entries = sorted(os.scandir(os.path.join(path, kind)), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
                continue
            found = hooks.setdefault(kind, [])
            if len(found) >= MAX_HOOKS:
                raise ResourceExhausted(f"more than {MAX_HOOKS} {kind} hooks in {path}")
            found.append({"path": entry.path, "args": [entry.name, kind]})
    return hooks


def _check_hostname(hostname: str) -> None:
    if len(hostname) > 64 or any(c in hostname for c in "/\0 \t\n"):
        raise InvalidArgument(f"hostname {hostname[:80]!r} is not a valid host name")


def _check_dns(dns: list[str]) -> None:
    if len(dns) > MAX_DNS:
        raise InvalidArgument(f"dns has {len(dns)} entries, more than {MAX_DNS}")
    for i, line in enumerate(dns):
        if len(line) > 256 or any(c in line for c in "\0\n\r"):
            raise InvalidArgument(f"dns[{i}] {line[:80]!r} is not one resolv.conf line")


def _beneath(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")
