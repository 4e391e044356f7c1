"""Benchmarks of the serving path: measuring commands that report, never assert. Above the server in the layers.

- ``python -m xlsearch_bench grpc|scale`` (``xlsearch loadbench``, ``cli``): gRPC load (``grpc_load``,
  ``grpc_tables``, with an optional write load from ``writers``) and the index scale-up (``scale``,
  ``index_build``, ``synthetic``, ``scale_tables``);
- ``python -m xlsearch_bench.annotate``: Tag / Caption latency against a running server;
- ``python -m xlsearch_bench.safety``: peak server memory per hostile image request.

Shared: ``server_process`` (a real server in a subprocess), ``prometheus`` (its metrics over a level),
``machine`` (machine info, RSS, CPU time), ``queries``, ``report`` (latency summaries, tables, JSON, progress).
"""
