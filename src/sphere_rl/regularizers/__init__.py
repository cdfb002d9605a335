"""regularizers."""
