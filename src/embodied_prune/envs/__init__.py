"""Closed-loop environments behind the gymnasium API (driving now; manipulation later)."""
