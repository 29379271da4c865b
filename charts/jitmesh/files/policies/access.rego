# The access policy of jitmesh proxy (docs/contract.md §7): may this verified token call
# this endpoint? The proxy asks POST /v1/data/jitmesh/access/decision with an
# OPA-Envoy-shaped input (attributes.request.http, parsed_path, token, destination).
#
# Rules are data: data.jitmesh.access.audiences[<audience>].endpoints lists
# {"methods": [..] ("*" for any), "path": "/orders/{id}", "scopes": [..]}.
# A path template matches segment by segment; "{name}" matches any one non-empty segment.
# An endpoint allows when the method and path match and the token holds every scope it
# names. Every deny carries at least one reason. Only builtins OPA's Wasm target implements
# (no sprintf): the proxy evaluates this policy in-process from its Wasm build.
package jitmesh.access

default decision := {"allow": false, "reasons": ["policy error: no access decision could be built"]}

decision := {"allow": allow, "reasons": decision_reasons}

default allow := false

allow if {
	count(input_errors) == 0
	count(permitting) > 0
}

decision_reasons := [] if allow

decision_reasons := sort([r | some r in reasons]) if not allow

# --- the request

method := upper(input.attributes.request.http.method) if is_string(input.attributes.request.http.method)

audience := input.destination.audience if is_string(input.destination.audience)

segments := input.parsed_path if is_array(input.parsed_path)

token_scopes := {s | some s in split(input.token.scope, " "); s != ""} if is_string(input.token.scope)

default token_scopes := set()

endpoints := data.jitmesh.access.audiences[audience].endpoints if is_array(data.jitmesh.access.audiences[audience].endpoints)

input_errors contains "input.attributes.request.http.method must be a string" if not method

input_errors contains "input.destination.audience must be a string" if not audience

input_errors contains "input.parsed_path must be an array" if not segments

# --- matching

method_matches(e) if "*" in e.methods

method_matches(e) if method in e.methods

template_segments(template) := split(trim_left(template, "/"), "/")

segment_matches(t, s) if {
	startswith(t, "{")
	endswith(t, "}")
	is_string(s)
	s != ""
}

segment_matches(t, s) if {
	not startswith(t, "{")
	t == s
}

path_matches(template) if {
	is_string(template)
	tsegs := template_segments(template)
	count(tsegs) == count(segments)
	every i, t in tsegs {
		segment_matches(t, segments[i])
	}
}

matching contains i if {
	some i, e in endpoints
	path_matches(e.path)
	method_matches(e)
}

path_only contains i if {
	some i, e in endpoints
	path_matches(e.path)
	not method_matches(e)
}

missing_scopes(e) := {s | some s in e.scopes} - token_scopes

permitting contains i if {
	some i in matching
	count(missing_scopes(endpoints[i])) == 0
}

# --- reasons

reasons contains msg if {
	some msg in input_errors
}

reasons contains concat("", ["audience ", quoted(audience), " has no access rules (data.jitmesh.access.audiences)"]) if {
	count(input_errors) == 0
	not endpoints
}

reasons contains concat("", ["no rule allows ", method, " ", request_path, " for audience ", quoted(audience)]) if {
	count(input_errors) == 0
	endpoints
	count(matching) == 0
	count(path_only) == 0
}

reasons contains concat("", ["method ", method, " is not allowed on ", request_path, " for audience ", quoted(audience)]) if {
	count(input_errors) == 0
	count(matching) == 0
	count(path_only) > 0
}

reasons contains concat("", [method, " ", e.path, " needs scope(s) ", concat(" ", sort(missing)), "; the token has ", held]) if {
	count(permitting) == 0
	some i in matching
	e := endpoints[i]
	missing := missing_scopes(e)
	held := token_scope_text
}

token_scope_text := concat(" ", sort(token_scopes)) if count(token_scopes) > 0

default token_scope_text := "none"

request_path := concat("/", ["", concat("/", segments)])

# no sprintf: the Wasm target lacks it, and the proxy evaluates this policy as Wasm
quoted(s) := concat("", [`"`, s, `"`])
