"""Brokered PostgreSQL logins (docs/contract.md §9): the targets file, the logins on each
target, and the sweep that ends expired, revoked and unrecorded ones."""
