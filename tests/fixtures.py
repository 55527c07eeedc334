"""Shared pytest fixtures (named people, API clients). Registered by tests/conftest.py."""
