"""The HTTP API on Ray Serve: retriever, generator and pivot reranker behind one FastAPI ingress.

- :mod:`ray_cora.configs.serve` — :class:`ServeAppOptions`, the application's options (pure).
- :mod:`ray_cora.serve.schemas` — request/response models and the input limits (pure).
- :mod:`ray_cora.serve.core` — :class:`RetrieverCore` (encoder + ``ShardedIndex`` + the
  retrieval job's ``PassageStore``), shard groups, and the generator/pivot adapters (pure: no
  Serve, unit-testable).
- :mod:`ray_cora.serve.app` — the Serve deployments and :func:`~ray_cora.serve.app.build_app`,
  which ``serve run ray_cora.serve.app:build_app``, ``serve deploy`` and ``ray-cora serve`` import.
"""
