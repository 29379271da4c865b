"""jitmesh: just-in-time credentials for Kubernetes workloads.

This package holds the console script and the few pieces that the broker (``pdp``),
the admission webhook (``injector``) and the credential agent (``sidecar``) all need.
"""

__version__ = "0.1.0"
