"""Converters from published datasets to the one manifest format (see ``xlsearch.data.manifest``).

Each converter (``tuxpaint``, ``cococn``; ``unannotated`` pools for A3VSE) writes ``<out>/manifest.jsonl`` plus
``<out>/conversion_report.json`` (counts, and every source item that was left out with the reason); ``common`` holds
their error types. Command line: ``python -m xlsearch.data.datasets.cli``.
"""
