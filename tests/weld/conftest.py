"""Weld fixtures: `weld_data`, `weld_run` and `weld_repository` live in tests/family_fixtures.py (shared
with the tests that serve every family at once)."""
