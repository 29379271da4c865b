# A policy that breaks the contract: allow is the string "yes", not a JSON bool.
package jitmesh.authz

decision := {"allow": "yes", "scopes": ["read"], "ttl_seconds": 60}
