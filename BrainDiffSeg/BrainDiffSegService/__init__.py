"""The engine service and its client side: how front ends run the engine outside their own process.

- `server`: the engine behind an authenticated HTTP API (FastAPI + uvicorn; `braindiffseg serve`,
  `python -m BrainDiffSegService serve`). Imports the engine and torch: it runs in the service's process only.
- `client`: non-blocking HTTP exchanges (h11) that a front end advances from its own event loop.
- `launcher`: a private local service process (started with Slicer's own Python), found on a free loopback port.
- `engines`: where a job runs (in this process, in a local service, on a remote server) behind one interface.
- `controller`: the one job controller of the front ends (start, poll -> state and progress, cancel, finish).

Everything but `server` uses the standard library, NumPy and h11 only: the Slicer panel's process imports it and
never imports torch. The API and the message format are documented in docs/SERVICE.md.
"""
