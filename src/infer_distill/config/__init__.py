"""The validated config: its schema, budget arithmetic and loading."""
