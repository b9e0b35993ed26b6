"""HTTP endpoint: health, status, metrics, message histories and queue operations.

``tokens`` is importable without aiohttp (the CLI reads the same tokens file); the
server itself is in ``app``. The endpoint is given the running scheduler, listeners,
statistics and spool by ``smtprelay.app`` (``context.Context``) and reads or calls them
(``status``, ``queue``, ``health``); it imports the scheduler and listener types and
nothing else of the other stages (listed as the exceptions of the import-linter contract
in pyproject.toml). Path of a request: docs/flow.md.
"""
