"""The model server: one ASGI core (asgi_app.py) hosted by uvicorn or BentoML (hosts.py); `serve` CLI."""
