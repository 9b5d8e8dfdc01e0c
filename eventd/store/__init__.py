"""eventd's SQL, one module per feature that reads or writes the SQLite store."""
