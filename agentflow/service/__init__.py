"""The runner's HTTP server (L5): ``app`` (:class:`Service`: ``/metrics``, ``/healthz``, ``/readyz``), ``ingest``
(``POST /v1/events``), ``dlq`` (``/v1/dlq``, ``/v1/dlq/replay``), ``workflows`` (``/v1/workflows/{run_id}``) and
``auth`` (the bearer-token rule and what the JSON routes share). Imported only when ``[monitoring]
metrics_enabled``, so a runner without it never loads aiohttp.web."""

from .app import Service

__all__ = ["Service"]
