"""hivemind glue shared by the peer and the coordinator (log filtering; the version-checked patches)."""
