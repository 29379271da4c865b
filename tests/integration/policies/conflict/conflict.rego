# A policy OPA cannot evaluate: two complete definitions of decision with different values
# make every query an eval_conflict_error (HTTP 500 from OPA's Data API).
package jitmesh.authz

decision := {"allow": true, "scopes": ["read"]} if input.request.audience

decision := {"allow": false} if input.request.audience
