# Each test pins what shadow mode would classify for one kind of request:
# enforced (data.jitmesh.authz) against candidate (data.jitmesh.candidate.authz).
package jitmesh.candidate.authz_test

import data.jitmesh.authz as enforced
import data.jitmesh.candidate.authz as candidate

pinned_image := "ghcr.io/acme/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

subject(namespace, service_account, pod) := {
	"sub": sprintf("system:serviceaccount:%s:%s", [namespace, service_account]),
	"issuer": "https://kubernetes.default.svc",
	"namespace": namespace,
	"service_account": service_account,
	"pod": pod,
}

pod(images) := {"name": "app-5f7c", "uid": "9b2f0e4a", "labels": {}, "images": images}

request_of(subj, audience, scopes, ttl) := {
	"subject": subj,
	"request": {"audience": audience, "scopes": scopes, "ttl_seconds": ttl},
	"context": {"time": "2026-11-23T10:00:00Z", "client_ip": "10.0.0.7"},
	"approval": null,
}

demo_app := subject("demo", "demo-app", pod(["nginx:1.27"]))

payments_api := subject("payments", "api", pod([pinned_image]))

orders_api := subject("orders", "api", pod([pinned_image]))

both(req) := [e, c] if {
	e := enforced.decision with input as req
	c := candidate.decision with input as req
}

# --- allow_to_deny

test_demo_app_loses_write_on_orders_api if {
	[e, c] := both(request_of(demo_app, "orders-api", ["read", "write"], null))
	e.allow == true
	c.allow == false
	c.reasons == [`scope "write" is not granted to system:serviceaccount:demo:demo-app for audience "orders-api" (granted: read)`]
}

test_hr_must_now_run_pinned_images if {
	[e, c] := both(request_of(subject("hr", "payroll-sync", pod(["ghcr.io/acme/payroll:2.3"])), "payroll-api", ["read"], null))
	e.allow == true
	c.allow == false
	c.reasons == [`image ghcr.io/acme/payroll:2.3 is not pinned by digest; namespace "hr" requires <image>@sha256:<digest>`]
}

test_hr_tokens_not_bound_to_a_pod_are_now_denied if {
	[e, c] := both(request_of(subject("hr", "payroll-sync", null), "payroll-api", ["read"], null))
	e.allow == true
	c.allow == false
}

# --- narrower: same verdict, shorter TTL

test_demo_app_orders_api_read_is_capped_at_120s if {
	[e, c] := both(request_of(demo_app, "orders-api", ["read"], null))
	e.ttl_seconds == 300
	c.ttl_seconds == 120
	c.allow == true
	c.scopes == e.scopes
}

test_orders_api_orders_db_is_capped_at_600s if {
	[e, c] := both(request_of(orders_api, "orders-db", ["read", "write"], 900))
	e.ttl_seconds == 900
	c.ttl_seconds == 600
	c.allow == true
	c.scopes == ["read", "write"]
}

# --- wider: same verdict, longer TTL

test_payments_api_orders_db_may_last_900s if {
	[e, c] := both(request_of(payments_api, "orders-db", ["read"], 900))
	e.ttl_seconds == 600
	c.ttl_seconds == 900
	c.allow == true
}

# --- agree

test_agrees_on_the_default_ttl_of_orders_db if {
	[e, c] := both(request_of(payments_api, "orders-db", ["read"], null))
	e == c
	c.ttl_seconds == 300
}

test_agrees_on_short_demo_tokens if {
	[e, c] := both(request_of(demo_app, "orders-api", ["read"], 60))
	e == c
	c.allow == true
}

test_agrees_on_demo_app_payments_api if {
	[e, c] := both(request_of(demo_app, "payments-api", ["read"], null))
	e == c
	c == {"allow": true, "scopes": ["read"], "ttl_seconds": 120, "reasons": [], "approval_required": false}
}

test_agrees_that_demo_app_has_no_ledger if {
	[e, c] := both(request_of(demo_app, "ledger", ["read"], null))
	e == c
	c.allow == false
}

test_agrees_on_pinned_hr_pods if {
	[e, c] := both(request_of(subject("hr", "payroll-sync", pod([pinned_image])), "payroll-api", ["read"], null))
	e == c
	c.allow == true
}

test_agrees_on_an_unknown_subject if {
	[e, c] := both(request_of(subject("default", "default", null), "orders-api", ["read"], null))
	e == c
	c.allow == false
}

test_agrees_that_ledger_needs_approval if {
	[e, c] := both(request_of(payments_api, "ledger", ["read"], null))
	e == c
	c.approval_required == true
}

test_agrees_on_the_payroll_time_window if {
	req := object.union(request_of(subject("hr", "payroll-sync", pod([pinned_image])), "payroll-api", ["read"], null), {"context": {"time": "2026-11-28T10:00:00Z"}})
	[e, c] := both(req)
	e == c
	c.allow == false
}

test_malformed_input_is_a_defined_deny if {
	every bad in [{}, null, "garbage", {"request": {"audience": "orders-api", "scopes": "read"}}] {
		c := candidate.decision with input as bad
		c.allow == false
		count(c.reasons) > 0
		object.keys(c) == {"allow", "scopes", "ttl_seconds", "reasons", "approval_required"}
	}
}

# --- the candidate still reads the enforced data for everything it does not change

test_grants_added_to_data_reach_the_candidate if {
	c := candidate.decision with input as request_of(demo_app, "warehouse", ["read"], null)
		with data.jitmesh.grants.demo["demo-app"].warehouse as {"scopes": ["read"], "max_ttl_seconds": 60}
	c.allow == true
	c.ttl_seconds == 60
}

test_the_candidates_changes_win_over_data if {
	c := candidate.decision with input as request_of(demo_app, "orders-api", ["read"], null)
		with data.jitmesh.grants.demo["demo-app"]["orders-api"] as {"scopes": ["read", "write"], "max_ttl_seconds": 3600}
	c.ttl_seconds == 120
}
