# A small policy for the broker's integration tests: payments/api may reach orders-db with
# read and write for at most 120 seconds; `needs-approval` asks for a human; anything else
# is denied with a reason.
package jitmesh.authz

grants := {"system:serviceaccount:payments:api": {"orders-db": {"scopes": ["read", "write"], "ttl": 120}}}

grant := grants[input.subject.sub][input.request.audience]

default decision := {"allow": false, "scopes": [], "reasons": ["no grant for this subject and audience"]}

decision := {"allow": true, "scopes": grant.scopes, "ttl_seconds": grant.ttl, "reasons": []}

decision := {"allow": false, "approval_required": true, "reasons": ["needs a human"]} if {
	input.request.audience == "needs-approval"
}
