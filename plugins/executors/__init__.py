"""Executor plugins: where the jobs of a sweep run (local processes, Ray)."""
