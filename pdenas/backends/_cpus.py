"""How many CPUs this process may use: its affinity, and a container's CPU quota, which the
standard library does not read (``os.sched_getaffinity`` and ``os.process_cpu_count`` give the
affinity only, and a quota does not change it). ``workers: auto`` counts on it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cgroup_cpu_quota", "cpu_cores"]


def cpu_cores() -> int:
    """The CPUs this process may use: those of its affinity, or fewer where a container's CPU
    quota allows fewer (``docker --cpus 2`` on a 64-core host: 2; a quota of 1.5 CPUs: 1)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return cores if quota is None else max(1, min(cores, int(quota)))


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"),
                     membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPUs that this process's cgroups let it use (Linux: cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; the smallest of its cgroup and those above
    it), or None where none sets a quota.

    Args:
        root: Where the cgroup file systems are mounted.
        membership: The file that names this process's cgroups.
    """
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        if controllers == "":  # v2: one hierarchy
            folders, files = [root], ("cpu.max",)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own hierarchy
            folders, files = [root / controllers, root / "cpu"], ("cpu.cfs_quota_us",)
        else:
            continue
        for top in folders:
            # From the process's cgroup up to the mount (a container may see only the mount).
            here = top / path.lstrip("/")
            for folder in [here, *here.parents]:
                if folder != top and top not in folder.parents:
                    break
                quota = _quota_in(folder, files[0])
                if quota is not None:
                    quotas.append(quota)
    return min(quotas) if quotas else None


def _quota_in(folder: Path, name: str) -> float | None:
    """CPUs from one cgroup folder's quota file, or None (no file, no quota, unreadable)."""
    try:
        text = (folder / name).read_text().split()
        if name == "cpu.max":
            quota, period = text[0], text[1] if len(text) > 1 else "100000"
        else:
            quota, period = text[0], (folder / "cpu.cfs_period_us").read_text().split()[0]
        if quota == "max" or int(quota) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        return None
