"""Executor backends (local, debug, slurm) behind one interface: `backend_for(cluster)`.

See `base` for the contract; the implementations live in `local`, `debug` and `slurm`.
"""
