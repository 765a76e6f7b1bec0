"""The tiny test model: served through /v2 only (no task routes, no prepared state)."""
