"""fedguard's Hydra launcher (`hydra/launcher=ray_jobs`): see `ray_jobs.py`."""
