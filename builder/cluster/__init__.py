"""`builder slurm`: vLLM across nodes with Ray, as a SLURM job."""
