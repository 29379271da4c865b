"""The mutating admission webhook (docs/contract.md §4): `jitmesh injector` and `jitmesh certs`.

- `patch.py` decides, purely, what a pod gets; its parts are `annotations.py` (what the pod
  asks for), `container_sidecar.py`, `container_env.py` (app containers) and `volumes.py`.
- `review.py` reads and renders AdmissionReview v1; `app.py` is the HTTP edge;
  `namespaces.py` reads namespace labels; `metrics.py`; `certs.py`; `cli.py`.

Decisions where SPEC is silent:
- Only pod CREATE is mutated; UPDATE, subresources and other kinds are allowed unchanged.
- Dry-run requests get the same patch as real ones: the webhook has no side effects
  (`sideEffects: None`), so `kubectl apply --dry-run=server` shows what would be stored.
- The namespace is read only when the pod's own label does not decide. If it cannot be read,
  the pod is refused (fail closed): admitting it would start an opted-in workload without
  credentials. A missing namespace counts as unlabelled (the API server refuses the pod anyway).
- Host-network pods are allowed unchanged, with a warning: the agent's loopback port would be
  the node's, open to every host-network process there.
- Conflicts (our volume, container, env or mount names, the token directory, the agent's port
  already in the pod) refuse the pod with all of them listed; nothing is half-patched.
- Without native sidecars the sidecar is the first plain container, with a postStart hook that
  waits for the first tokens, so the kubelet starts the app containers after them.
"""
