"""What every domain shares: errors and signals, paths and the one atomic write, progress display."""
