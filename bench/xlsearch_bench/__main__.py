"""``python -m xlsearch_bench grpc|scale ...``: the same command as ``xlsearch loadbench``."""

from xlsearch_bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
