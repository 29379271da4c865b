"""Who is asking: a ServiceAccount token verified against the cluster (JWKS or TokenReview), and its pod."""
