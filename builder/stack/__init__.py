"""`builder up`, `status`, `down`: the stack for this machine, through docker compose."""
