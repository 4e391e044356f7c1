"""`python -m xlsearch_client ...` = the `xlsearch-client` command."""

from xlsearch_client.cli import main

raise SystemExit(main())
