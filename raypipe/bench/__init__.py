"""`raypipe bench …`: benchmarks that write JSON with ratios against a baseline measured in the same run."""
