"""Real local services (scripts/services.sh): SLURM + PostgreSQL."""
