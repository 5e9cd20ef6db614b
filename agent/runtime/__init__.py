"""The OCI runtime backend: spec conversion and argv building for crun/runc.

Nothing here spawns a process: the lead's event loop owns spawning and reaping.
"""
