"""What a run leaves: the episode rows and their stored statistics, provenance, W&B tracking, the
report's tables, maps and intervals, and the comparison and verification of rows."""
