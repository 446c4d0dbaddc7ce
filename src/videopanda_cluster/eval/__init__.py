"""Benchmark evaluation: reference benchmark layouts, the GPT-assisted judge, metrics, reports."""
