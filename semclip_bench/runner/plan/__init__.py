"""What a run will do: its configuration and variants, their validation, the typed units
(category, variant, shots, seed) and their schedule over shards and processes, and what a resumed
run still has to do."""
