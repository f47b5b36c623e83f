"""Sizing a run before it starts: memory counted from shapes, without allocating it."""
