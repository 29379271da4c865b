"""Who may administer the broker: admin tokens from a file, and Kubernetes identities (SubjectAccessReview)."""
