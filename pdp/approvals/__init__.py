"""Human approval of access requests: the admin endpoints and `jitmesh approvals`."""
