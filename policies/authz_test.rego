package jitmesh.authz_test

import data.jitmesh.authz

# --- fixtures: inputs shaped as the broker sends them (SPEC section 3)

digest := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

pinned_image := sprintf("ghcr.io/acme/payments-api@sha256:%s", [digest])

demo_input := {
	"subject": {
		"sub": "system:serviceaccount:demo:demo-app",
		"issuer": "https://kubernetes.default.svc",
		"namespace": "demo",
		"service_account": "demo-app",
		"pod": {"name": "demo-app-5f7c", "uid": "9b2f0e4a", "labels": {}, "images": ["nginx:1.27"]},
	},
	"request": {"audience": "orders-api", "scopes": ["read", "write"], "ttl_seconds": null},
	"context": {"time": "2026-11-23T10:00:00Z", "client_ip": "10.0.0.7"},
	"approval": null,
}

payments_input := {
	"subject": {
		"sub": "system:serviceaccount:payments:api",
		"issuer": "https://kubernetes.default.svc",
		"namespace": "payments",
		"service_account": "api",
		"pod": {"name": "api-7d9c", "uid": "5d1e2c3b", "labels": {"app": "api"}, "images": [pinned_image]},
	},
	"request": {"audience": "orders-db", "scopes": ["read"], "ttl_seconds": null},
	"context": {"time": "2026-11-23T10:00:00Z", "client_ip": "10.0.0.8"},
	"approval": null,
}

payroll_input := {
	"subject": {
		"sub": "system:serviceaccount:hr:payroll-sync",
		"issuer": "https://kubernetes.default.svc",
		"namespace": "hr",
		"service_account": "payroll-sync",
		"pod": null,
	},
	"request": {"audience": "payroll-api", "scopes": ["read"], "ttl_seconds": null},
	"context": {"time": "2026-11-23T10:00:00Z", "client_ip": "10.0.0.9"},
	"approval": null,
}

# 2026-11-23 is a Monday, 2026-11-28 a Saturday.
payroll_at(t) := d if {
	d := authz.decision with input as object.union(payroll_input, {"context": {"time": t}})
}

demo_asks(request) := d if {
	d := authz.decision with input as object.union(demo_input, {"request": request})
}

payments_asks(request) := d if {
	d := authz.decision with input as object.union(payments_input, {"request": request})
}

with_pod(base, pod) := json.patch(base, [{"op": "replace", "path": "/subject/pod", "value": pod}])

denied(d) if {
	d.allow == false
	d.scopes == []
	d.ttl_seconds == 0
	d.approval_required == false
	count(d.reasons) > 0
}

denied_because(d, reason) if {
	denied(d)
	reason in d.reasons
}

# --- the decision document

test_decision_has_exactly_the_contract_fields if {
	d := authz.decision with input as demo_input
	object.keys(d) == {"allow", "scopes", "ttl_seconds", "reasons", "approval_required"}
	is_boolean(d.allow)
	is_array(d.scopes)
	is_number(d.ttl_seconds)
	is_array(d.reasons)
	is_boolean(d.approval_required)
}

test_deny_has_the_same_fields_with_real_booleans if {
	d := authz.decision with input as {}
	object.keys(d) == {"allow", "scopes", "ttl_seconds", "reasons", "approval_required"}
	d.allow == false
	d.approval_required == false
}

# --- grants: the demo workload of `jitmesh up`

test_demo_app_gets_orders_api_read_write_for_300s if {
	d := authz.decision with input as demo_input
	d == {"allow": true, "scopes": ["read", "write"], "ttl_seconds": 300, "reasons": [], "approval_required": false}
}

test_demo_app_gets_payments_api_read_capped_at_120s if {
	d := demo_asks({"audience": "payments-api", "scopes": ["read"], "ttl_seconds": 600})
	d.allow == true
	d.scopes == ["read"]
	d.ttl_seconds == 120
}

test_demo_app_is_denied_ledger_which_it_was_never_granted if {
	d := demo_asks({"audience": "ledger", "scopes": ["read"]})
	denied_because(d, `system:serviceaccount:demo:demo-app has no grant for audience "ledger"`)
	count(d.reasons) == 1
}

test_a_subject_without_a_grant_is_told_only_that if {
	d := authz.decision with input as with_pod(object.union(demo_input, {"request": {"audience": "ledger", "scopes": ["read"]}}), null)
	d.reasons == [`system:serviceaccount:demo:demo-app has no grant for audience "ledger"`]
	denied(d)
}

test_unknown_subject_is_denied if {
	d := authz.decision with input as json.patch(demo_input, [
		{"op": "replace", "path": "/subject/namespace", "value": "default"},
		{"op": "replace", "path": "/subject/service_account", "value": "default"},
	])
	denied_because(d, `system:serviceaccount:default:default has no grant for audience "orders-api"`)
}

test_unknown_audience_is_denied if {
	denied_because(demo_asks({"audience": "warehouse"}), `system:serviceaccount:demo:demo-app has no grant for audience "warehouse"`)
}

test_unknown_audience_is_invalid_target if {
	d := demo_asks({"audience": "warehouse"})
	d.error == "invalid_target"
	denied_because(d, `audience "warehouse" is not known: no grant and no audience entry names it`)
}

test_an_audience_granted_to_others_only_is_access_denied_not_invalid_target if {
	d := demo_asks({"audience": "ledger", "scopes": ["read"]})
	denied(d)
	not d.error
}

test_an_audience_with_only_an_audience_entry_is_known if {
	d := demo_asks({"audience": "warehouse", "scopes": []}) with data.jitmesh.audiences.warehouse as {"pod_bound_required": true}
	denied(d)
	not d.error
}

test_a_scope_no_grant_of_the_audience_has_is_invalid_scope if {
	d := demo_asks({"audience": "payments-api", "scopes": ["admin"]})
	d.error == "invalid_scope"
	denied(d)
}

test_a_scope_another_subject_holds_is_access_denied_not_invalid_scope if {
	# orders/api holds orders-db write; payments/api does not
	d := authz.decision with input as object.union(payments_input, {"request": {"scopes": ["write"]}})
	denied(d)
	not d.error
}

test_an_allowed_decision_has_no_error if {
	d := authz.decision with input as demo_input
	d.allow == true
	not d.error
}

test_grants_come_from_data if {
	d := authz.decision with input as object.union(demo_input, {"request": {"audience": "warehouse", "scopes": ["read"]}})
		with data.jitmesh.grants as {"demo": {"demo-app": {"warehouse": {"scopes": ["read"], "max_ttl_seconds": 60}}}}
	d.allow == true
	d.scopes == ["read"]
	d.ttl_seconds == 60
}

test_grant_without_a_ttl_cap_is_a_data_error_and_denies if {
	d := authz.decision with input as demo_input
		with data.jitmesh.grants as {"demo": {"demo-app": {"orders-api": {"scopes": ["read", "write"]}}}}
	denied_because(d, `data error: the grant of audience "orders-api" to system:serviceaccount:demo:demo-app needs max_ttl_seconds, a positive integer`)
}

test_a_deny_no_rule_explains_still_has_a_reason if {
	d := authz.decision with input as demo_input
		with data.jitmesh.grants.demo["demo-app"]["orders-api"] as {"scopes": ["read", "write"], "default_ttl_seconds": 0, "max_ttl_seconds": 300}
	denied_because(d, "policy error: denied, but no rule said why (check data.jitmesh for this grant)")
}

test_no_grants_in_data_denies_everyone if {
	d := authz.decision with input as demo_input with data.jitmesh.grants as {}
	denied_because(d, `system:serviceaccount:demo:demo-app has no grant for audience "orders-api"`)
}

# --- scopes: requested ∩ granted; outside the grant denies

test_only_requested_scopes_are_granted if {
	d := demo_asks({"audience": "orders-api", "scopes": ["read"]})
	d.allow == true
	d.scopes == ["read"]
}

test_duplicate_requested_scopes_are_granted_once if {
	d := demo_asks({"audience": "orders-api", "scopes": ["write", "read", "write"]})
	d.scopes == ["read", "write"]
}

test_no_requested_scopes_is_allowed_with_no_scopes if {
	d := demo_asks({"audience": "orders-api", "scopes": []})
	d.allow == true
	d.scopes == []
	d.ttl_seconds == 300
}

test_absent_scopes_are_none_requested if {
	d := authz.decision with input as json.remove(demo_input, ["request/scopes"])
	d.allow == true
	d.scopes == []
}

test_scope_outside_the_grant_denies_naming_it if {
	d := demo_asks({"audience": "payments-api", "scopes": ["read", "write"]})
	denied_because(d, `scope "write" is not granted to system:serviceaccount:demo:demo-app for audience "payments-api" (granted: read)`)
	count(d.reasons) == 1
}

test_each_scope_outside_the_grant_has_its_own_reason if {
	d := demo_asks({"audience": "payments-api", "scopes": ["admin", "write"]})
	denied(d)
	count(d.reasons) == 2
}

test_grant_with_no_scopes_names_none if {
	d := demo_asks({"audience": "orders-api", "scopes": ["read"]})
		with data.jitmesh.grants.demo["demo-app"]["orders-api"] as {"max_ttl_seconds": 300}
	denied_because(d, `scope "read" is not granted to system:serviceaccount:demo:demo-app for audience "orders-api" (granted: none)`)
}

# --- TTL: min(requested or the grant's default, the grant's cap)

test_requested_ttl_under_the_cap_is_kept if {
	demo_asks({"audience": "orders-api", "scopes": ["read"], "ttl_seconds": 60}).ttl_seconds == 60
}

test_requested_ttl_at_the_cap_is_kept if {
	demo_asks({"audience": "orders-api", "scopes": ["read"], "ttl_seconds": 300}).ttl_seconds == 300
}

test_requested_ttl_over_the_cap_is_narrowed_to_the_cap if {
	d := demo_asks({"audience": "orders-api", "scopes": ["read"], "ttl_seconds": 3600})
	d.allow == true
	d.ttl_seconds == 300
}

test_no_requested_ttl_gets_the_grants_default if {
	payments_asks({"audience": "orders-db", "scopes": ["read"], "ttl_seconds": null}).ttl_seconds == 300
}

test_default_ttl_is_still_capped if {
	d := demo_asks({"audience": "orders-api", "scopes": ["read"]})
		with data.jitmesh.grants.demo["demo-app"]["orders-api"] as {"scopes": ["read"], "default_ttl_seconds": 900, "max_ttl_seconds": 300}
	d.ttl_seconds == 300
}

test_no_requested_ttl_and_no_default_gets_the_cap if {
	demo_asks({"audience": "payments-api", "scopes": ["read"]}).ttl_seconds == 120
}

test_requested_ttl_over_the_default_but_under_the_cap_is_kept if {
	payments_asks({"audience": "orders-db", "scopes": ["read"], "ttl_seconds": 500}).ttl_seconds == 500
}

# --- time window: payroll-api Monday-Friday 08:00-18:00 UTC, start inclusive, end exclusive

test_time_window_allows_inside if {
	payroll_at("2026-11-23T10:00:00Z").allow == true
}

test_time_window_starts_at_0800_utc if {
	payroll_at("2026-11-23T08:00:00Z").allow == true
}

test_time_window_is_closed_at_0759_utc if {
	d := payroll_at("2026-11-23T07:59:59Z")
	denied_because(d, `audience "payroll-api" is only available Monday,Tuesday,Wednesday,Thursday,Friday 08:00-18:00 UTC; it is Monday 07:59 UTC`)
}

test_time_window_is_open_at_175959_utc if {
	payroll_at("2026-11-23T17:59:59.999Z").allow == true
}

test_time_window_ends_at_1800_utc if {
	denied(payroll_at("2026-11-23T18:00:00Z"))
}

test_time_window_is_closed_on_saturday if {
	d := payroll_at("2026-11-28T10:00:00Z")
	denied_because(d, `audience "payroll-api" is only available Monday,Tuesday,Wednesday,Thursday,Friday 08:00-18:00 UTC; it is Saturday 10:00 UTC`)
}

test_time_window_is_judged_in_utc if {
	# 09:30 in UTC+02:00 is 07:30 UTC, before the window.
	denied(payroll_at("2026-11-23T09:30:00+02:00"))

	# 19:30 in UTC+02:00 is 17:30 UTC, inside.
	payroll_at("2026-11-23T19:30:00+02:00").allow == true

	# Friday 23:30 in UTC-05:00 is Saturday 04:30 UTC.
	denied(payroll_at("2026-11-27T23:30:00-05:00"))
}

test_time_window_without_a_time_denies if {
	d := authz.decision with input as json.remove(payroll_input, ["context/time"])
	denied_because(d, `audience "payroll-api" is time-restricted and input.context.time is missing or not an RFC 3339 time`)
}

test_time_window_with_a_malformed_time_denies if {
	every t in ["yesterday", "2026-11-23 10:00:00Z", "2026-02-29T10:00:00Z", "2026-13-01T10:00:00Z", "2026-11-23T24:00:00Z", "2026-11-23T10:00:00+24:00", "2100-02-29T10:00:00Z", "9999-12-31T23:59:59Z", 1732356000] {
		denied_because(payroll_at(t), `audience "payroll-api" is time-restricted and input.context.time is missing or not an RFC 3339 time`)
	}
}

test_time_window_accepts_a_leap_day if {
	payroll_at("2028-02-29T10:00:00Z").allow == true
}

test_audiences_without_a_window_ignore_the_time if {
	d := authz.decision with input as object.union(demo_input, {"context": {"time": "2026-11-28T03:00:00Z"}})
	d.allow == true
}

test_audiences_without_a_window_do_not_need_a_time if {
	d := authz.decision with input as json.remove(demo_input, ["context"])
	d.allow == true
}

# --- pod posture: digest-pinned images where the namespace asks for them

test_pinned_images_are_allowed_where_required if {
	d := authz.decision with input as payments_input
	d == {"allow": true, "scopes": ["read"], "ttl_seconds": 300, "reasons": [], "approval_required": false}
}

test_unpinned_image_is_denied_naming_it if {
	d := authz.decision with input as json.patch(payments_input, [{"op": "add", "path": "/subject/pod/images/-", "value": "busybox:1.36"}])
	denied_because(d, `image busybox:1.36 is not pinned by digest; namespace "payments" requires <image>@sha256:<digest>`)
	count(d.reasons) == 1
}

test_each_unpinned_image_has_its_own_reason if {
	d := authz.decision with input as json.patch(payments_input, [{"op": "replace", "path": "/subject/pod/images", "value": ["busybox:1.36", "envoy:v1.31", pinned_image]}])
	denied(d)
	count(d.reasons) == 2
}

test_a_tag_that_looks_like_a_digest_is_not_pinned if {
	d := authz.decision with input as json.patch(payments_input, [{"op": "replace", "path": "/subject/pod/images", "value": ["ghcr.io/acme/api:sha256-abc", "ghcr.io/acme/api@sha256:short"]}])
	denied(d)
	count(d.reasons) == 2
}

test_unknown_images_are_denied_where_pinning_is_required if {
	d := authz.decision with input as json.patch(payments_input, [{"op": "replace", "path": "/subject/pod/images", "value": []}])
	denied_because(d, `namespace "payments" requires digest-pinned images, but the pod's images are unknown (input.subject.pod.images is not a non-empty array)`)
}

test_unpinned_images_are_allowed_in_the_demo_namespace if {
	d := authz.decision with input as json.patch(demo_input, [{"op": "replace", "path": "/subject/pod/images", "value": ["nginx:latest", 42]}])
	d.allow == true
}

test_pinning_follows_the_namespace_flag_in_data if {
	d := authz.decision with input as demo_input with data.jitmesh.namespaces.demo as {"require_image_digest": true}
	denied_because(d, `image nginx:1.27 is not pinned by digest; namespace "demo" requires <image>@sha256:<digest>`)
}

# --- pod posture: pod-bound tokens for orders-db and ledger

test_pod_bound_token_is_required_for_orders_db if {
	d := authz.decision with input as with_pod(payments_input, null)
		with data.jitmesh.namespaces.payments as {"require_image_digest": false}
	denied_because(d, `audience "orders-db" requires a pod-bound ServiceAccount token; this one is not bound to a pod`)
	count(d.reasons) == 1
}

test_a_pod_without_a_uid_is_not_pod_bound if {
	d := authz.decision with input as json.remove(payments_input, ["subject/pod/uid"])
	denied_because(d, `audience "orders-db" requires a pod-bound ServiceAccount token; this one is not bound to a pod`)
}

test_pod_null_where_pinning_and_binding_are_required_gives_both_reasons if {
	d := authz.decision with input as with_pod(payments_input, null)
	d.reasons == [
		`audience "orders-db" requires a pod-bound ServiceAccount token; this one is not bound to a pod`,
		`namespace "payments" requires digest-pinned images, but the pod's images are unknown (the token is not bound to a pod)`,
	]
	denied(d)
}

test_pod_null_is_fine_where_nothing_needs_the_pod if {
	d := authz.decision with input as with_pod(demo_input, null)
	d.allow == true
}

# --- approval: ledger needs a human approval

ledger_input := object.union(payments_input, {"request": {"audience": "ledger", "scopes": ["read"], "ttl_seconds": null}})

test_approval_is_required_for_ledger if {
	d := authz.decision with input as ledger_input
	d == {
		"allow": false,
		"scopes": [],
		"ttl_seconds": 0,
		"reasons": [`audience "ledger" requires a human approval for system:serviceaccount:payments:api; none has been given yet`],
		"approval_required": true,
	}
}

test_an_approved_request_for_ledger_is_allowed if {
	d := authz.decision with input as object.union(ledger_input, {"approval": {"id": "ar-1", "approved": true, "approver": "alice"}})
	d == {"allow": true, "scopes": ["read"], "ttl_seconds": 120, "reasons": [], "approval_required": false}
}

test_a_refused_approval_denies if {
	d := authz.decision with input as object.union(ledger_input, {"approval": {"id": "ar-1", "approved": false, "approver": "alice"}})
	denied_because(d, `the approval for system:serviceaccount:payments:api to reach audience "ledger" was refused`)
}

test_an_approval_without_a_verdict_is_still_pending if {
	d := authz.decision with input as object.union(ledger_input, {"approval": {"id": "ar-1", "approved": "yes"}})
	d.allow == false
	d.approval_required == true
}

test_approval_is_not_asked_for_while_other_rules_deny if {
	d := authz.decision with input as with_pod(ledger_input, null)
	denied(d)
	count(d.reasons) == 2
}

test_approval_is_not_asked_for_an_ungranted_subject if {
	d := demo_asks({"audience": "ledger", "scopes": ["read"]})
	denied(d)
}

test_approval_does_not_stand_in_for_a_grant if {
	d := authz.decision with input as object.union(demo_input, {
		"request": {"audience": "ledger", "scopes": ["read"]},
		"approval": {"approved": true},
	})
	denied(d)
}

# --- several rules failing at once

test_every_failing_rule_gives_its_reason if {
	d := authz.decision with input as object.union(payroll_input, {
		"request": {"scopes": ["read", "admin"]},
		"context": {"time": "2026-11-28T10:00:00Z"},
	})
	d.reasons == [
		`audience "payroll-api" is only available Monday,Tuesday,Wednesday,Thursday,Friday 08:00-18:00 UTC; it is Saturday 10:00 UTC`,
		`scope "admin" is not granted to system:serviceaccount:hr:payroll-sync for audience "payroll-api" (granted: read write)`,
	]
	denied(d)
}

# --- malformed input: always a defined deny

test_empty_input_is_denied_with_reasons if {
	d := authz.decision with input as {}
	denied_because(d, "input.subject.namespace must be a non-empty string")
	denied_because(d, "input.request.audience must be a non-empty string")
}

test_input_that_is_not_an_object_is_denied if {
	every bad in ["garbage", 42, [], null] {
		d := authz.decision with input as bad
		denied(d)
	}
}

test_missing_request_is_denied if {
	d := authz.decision with input as json.remove(demo_input, ["request"])
	denied_because(d, "input.request.audience must be a non-empty string")
}

test_request_that_is_not_an_object_is_denied if {
	d := authz.decision with input as object.union(demo_input, {"request": "orders-api"})
	denied_because(d, "input.request.audience must be a non-empty string")
}

test_scopes_that_are_not_an_array_are_denied if {
	d := demo_asks({"scopes": "read write"})
	denied_because(d, "input.request.scopes must be an array of strings")
	count(d.reasons) == 1
}

test_scopes_with_a_non_string_are_denied if {
	denied_because(demo_asks({"scopes": ["read", 7]}), "input.request.scopes must be an array of strings")
}

test_a_bad_ttl_is_denied if {
	every ttl in [0, -5, 1.5, "300", true, [300]] {
		denied_because(demo_asks({"ttl_seconds": ttl}), "input.request.ttl_seconds must be null or a positive integer")
	}
}

test_an_empty_audience_is_denied if {
	denied_because(demo_asks({"audience": ""}), "input.request.audience must be a non-empty string")
}

test_a_non_string_audience_is_denied if {
	denied_because(demo_asks({"audience": ["orders-api", "ledger"]}), "input.request.audience must be a non-empty string")
}

test_missing_subject_is_denied if {
	d := authz.decision with input as json.remove(demo_input, ["subject"])
	denied_because(d, "input.subject.namespace must be a non-empty string")
	denied_because(d, "input.subject.service_account must be a non-empty string")
}

test_a_pod_that_is_not_an_object_is_denied if {
	d := authz.decision with input as with_pod(demo_input, "demo-app-5f7c")
	denied_because(d, "input.subject.pod must be null or an object")
}

test_images_that_are_not_an_array_are_unknown if {
	d := authz.decision with input as json.patch(payments_input, [{"op": "replace", "path": "/subject/pod/images", "value": "busybox"}])
	denied_because(d, `namespace "payments" requires digest-pinned images, but the pod's images are unknown (input.subject.pod.images is not a non-empty array)`)
}

# --- the install example: namespace orders, audience orders-db, the chart's repo:tag sidecar

orders_example_input := {
	"subject": {
		"sub": "system:serviceaccount:orders:api",
		"issuer": "https://kubernetes.default.svc.cluster.local",
		"namespace": "orders",
		"service_account": "api",
		"pod": {"name": "api-6b8d", "uid": "7c3a9e10", "labels": {}, "images": ["ghcr.io/jitmesh/jitmesh:0.1.0", "busybox:1.36"]},
	},
	"request": {"audience": "orders-db", "scopes": ["read"], "ttl_seconds": 300},
	"context": {"time": "2026-11-23T10:00:00Z", "client_ip": "10.0.0.10"},
	"approval": null,
}

test_the_install_example_gets_orders_db_with_the_charts_tagged_sidecar_image if {
	d := authz.decision with input as orders_example_input
	d == {"allow": true, "scopes": ["read"], "ttl_seconds": 300, "reasons": [], "approval_required": false}
}

test_serves_lists_the_audiences_a_workload_may_serve if {
	authz.serves == ["orders-api"] with input as {"subject": {"namespace": "orders", "service_account": "api"}}
}

test_serves_is_empty_for_an_unknown_workload if {
	authz.serves == [] with input as {"subject": {"namespace": "hr", "service_account": "payroll-sync"}}
}

test_serves_is_empty_for_malformed_input if {
	authz.serves == [] with input as {"subject": "x"}
}

# --- DPoP: an audience may require tokens bound to the workload's key

test_an_audience_requiring_dpop_says_so_in_the_decision if {
	d := demo_asks({"audience": "orders-api", "scopes": ["read"]}) with data.jitmesh.audiences["orders-api"] as {"require_dpop": true}
	d.allow == true
	d.require_dpop == true
}

test_an_audience_requiring_dpop_says_so_whether_or_not_a_proof_came if {
	d := demo_asks({"audience": "orders-api", "scopes": ["read"], "dpop": {"jkt": "k1"}}) with data.jitmesh.audiences["orders-api"] as {"require_dpop": true}
	d.allow == true
	d.require_dpop == true
}

test_an_audience_without_the_setting_has_no_require_dpop_field if {
	d := demo_asks({"audience": "orders-api", "scopes": ["read"]})
	not "require_dpop" in object.keys(d)
}

test_require_dpop_other_than_true_is_ignored if {
	d := demo_asks({"audience": "orders-api", "scopes": ["read"]}) with data.jitmesh.audiences["orders-api"] as {"require_dpop": "yes"}
	not "require_dpop" in object.keys(d)
}
