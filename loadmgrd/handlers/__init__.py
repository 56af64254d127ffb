"""JSON-RPC method handlers, one module per concept. Importing this package registers them all."""

from loadmgrd.handlers import currency, events, jobs, notify, processes, repo, runs, schedules

__all__ = ["currency", "events", "jobs", "notify", "processes", "repo", "runs", "schedules"]
