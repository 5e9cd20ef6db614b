"""Which module implements each AgentService method.

Handlers are looked up on the first call, so a capability's code (and what
it imports) is loaded only when the runtime first uses it: the idle agent
holds the core and nothing else.  A module or function that does not exist
answers UNIMPLEMENTED with the method's name.

A handler is ``fn(agent, request, ctx)`` returning the reply message or a
``Future`` of it.
"""

from __future__ import annotations

CONTAINERS = "agent.service.containers"
NETWORK = "agent.service.network"
GUEST = "agent.service.guest"
POLICY = "agent.service.policy"

#: method name -> (module, function)
ROUTES: dict[str, tuple[str, str]] = {
    # sandbox and containers (issue: containers)
    "CreateSandbox": (CONTAINERS, "create_sandbox"),
    "DestroySandbox": (CONTAINERS, "destroy_sandbox"),
    "CreateContainer": (CONTAINERS, "create_container"),
    "StartContainer": (CONTAINERS, "start_container"),
    "RemoveContainer": (CONTAINERS, "remove_container"),
    "ExecProcess": (CONTAINERS, "exec_process"),
    "SignalProcess": (CONTAINERS, "signal_process"),
    "WaitProcess": (CONTAINERS, "wait_process"),
    "UpdateContainer": (CONTAINERS, "update_container"),
    "UpdateEphemeralMounts": (CONTAINERS, "update_ephemeral_mounts"),
    "StatsContainer": (CONTAINERS, "stats_container"),
    "PauseContainer": (CONTAINERS, "pause_container"),
    "ResumeContainer": (CONTAINERS, "resume_container"),
    "RemoveStaleVirtiofsShareMounts": (CONTAINERS, "remove_stale_virtiofs_share_mounts"),
    "GetDiagnosticData": (CONTAINERS, "get_diagnostic_data"),
    "WriteStdin": (CONTAINERS, "write_stdin"),
    "ReadStdout": (CONTAINERS, "read_stdout"),
    "ReadStderr": (CONTAINERS, "read_stderr"),
    "CloseStdin": (CONTAINERS, "close_stdin"),
    "TtyWinResize": (CONTAINERS, "tty_win_resize"),
    "GetOOMEvent": (CONTAINERS, "get_oom_event"),
    # guest network (issue: network, hotplug, guest services)
    "UpdateInterface": (NETWORK, "update_interface"),
    "UpdateRoutes": (NETWORK, "update_routes"),
    "ListInterfaces": (NETWORK, "list_interfaces"),
    "ListRoutes": (NETWORK, "list_routes"),
    "AddARPNeighbors": (NETWORK, "add_arp_neighbors"),
    "GetIPTables": (NETWORK, "get_iptables"),
    "SetIPTables": (NETWORK, "set_iptables"),
    # guest services
    "GetMetrics": (GUEST, "get_metrics"),
    "MemAgentMemcgSet": (GUEST, "mem_agent_memcg_set"),
    "MemAgentCompactSet": (GUEST, "mem_agent_compact_set"),
    "OnlineCPUMem": (GUEST, "online_cpu_mem"),
    "ReseedRandomDev": (GUEST, "reseed_random_dev"),
    "GetGuestDetails": (GUEST, "get_guest_details"),
    "MemHotplugByProbe": (GUEST, "mem_hotplug_by_probe"),
    "SetGuestDateTime": (GUEST, "set_guest_date_time"),
    "CopyFile": (GUEST, "copy_file"),
    "AddSwap": (GUEST, "add_swap"),
    "AddSwapPath": (GUEST, "add_swap_path"),
    "GetVolumeStats": (GUEST, "get_volume_stats"),
    "ResizeVolume": (GUEST, "resize_volume"),
    # policy (issue: hardening)
    "SetPolicy": (POLICY, "set_policy"),
}
