# The DPoP tests' policy: payments/api may read orders-db with or without a proof, and
# bound-api only with one (require_dpop). Anything else is denied.
package jitmesh.authz

grants := {
	"orders-db": {"scopes": ["read"], "ttl": 120},
	"bound-api": {"scopes": ["read"], "ttl": 120, "require_dpop": true},
}

grant := grants[input.request.audience] if input.subject.sub == "system:serviceaccount:payments:api"

default decision := {"allow": false, "scopes": [], "reasons": ["no grant for this subject and audience"]}

decision := object.union(
	{"allow": true, "scopes": grant.scopes, "ttl_seconds": grant.ttl, "reasons": []},
	{k: v | some k, v in grant; k == "require_dpop"},
)
