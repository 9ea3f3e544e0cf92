"""Reliability suite: load, shutdown under load, faults, property tests and a soak (issue 12).

Short by default (part of ``scripts/test``); ``scripts/reliability`` runs the full sizes.
"""
