"""HTTP endpoint: health, status, metrics, message histories and queue operations.

``tokens`` is importable without aiohttp (the CLI reads the same tokens file); the
server itself is in ``app``.
"""
