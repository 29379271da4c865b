# The enforced jitmesh policy (SPEC section 3): may this workload have a token for
# this audience, with which scopes, for how long? The broker asks it before every
# issuance at POST /v1/data/jitmesh/authz/decision. Who may have what lives in
# data.jitmesh (policies/data.json), not in these rules; README.md has the schema.
#
# Choices (README.md, "Decisions"):
# - scopes: requested ∩ granted; asking for a scope outside the grant denies, naming it;
#   asking for none is allowed and grants none (an audience-only token).
# - ttl_seconds: min(requested, or the grant's default, the grant's cap); asking for
#   more than the cap is narrowed to the cap, not denied.
# - every builtin is guarded so that malformed input is a deny with a reason and never
#   an evaluation error, even with strict-builtin-errors.
package jitmesh.authz

# Always defined: the rules below build a decision for any input; this only guards
# against a data file so broken that the document itself cannot be built.
default decision := {
	"allow": false,
	"scopes": [],
	"ttl_seconds": 0,
	"reasons": ["policy error: data.jitmesh is malformed, no decision could be built"],
	"approval_required": false,
}

decision := object.union(
	object.union(
		{
			"allow": allow,
			"scopes": granted_scopes,
			"ttl_seconds": granted_ttl,
			"reasons": decision_reasons,
			"approval_required": approval_required,
		},
		error_field,
	),
	dpop_field,
)

# An audience whose tokens must be bound to the workload's key (RFC 9449 DPoP): the broker
# refuses a request for it that carries no DPoP proof.
default dpop_field := {}

dpop_field := {"require_dpop": true} if audience_config.require_dpop == true

# A deny that is about the request rather than the subject names its OAuth error: an
# audience no grant or audience entry knows is invalid_target, a scope no grant of the
# audience has is invalid_scope. The broker answers those with 400 instead of 403.
default error_field := {}

error_field := {"error": decision_error} if not allow

decision_error := "invalid_target" if {
	audience
	not audience in known_audiences
}

decision_error := "invalid_scope" if {
	audience in known_audiences
	count(requested_scopes - audience_scopes) > 0
}

known_audiences contains name if {
	some ns, sa
	data.jitmesh.grants[ns][sa][name]
}

known_audiences contains name if some name, _ in data.jitmesh.audiences

audience_scopes contains s if {
	some ns, sa
	some s in data.jitmesh.grants[ns][sa][audience].scopes
	is_string(s)
}

deny_reasons contains sprintf("audience %q is not known: no grant and no audience entry names it", [audience]) if {
	decision_error == "invalid_target"
}

default decision_reasons := ["policy error: denied, but no rule said why (check data.jitmesh for this grant)"]

decision_reasons := [r | some r in reasons] if count(reasons) > 0

decision_reasons := [] if allow

default allow := false

allow if {
	grant
	grant_ttl > 0
	count(reasons) == 0
}

default granted_scopes := []

granted_scopes := sort([s | some s in (requested_scopes & grant_scopes)]) if allow

default granted_ttl := 0

granted_ttl := grant_ttl if allow

default approval_required := false

approval_required if {
	audience_config.approval_required == true
	not input.approval.approved == true
	not approval_refused
	count(deny_reasons) == 0
}

reasons := deny_reasons | approval_pending_reasons

approval_pending_reasons contains sprintf("audience %q requires a human approval for %s; none has been given yet", [audience, subject]) if {
	approval_required
}

# --- the input, checked: a field that is malformed is left undefined and named below

subject_doc := input.subject if is_object(input.subject)

request_doc := input.request if is_object(input.request)

namespace := subject_doc.namespace if {
	is_string(subject_doc.namespace)
	subject_doc.namespace != ""
}

service_account := subject_doc.service_account if {
	is_string(subject_doc.service_account)
	subject_doc.service_account != ""
}

subject := sprintf("system:serviceaccount:%s:%s", [namespace, service_account])

audience := request_doc.audience if {
	is_string(request_doc.audience)
	request_doc.audience != ""
}

# Absent scopes are none asked, as the broker's [] is.
requested_scopes := {s | some s in raw_scopes} if {
	raw_scopes := object.get(request_doc, "scopes", [])
	is_array(raw_scopes)
	every s in raw_scopes {
		is_string(s)
	}
}

# Absent or null: none asked, the grant's default applies.
requested_ttl := object.get(request_doc, "ttl_seconds", null) if {
	ttl := object.get(request_doc, "ttl_seconds", null)
	valid_ttl(ttl)
}

valid_ttl(null)

valid_ttl(ttl) if positive_integer(ttl)

positive_integer(n) if {
	is_number(n)
	n == floor(n)
	n > 0
}

# null when the token is not bound to a pod.
pod := object.get(subject_doc, "pod", null)

pod_bound if {
	is_object(pod)
	is_string(pod.uid)
	pod.uid != ""
}

input_errors contains "input.subject.namespace must be a non-empty string" if not namespace

input_errors contains "input.subject.service_account must be a non-empty string" if not service_account

input_errors contains "input.request.audience must be a non-empty string" if not audience

input_errors contains "input.request.scopes must be an array of strings" if not requested_scopes

input_errors contains "input.request.ttl_seconds must be null or a positive integer" if not requested_ttl

input_errors contains "input.subject.pod must be null or an object" if {
	pod != null
	not is_object(pod)
}

# --- grants: data.jitmesh.grants[namespace][service_account][audience]

grant := data.jitmesh.grants[namespace][service_account][audience]

grant_scopes := {s | some s in grant.scopes; is_string(s)}

grant_ttl := min([wanted_ttl, grant.max_ttl_seconds]) if positive_integer(grant.max_ttl_seconds)

wanted_ttl := requested_ttl if requested_ttl != null

wanted_ttl := object.get(grant, "default_ttl_seconds", grant.max_ttl_seconds) if requested_ttl == null

default audience_config := {}

audience_config := data.jitmesh.audiences[audience]

default namespace_config := {}

namespace_config := data.jitmesh.namespaces[namespace]

deny_reasons contains reason if some reason in input_errors

# The conditions on a grant (time window, pod posture, approval) are only judged for a
# request that has a grant, so that a subject without one is told just that.
deny_reasons contains reason if {
	grant
	some reason in condition_reasons
}

deny_reasons contains sprintf("%s has no grant for audience %q", [subject, audience]) if not grant

deny_reasons contains sprintf("data error: the grant of audience %q to %s needs max_ttl_seconds, a positive integer", [audience, subject]) if {
	grant
	not valid_ttl_cap
}

valid_ttl_cap if positive_integer(grant.max_ttl_seconds)

deny_reasons contains sprintf("scope %q is not granted to %s for audience %q (granted: %s)", [scope, subject, audience, granted_list]) if {
	grant
	some scope in (requested_scopes - grant_scopes)
	granted_list := scope_list(grant_scopes)
}

scope_list(scopes) := concat(" ", sort(scopes)) if count(scopes) > 0

scope_list(scopes) := "none" if count(scopes) == 0

# --- time window: data.jitmesh.audiences[audience].time_window, in UTC, [start, end)

condition_reasons contains sprintf("audience %q is time-restricted and input.context.time is missing or not an RFC 3339 time", [audience]) if {
	audience_config.time_window
	not request_time_ns
}

condition_reasons contains sprintf("audience %q is only available %s UTC; it is %s %s UTC", [audience, window_text(window), weekday, clock]) if {
	window := audience_config.time_window
	weekday := time.weekday(request_time_ns)
	[hour, minute, _] := time.clock(request_time_ns)
	clock := sprintf("%02d:%02d", [hour, minute])
	not within_window(window, weekday, clock)
}

window_text(window) := sprintf("%s %v-%v", [concat(",", days), start, end]) if {
	is_object(window)
	days := [d | some d in object.get(window, "weekdays", []); is_string(d)]
	start := object.get(window, "start_utc", "?")
	end := object.get(window, "end_utc", "?")
}

window_text(window) := sprintf("(data error: time_window %v is not an object)", [window]) if not is_object(window)

# "HH:MM" strings compare in time order.
within_window(window, weekday, clock) if {
	weekday in window.weekdays
	clock >= window.start_utc
	clock < window.end_utc
}

request_time_ns := time.parse_rfc3339_ns(input.context.time) if parseable_rfc3339(input.context.time)

# What time.parse_rfc3339_ns accepts, checked first so that it never fails.
parseable_rfc3339(t) if {
	is_string(t)
	[[_, year, month, day, hour, minute, second, _, _, offset_hour, offset_minute]] := regex.find_all_string_submatch_n(
		`^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?(Z|[+-]([0-9]{2}):([0-9]{2}))$`,
		t, 1,
	)
	year >= "1900" # time.parse_rfc3339_ns needs int64 nanoseconds since 1970
	year <= "2199"
	month >= "01"
	month <= "12"
	day >= "01"
	day <= days_in_month(year, month)
	hour <= "23"
	minute <= "59"
	second <= "59"
	offset_hour <= "23"
	offset_minute <= "59"
}

days_in_month(_, month) := "31" if month in {"01", "03", "05", "07", "08", "10", "12"}

days_in_month(_, month) := "30" if month in {"04", "06", "09", "11"}

days_in_month(year, "02") := "29" if leap_year(year)

days_in_month(year, "02") := "28" if not leap_year(year)

leap_year(year) if {
	n := year_number(year)
	n % 4 == 0
	not n % 100 == 0
}

leap_year(year) if year_number(year) % 400 == 0

# to_number refuses leading zeros.
year_number(year) := 0 if trim_left(year, "0") == ""

year_number(year) := to_number(trim_left(year, "0")) if trim_left(year, "0") != ""

# --- pod posture

condition_reasons contains sprintf("audience %q requires a pod-bound ServiceAccount token; this one is not bound to a pod", [audience]) if {
	audience_config.pod_bound_required == true
	not pod_bound
}

condition_reasons contains sprintf("namespace %q requires digest-pinned images, but the pod's images are unknown (%s)", [namespace, why]) if {
	namespace_config.require_image_digest == true
	some why in unknown_images
}

unknown_images contains "the token is not bound to a pod" if pod == null

unknown_images contains "input.subject.pod.images is not a non-empty array" if {
	is_object(pod)
	not known_images
}

known_images if {
	is_array(pod.images)
	count(pod.images) > 0
}

condition_reasons contains sprintf("image %v is not pinned by digest; namespace %q requires <image>@sha256:<digest>", [image, namespace]) if {
	namespace_config.require_image_digest == true
	known_images
	some image in pod.images
	not pinned_by_digest(image)
}

pinned_by_digest(image) if {
	is_string(image)
	regex.match(`@sha256:[0-9a-f]{64}$`, image)
}

# --- human approval: data.jitmesh.audiences[audience].approval_required

approval_refused if {
	audience_config.approval_required == true
	input.approval.approved == false
}

condition_reasons contains sprintf("the approval for %s to reach audience %q was refused", [subject, audience]) if approval_refused

# --- verifiers: which audiences a workload may serve (docs/contract.md §7)
# The broker asks POST /v1/data/jitmesh/authz/serves with {"subject": ...} (the same subject
# document as above) when an access proxy subscribes to the revocation events of the
# audiences it serves. data.jitmesh.serves[namespace][service_account] lists them.

default serves := []

serves := sort([aud |
	some aud in data.jitmesh.serves[input.subject.namespace][input.subject.service_account]
	is_string(aud)
]) if {
	is_string(input.subject.namespace)
	is_string(input.subject.service_account)
	is_array(data.jitmesh.serves[input.subject.namespace][input.subject.service_account])
}
