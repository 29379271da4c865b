"""The credential agent in each pod: `jitmesh sidecar`, configured by its environment alone."""
