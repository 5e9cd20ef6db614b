"""Container cgroups: find them, read their statistics, update limits, freeze, watch OOM.

Both layouts are supported everywhere: v1 (one hierarchy per controller) and v2 (unified).
Paths always start from a configurable cgroup root so tests can use any tree.
"""

from agent.cgroups.freezer import FREEZING, FROZEN, THAWED, freeze, freezer_state, thaw
from agent.cgroups.layout import Cgroup, CgroupV1, CgroupV2, cgroup_of_pid, is_v2, open_cgroup
from agent.cgroups.model import UNLIMITED, CgroupStats
from agent.cgroups.oom import (
    OomEvent,
    V1OomWatch,
    V2OomWatch,
    oom_kill_increased,
    parse_memory_events,
    watch_oom,
)
from agent.cgroups.resources import apply_resources, shares_to_weight
from agent.cgroups.stats import read_stats

__all__ = [
    "FREEZING",
    "FROZEN",
    "THAWED",
    "UNLIMITED",
    "Cgroup",
    "CgroupStats",
    "CgroupV1",
    "CgroupV2",
    "OomEvent",
    "V1OomWatch",
    "V2OomWatch",
    "apply_resources",
    "cgroup_of_pid",
    "freeze",
    "freezer_state",
    "is_v2",
    "oom_kill_increased",
    "open_cgroup",
    "parse_memory_events",
    "read_stats",
    "shares_to_weight",
    "thaw",
    "watch_oom",
]
