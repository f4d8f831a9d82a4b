"""The model server: one ASGI core (app.py) hosted by uvicorn or BentoML (hosts.py); `serve` CLI."""
