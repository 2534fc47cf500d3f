"""The store: one Icechunk repository per dataset (layout, writes, reads). Knows nothing of
Dagster or of providers."""
