"""Shared pytest configuration. Fixtures live in plugin modules, one per area."""

pytest_plugins = [
    "tests.fixtures_apiserver",
    "tests.fixtures_sandbox",
]
