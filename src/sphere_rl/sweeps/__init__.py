"""Sweeps: presets x override grids x seeds, run on Ray (local or a cluster), resumable and idempotent.

`spec.py` (what to run, job ids), `sweep_dir.py` (index, status, locks), `worker.py` (one job, no Ray),
`launch.py` (the Ray driver, progress and failure summary).
"""
