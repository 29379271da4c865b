package jitmesh.access_test

import data.jitmesh.access

req(method, path, scope) := {
	"attributes": {"request": {"http": {"method": method, "path": path, "host": "orders", "scheme": "http", "headers": {}}}},
	"parsed_path": split(trim_left(path, "/"), "/"),
	"parsed_query": {},
	"token": {"sub": "system:serviceaccount:demo:demo-app", "scope": scope},
	"destination": {"audience": "orders-api"},
}

test_read_scope_may_get_an_order if {
	access.decision == {"allow": true, "reasons": []} with input as req("GET", "/orders/42", "read")
}

test_read_scope_may_list_orders if {
	access.decision.allow with input as req("GET", "/orders", "read")
}

test_methods_are_matched_case_insensitively if {
	access.decision.allow with input as req("get", "/orders/42", "read")
}

test_writing_needs_the_write_scope if {
	d := access.decision with input as req("DELETE", "/orders/42", "read")
	d.allow == false
	d.reasons == ["DELETE /orders/{id} needs scope(s) write; the token has read"]
}

test_write_scope_may_delete_an_order if {
	access.decision.allow with input as req("DELETE", "/orders/42", "read write")
}

test_a_token_without_scopes_says_it_has_none if {
	d := access.decision with input as req("GET", "/orders/42", "")
	d.reasons == ["GET /orders/{id} needs scope(s) read; the token has none"]
}

test_an_endpoint_without_scopes_is_open_to_any_verified_token if {
	access.decision.allow with input as req("GET", "/healthz", "")
}

test_a_template_segment_matches_exactly_one_segment if {
	d := access.decision with input as req("GET", "/orders/42/items", "read")
	d.allow == false
	d.reasons == [`no rule allows GET /orders/42/items for audience "orders-api"`]
}

test_a_template_segment_does_not_match_an_empty_segment if {
	not access.decision.allow with input as req("GET", "/orders/", "read")
}

test_a_method_not_listed_for_a_path_is_named if {
	d := access.decision with input as req("PATCH", "/orders", "read write")
	d.reasons == [`method PATCH is not allowed on /orders for audience "orders-api"`]
}

test_an_audience_without_rules_is_denied_with_a_reason if {
	d := access.decision with input as object.union(req("GET", "/orders", "read"), {"destination": {"audience": "ledger"}})
	d.allow == false
	d.reasons == [`audience "ledger" has no access rules (data.jitmesh.access.audiences)`]
}

test_malformed_input_is_a_deny_with_reasons if {
	d := access.decision with input as {"token": {}}
	d.allow == false
	d.reasons == [
		"input.attributes.request.http.method must be a string",
		"input.destination.audience must be a string",
		"input.parsed_path must be an array",
	]
}

test_a_wildcard_method_matches_any_method if {
	access.decision.allow with input as req("OPTIONS", "/x/1", "")
		with data.jitmesh.access.audiences as {"orders-api": {"endpoints": [{"methods": ["*"], "path": "/x/{id}", "scopes": []}]}}
}

test_every_deny_has_a_reason if {
	every r in [
		req("GET", "/nope", "read"),
		req("POST", "/orders", "read"),
		req("PUT", "/orders", "write"),
		{},
	] {
		d := access.decision with input as r
		d.allow == false
		count(d.reasons) > 0
	}
}
