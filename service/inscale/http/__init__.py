"""The HTTP layer: the only part of inscale that imports FastAPI or Starlette."""
