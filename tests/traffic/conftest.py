"""Traffic fixtures: `traffic_run` and `traffic_repository` live in tests/family_fixtures.py (shared with the
tests that serve every family at once)."""
