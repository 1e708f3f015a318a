"""The protocol lab: short polling, long polling, SSE and WebSocket measured on the same chat traffic.

`pingpull bench protocols` (or `python -m bench.protocols`); see docs/protocol-lab.md.

Modules: `run` (the command, one scenario per strategy), `scenario` (seeding, the sender, the
completeness check), `devices` (the simulated phones, a child process), `proxy` (the byte-counting
proxy, a child process), `report` (tables, claims, charts), `common` (helpers shared with bench.e2e).
"""
