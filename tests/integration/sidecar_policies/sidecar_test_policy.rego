# A policy the sidecar fault tests steer through their OPA's Data API: they PUT
# /v1/data/sidecar_test to switch between allowing, denying and asking for a human
# approval, and to cap the TTL.
package jitmesh.authz

default allow := false

allow if data.sidecar_test.allow == true

decision := {
	"allow": allow,
	"scopes": input.request.scopes,
	"ttl_seconds": data.sidecar_test.ttl_seconds,
	"reasons": reasons,
	"approval_required": object.get(data.sidecar_test, "approval_required", false),
}

reasons := ["allowed by the sidecar test policy"] if allow

reasons := [data.sidecar_test.deny_reason] if not allow
