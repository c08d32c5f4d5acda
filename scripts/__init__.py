"""Command-line tools over whole projects of runs, on the top floor (nothing imports them):
`reproduce.py` (one paper table per command, locally, side by side on GPUs, or as SLURM jobs through
`slurm_submit` and `plan_scheduler`), `release_parity.py` (this implementation against the official
release, step by step), `quickstart.sh` and `slurm_table.sbatch`."""
