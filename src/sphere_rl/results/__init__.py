"""Results of many runs: one long table, statistics, comparisons."""
