"""`jitmesh proxy`: the receiving side, an access proxy in front of a service (docs/contract.md §7)."""
