# The candidate side of the shadow tests (see enforced.rego): differs from the enforced
# policy in exactly one way per audience.
package shadowtest.candidate

grants := {
	"agree": {"scopes": ["read"], "ttl": 300},
	"deny-to-allow": {"scopes": ["read"], "ttl": 300},
	"narrower": {"scopes": ["read"], "ttl": 300},
	"wider": {"scopes": ["read"], "ttl": 600},
	"slow": {"scopes": ["read"], "ttl": 300},
}

# audiences whose decision is built by a rule of its own below (or not at all)
special := {"error-undefined", "error-builtin", "slow"}

allowed(g) := {"allow": true, "scopes": [s | some s in input.request.scopes; s in g.scopes], "ttl_seconds": g.ttl}

decision := allowed(grants[input.request.audience]) if not special[input.request.audience]

decision := {"allow": false, "reasons": ["candidate: no grant for this audience"]} if {
	not special[input.request.audience]
	not grants[input.request.audience]
}

# "error-undefined": no rule defines the decision.

# "error-builtin": a runtime error under strict-builtin-errors (the broker's OPA queries use it).
decision := {"allow": true, "ttl_seconds": to_number(input.request.audience)} if input.request.audience == "error-builtin"

# "slow": waits for a server that answers late (data.shadowtest.slow_url, written by the test).
decision := allowed(grants.slow) if {
	input.request.audience == "slow"
	http.send({"method": "GET", "url": data.shadowtest.slow_url, "timeout": "10s"}).status_code == 200
}
