"""Guest services: CopyFile, CPU/memory hotplug, guest details, entropy,
clock, swap, volume stats and metrics. Every sysfs/proc/dev path goes through
a configurable root so tests never touch the machine's real state."""
