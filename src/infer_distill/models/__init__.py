"""Model architectures: their names (torch-free) and builders."""
