# The enforced side of the shadow tests: one audience per case, so each request's
# class is known in advance. README of the cases: test_shadow_live.py, CASES.
package shadowtest.enforced

grants := {
	"agree": {"scopes": ["read"], "ttl": 300},
	"allow-to-deny": {"scopes": ["read"], "ttl": 300},
	"narrower": {"scopes": ["read", "write"], "ttl": 300},
	"wider": {"scopes": ["read"], "ttl": 60},
	"error-undefined": {"scopes": ["read"], "ttl": 300},
	"error-builtin": {"scopes": ["read"], "ttl": 300},
	"slow": {"scopes": ["read"], "ttl": 300},
}

default decision := {"allow": false, "scopes": [], "reasons": ["enforced: no grant for this audience"]}

decision := {"allow": true, "scopes": granted, "ttl_seconds": g.ttl, "reasons": []} if {
	g := grants[input.request.audience]
	granted := [s | some s in input.request.scopes; s in g.scopes]
}
