"""`cpt-mix`: stage files, the plan that resolves them to token shards, and the manifest."""
