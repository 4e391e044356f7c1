"""``python -m xlsearch_bench grpc|scale ...``: the same command as ``xlsearch loadbench``."""

from xlsearch_bench.cli import main

raise SystemExit(main())
