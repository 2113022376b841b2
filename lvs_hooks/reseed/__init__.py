"""Reseeding persistence templates: a pure planner and the runner that sends and verifies."""
