# Revocation tests: every subject may have any audience with the scopes it asks, for five minutes.
package jitmesh.authz

decision := {"allow": true, "scopes": input.request.scopes, "ttl_seconds": 300, "reasons": []}
