"""Neural network modules only (no data, no training code)."""
