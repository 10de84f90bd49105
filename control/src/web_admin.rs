//! The administrator console's policy pages: approved and blocked senders, IP lists,
//! inspection thresholds and actions, rules with their hit counts, recipient directories
//! (CSV import with each bad line named), and the engine's queue (list, hold, release,
//! delete, retry now) through its admin sockets. Changes go through the same functions
//! as the API, with the same checks.

// A page that cannot go on answers with its response.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use minijinja::context;
use serde_json::{Value, json};

use crate::accounts::Role;
use crate::api::{
    ApiError, AppState, IpQuery, SenderQuery, blocking, engine_metrics, engine_request_core, lock,
    publish,
};
use crate::web::{Session, audit, page_error, render, session, url_encode};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/policy", get(policy))
        .route("/policy/senders", post(sender_op))
        .route("/policy/ips", post(ip_op))
        .route("/policy/verdicts", post(verdicts_op))
        .route("/directory/{domain}", get(directory).post(import))
        .route("/queue", get(queue))
        .route("/queue/flush", post(flush))
        .route("/queue/{id}/{op}", post(queue_op))
}

const ACTIONS: [&str; 5] = ["deliver", "tag", "strip", "quarantine", "reject"];
const VERDICT_FIELDS: [&str; 9] = [
    "tag_threshold",
    "spam_threshold",
    "spam_action",
    "phishing_action",
    "virus_action",
    "malformed_action",
    "dmarc_reject_action",
    "dmarc_quarantine_action",
    "subject_tag",
];

/// Hit counters summed over every engine: `metric{rule="name"} n` lines.
fn hits(state: &AppState, metric: &str) -> (HashMap<String, u64>, Option<String>) {
    let mut out: HashMap<String, u64> = HashMap::new();
    let mut error = None;
    let prefix = format!("{metric}{{rule=\"");
    for e in &state.engines {
        match engine_metrics(*e) {
            Ok(text) => {
                for line in text.lines() {
                    let Some(rest) = line.strip_prefix(&prefix) else {
                        continue;
                    };
                    let Some((name, value)) = rest.split_once("\"} ") else {
                        continue;
                    };
                    let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
                    *out.entry(name.to_string()).or_default() += n;
                }
            }
            Err(err) => error = Some(format!("{e}: {err}")),
        }
    }
    (out, error)
}

/// A rule's conditions in one line.
fn when(rule: &Value) -> String {
    let Some(map) = rule.as_object() else {
        return String::new();
    };
    let parts: Vec<String> = map
        .iter()
        .filter(|(k, v)| {
            !matches!(k.as_str(), "name" | "action" | "stop" | "subject_tag")
                && !v.is_null()
                && v.as_array().is_none_or(|a| !a.is_empty())
        })
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    if parts.is_empty() {
        "every message".into()
    } else {
        parts.join("; ")
    }
}

async fn policy_page(
    state: &Arc<AppState>,
    s: &Session,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let (st, actor) = (state.clone(), s.actor.clone());
    let found = blocking(move || {
        let (senders, ips, verdicts, rules, domains, inspection) = {
            let store = lock(&st.store);
            (
                store.senders()?,
                store.ips()?,
                store.verdicts()?,
                store.policy_rules()?,
                store.domains()?,
                store.artifact_info("rules")?,
            )
        };
        let (policy_hits, e1) = hits(&st, "bulwark_policy_rule_hits_total");
        let (content_hits, e2) = hits(&st, "bulwark_inspection_rule_hits_total");
        let senders: Vec<_> = senders
            .into_iter()
            .filter(|r| match &r.domain {
                None => actor.unrestricted(),
                Some(d) => actor.covers(d),
            })
            .collect();
        let global = verdicts
            .into_iter()
            .find(|(scope, _)| scope.is_empty())
            .map(|(_, v)| json!(v))
            .unwrap_or_else(|| json!({}));
        let v: HashMap<&str, String> = VERDICT_FIELDS
            .iter()
            .map(|k| {
                let shown = match &global[*k] {
                    Value::Null => String::new(),
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                (*k, shown)
            })
            .collect();
        let rules: Vec<Value> = rules
            .iter()
            .map(|r| {
                let j = json!(r);
                json!({"name": r.name, "action": r.action, "when": when(&j),
                       "hits": policy_hits.get(&r.name).copied().unwrap_or(0)})
            })
            .collect();
        let mut content: Vec<(String, u64)> =
            content_hits.into_iter().filter(|(_, n)| *n > 0).collect();
        content.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        content.truncate(25);
        let content: Vec<Value> = content
            .into_iter()
            .map(|(name, hits)| json!({"name": name, "hits": hits}))
            .collect();
        let domains: Vec<String> = domains
            .into_iter()
            .map(|d| d.name)
            .filter(|d| actor.covers(d))
            .collect();
        let inspection = inspection.map(
            |a| json!({"sha256": a.sha256, "updated": crate::tracking::rfc3339(a.updated * 1000)}),
        );
        Ok(context! {
            senders, ips, v, rules, domains, inspection,
            content_rules => content,
            engines_error => e1.or(e2),
        })
    })
    .await;
    match found {
        Ok(ctx) => render(
            "policy.html",
            context! {
                ..s.base("policy"),
                ..ctx,
                ..context! {
                    notice, error,
                    actions => ACTIONS,
                    global => s.actor.unrestricted(),
                    can_edit => s.actor.can(Role::Policy),
                }
            },
            None,
        ),
        Err(e) => page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.text()),
    }
}

async fn policy(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match session(&state, &headers, "/policy").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    policy_page(&state, &s, q.get("done").cloned(), None).await
}

/// The session of a policy change: signed in, the form's CSRF token, the policy role.
async fn editor(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Session, Response> {
    let s = session(state, headers, "/policy").await?;
    s.check(form)?;
    if !s.actor.can(Role::Policy) {
        return Err(page_error(
            StatusCode::FORBIDDEN,
            "Your account may not change the policy (that takes the policy role).",
        ));
    }
    Ok(s)
}

/// After a change: back to the page with a notice, or the page again with the error.
async fn answer(
    state: &Arc<AppState>,
    s: &Session,
    result: Result<String, ApiError>,
    what: &str,
    target: &str,
    anchor: &str,
) -> Response {
    match result {
        Ok(done) => {
            audit(state, &s.actor, what, target, "console").await;
            Redirect::to(&format!("/policy?done={}#{anchor}", url_encode(&done))).into_response()
        }
        Err(e) => {
            let mut r = policy_page(state, s, None, Some(e.text())).await;
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        }
    }
}

async fn sender_op(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match editor(&state, &headers, &form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let get = |k: &str| {
        form.get(k)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let (pattern, domain) = (get("pattern"), get("domain"));
    let domain = (!domain.is_empty()).then_some(domain);
    let ext = Extension(s.actor.clone());
    let (result, what) = if get("op") == "remove" {
        let q = SenderQuery {
            pattern: Some(pattern.clone()),
            domain: domain.clone(),
        };
        (
            crate::api::remove_sender(State(state.clone()), ext, Query(q))
                .await
                .map(|_| format!("{pattern} removed")),
            "sender remove",
        )
    } else {
        let body = json!({"pattern": pattern, "action": get("action"), "domain": domain});
        (
            crate::api::add_sender(State(state.clone()), ext, Ok(Json(body)))
                .await
                .map(|_| format!("{} {}", pattern.to_ascii_lowercase(), get("action"))),
            "sender add",
        )
    };
    answer(&state, &s, result, what, &pattern, "senders").await
}

/// IP lists and thresholds are settings of every domain.
fn global_only(s: &Session) -> Result<(), ApiError> {
    if s.actor.unrestricted() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{} is limited to domains; this is a setting of every domain",
            s.actor.name
        )))
    }
}

async fn ip_op(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match editor(&state, &headers, &form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let get = |k: &str| {
        form.get(k)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let cidr = get("cidr");
    let result = match global_only(&s) {
        Err(e) => Err(e),
        Ok(()) if get("op") == "remove" => crate::api::remove_ip(
            State(state.clone()),
            Query(IpQuery {
                cidr: Some(cidr.clone()),
            }),
        )
        .await
        .map(|_| format!("{cidr} removed")),
        Ok(()) => crate::api::add_ip(
            State(state.clone()),
            Ok(Json(json!({"cidr": cidr, "action": get("action")}))),
        )
        .await
        .map(|(_, Json(v))| format!("{} {}", v["cidr"].as_str().unwrap_or(""), get("action"))),
    };
    answer(&state, &s, result, "ip", &cidr, "ips").await
}

async fn verdicts_op(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match editor(&state, &headers, &form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let result = async {
        global_only(&s)?;
        // Keys this form does not show keep their values.
        let st = state.clone();
        let current = blocking(move || Ok(lock(&st.store).verdicts()?)).await?;
        let mut spec = current
            .into_iter()
            .find(|(scope, _)| scope.is_empty())
            .map(|(_, v)| json!(v))
            .unwrap_or_else(|| json!({}));
        let Some(map) = spec.as_object_mut() else {
            return Err(ApiError::internal("stored verdicts are not an object"));
        };
        for key in VERDICT_FIELDS {
            let raw = form.get(key).map(|v| v.trim()).unwrap_or("");
            let value = if raw.is_empty() && key != "subject_tag" {
                None
            } else if key.ends_with("_threshold") {
                let n: f64 = raw
                    .parse()
                    .map_err(|_| ApiError::bad(key, format!("{key}: {raw:?} is not a number")))?;
                Some(json!(n))
            } else if key == "subject_tag" {
                // A tag keeps its trailing space ("[SPAM] ").
                let t = form.get(key).cloned().unwrap_or_default();
                (!t.is_empty()).then(|| json!(t))
            } else {
                Some(json!(raw))
            };
            match value {
                Some(v) => map.insert(key.to_string(), v),
                None => map.remove(key),
            };
        }
        let Json(v) = crate::api::put_global_verdicts(State(state.clone()), Ok(Json(spec))).await?;
        Ok(format!(
            "Thresholds and actions saved (policy generation {})",
            v["generation"]
        ))
    }
    .await;
    answer(&state, &s, result, "verdicts", "global", "thresholds").await
}

async fn directory_page(
    state: &Arc<AppState>,
    s: &Session,
    domain: String,
    extra: minijinja::Value,
    status: StatusCode,
) -> Response {
    if !s.actor.covers(&domain) {
        return page_error(StatusCode::NOT_FOUND, "No such domain.");
    }
    let (st, d) = (state.clone(), domain.clone());
    let found = blocking(move || {
        let store = lock(&st.store);
        if !store.domains()?.iter().any(|x| x.name == d) {
            return Err(ApiError::not_found("No such domain."));
        }
        Ok(store.directory(&d)?)
    })
    .await;
    match found {
        Ok(entries) => {
            let mut r = render(
                "directory.html",
                context! {
                    ..s.base("domains"),
                    ..extra,
                    ..context! { domain, entries, can_edit => s.actor.can(Role::Policy) }
                },
                None,
            );
            *r.status_mut() = status;
            r
        }
        Err(e) => page_error(StatusCode::NOT_FOUND, &e.text()),
    }
}

async fn directory(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(domain): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let here = format!("/directory/{domain}");
    let s = match session(&state, &headers, &here).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    directory_page(
        &state,
        &s,
        domain.to_ascii_lowercase(),
        context! { notice => q.get("done") },
        StatusCode::OK,
    )
    .await
}

/// A CSV import: with a bad line, nothing is imported and every bad line is shown
/// (unless the good lines are wanted anyway).
async fn import(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(domain): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let domain = domain.to_ascii_lowercase();
    let here = format!("/directory/{domain}");
    let s = match session(&state, &headers, &here).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = s.check(&form) {
        return r;
    }
    if !s.actor.can(Role::Policy) || !s.actor.covers(&domain) {
        return page_error(
            StatusCode::FORBIDDEN,
            "Your account may not change this domain's directory.",
        );
    }
    let csv = form.get("csv").cloned().unwrap_or_default();
    let skip = form.contains_key("skip_invalid");
    let (entries, errors) = crate::csv::parse(&csv, &domain);
    if !errors.is_empty() && !skip {
        let n = errors.len();
        return directory_page(
            &state,
            &s,
            domain,
            context! {
                csv, skip_invalid => skip, line_errors => errors,
                error => format!("{n} line{} cannot be imported, so nothing was: correct {}, or tick the box to import the rest.",
                    if n == 1 { "" } else { "s" }, if n == 1 { "it" } else { "them" }),
            },
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let (st, d, n) = (state.clone(), domain.clone(), entries.len());
    let done = blocking(move || {
        lock(&st.store).import_directory(&d, &entries)?;
        publish(&st).map(|p| p.generation)
    })
    .await;
    match done {
        Ok(_) => {
            audit(
                &state,
                &s.actor,
                "directory import",
                &domain,
                &format!("{n} addresses, {} lines skipped", errors.len()),
            )
            .await;
            let text = format!(
                "{n} address{} imported{}",
                if n == 1 { "" } else { "es" },
                if errors.is_empty() {
                    String::new()
                } else {
                    format!("; {} bad lines skipped", errors.len())
                }
            );
            Redirect::to(&format!("{here}?done={}", url_encode(&text))).into_response()
        }
        Err(e) => {
            directory_page(
                &state,
                &s,
                domain,
                context! { csv, error => e.text() },
                StatusCode::BAD_REQUEST,
            )
            .await
        }
    }
}

/// How many cores the engine has: their admin sockets are core-0.sock, core-1.sock…
/// (at least one: asking core 0 names the problem when there is none).
fn cores(state: &AppState) -> usize {
    let exists = |core: usize| {
        state
            .engine_admin_dir
            .as_ref()
            .is_some_and(|d| d.join(format!("core-{core}.sock")).exists())
    };
    (1..).find(|c| !exists(*c)).unwrap_or(1)
}

/// Every core's part of the queue.
fn queue_list(state: &AppState) -> Result<Vec<Value>, ApiError> {
    let mut all = Vec::new();
    for core in 0..cores(state) {
        let v = engine_request_core(state, core, json!({"op": "list"}))?;
        all.extend(v["entries"].as_array().cloned().unwrap_or_default());
    }
    Ok(all)
}

async fn admin_only(state: &Arc<AppState>, headers: &HeaderMap) -> Result<Session, Response> {
    let s = session(state, headers, "/queue").await?;
    if !s.admin() {
        return Err(page_error(
            StatusCode::FORBIDDEN,
            "Only an administrator of every domain sees the queue.",
        ));
    }
    Ok(s)
}

async fn queue(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match admin_only(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let st = state.clone();
    let mut entries = match blocking(move || queue_list(&st)).await {
        Ok(e) => e,
        Err(e) => return page_error(StatusCode::BAD_GATEWAY, &e.text()),
    };
    entries.sort_by_key(|e| e["arrival"].as_i64().unwrap_or(0));
    let held = entries.iter().filter(|e| e["state"] == "held").count();
    for e in &mut entries {
        e["time"] = crate::tracking::rfc3339(e["arrival"].as_i64().unwrap_or(0) * 1000).into();
        if let Some(n) = e["next_attempt"].as_i64() {
            e["next"] = crate::tracking::rfc3339(n * 1000).into();
        }
    }
    render(
        "queue.html",
        context! {
            ..s.base("queue"),
            ..context! { entries, held, notice => q.get("done") }
        },
        None,
    )
}

async fn queue_op(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, op)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match admin_only(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = s.check(&form) {
        return r;
    }
    if !matches!(op.as_str(), "hold" | "release" | "delete") {
        return page_error(StatusCode::NOT_FOUND, "No such operation.");
    }
    let core: usize = form.get("core").and_then(|c| c.parse().ok()).unwrap_or(0);
    let (st, i, o) = (state.clone(), id.clone(), op.clone());
    let done = blocking(move || engine_request_core(&st, core, json!({"op": o, "id": i}))).await;
    match done {
        Ok(_) => {
            audit(&state, &s.actor, &format!("queue {op}"), &id, "console").await;
            let verb = match op.as_str() {
                "hold" => "held",
                "release" => "released",
                _ => "deleted",
            };
            Redirect::to(&format!(
                "/queue?done={}",
                url_encode(&format!("{id} {verb}"))
            ))
            .into_response()
        }
        Err(e) => page_error(StatusCode::BAD_GATEWAY, &e.text()),
    }
}

async fn flush(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match admin_only(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = s.check(&form) {
        return r;
    }
    let domain = form
        .get("domain")
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty());
    let (st, d) = (state.clone(), domain.clone());
    let done = blocking(move || {
        let mut n = 0;
        for core in 0..cores(&st) {
            let v = engine_request_core(&st, core, json!({"op": "flush", "domain": d}))?;
            n += v["messages"].as_u64().unwrap_or(0);
        }
        Ok(n)
    })
    .await;
    match done {
        Ok(n) => {
            let scope = domain.as_deref().unwrap_or("every domain");
            audit(&state, &s.actor, "queue flush", scope, "console").await;
            Redirect::to(&format!(
                "/queue?done={}",
                url_encode(&format!("{n} messages for {scope} retried now"))
            ))
            .into_response()
        }
        Err(e) => page_error(StatusCode::BAD_GATEWAY, &e.text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_import_lists_its_bad_lines() {
        let (_, errors) = crate::csv::parse(
            "Email,Name\r\nbob@example.test,Bob\r\nnot-an-address,X\r\n",
            "example.test",
        );
        let r = render(
            "directory.html",
            context! { domain => "example.test", entries => Vec::<String>::new(), line_errors => errors, csrf => "x" },
            None,
        );
        let body = futures_body(r);
        assert!(body.contains("<td>3</td>"), "{body}");
    }

    fn futures_body(r: Response) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(axum::body::to_bytes(r.into_body(), 1 << 20))
            .unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
