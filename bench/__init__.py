"""Benchmarks: each prints one JSON object (``flowpin bench NAME --json``)."""
