"""What users get: the report, the distilled set, its exports and datasheet."""
