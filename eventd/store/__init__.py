"""Storage: the stores eventd keeps its state in (identity.db: identity.py)."""
