"""The job layer: inputs (what to process), configuration, and the ledger of committed shards."""
