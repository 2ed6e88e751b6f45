"""`builder bench`: load against an OpenAI-compatible server, its statistics and its report."""
