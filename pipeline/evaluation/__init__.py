"""Measured quality and cost: metrics, named degradations, the evaluation run, benchmarks and costs.

Nothing here is imported by the restore path; the daemon's `restorer eval` and `restorer bench` commands
compose these with pipeline.restorer.Restorer.
"""
