"""Revocation: the in-memory index, the admin API, the event stream, the pod watcher and `jitmesh revoke`."""
