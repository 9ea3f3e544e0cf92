"""Durable work on one machine: an SQLite journal."""
