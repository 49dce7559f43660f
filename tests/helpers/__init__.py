"""Shared test helpers: exact small models, services on loopback, data writers (imported as tests.helpers.X)."""
