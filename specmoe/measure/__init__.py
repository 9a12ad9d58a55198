"""Measure layer: trace schema and ingest (engine traces, public measured kernel tables)."""
