"""Guest networking: interfaces, routes, neighbours and iptables, done by an
on-demand worker process so the agent itself never imports pyroute2.

Import ``NetworkWorker`` from ``agent.network.client``; this package init stays
empty so that importing it costs nothing.
"""
