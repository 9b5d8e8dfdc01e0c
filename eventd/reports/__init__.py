"""Reports (placeholder)."""
