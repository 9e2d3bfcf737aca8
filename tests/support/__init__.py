"""Helpers the tests share: a real server process, tiny ONNX models, container and V2 tools.

pytest finds this package through `pythonpath = ["tests"]` in pyproject.toml, so tests import
`support.server` and so on without editing `sys.path`.
"""
