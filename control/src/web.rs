//! The administrator console: server-rendered pages on the control service's listen
//! address. Sessions are a random token in an HttpOnly, SameSite=Strict cookie (its hash
//! stored); every form that changes something carries the session's CSRF token; every
//! page is sent with a Content-Security-Policy that allows only this origin's script and
//! style. Templates (minijinja) escape everything they print.

// A page that cannot go on answers with its response: the Err of these helpers.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use minijinja::{Environment, context};
use serde::Serialize;
use serde_json::json;

use crate::accounts::{Actor, Role, parse_domains};
use crate::api::{ApiError, AppState, blocking, engine_request, lock};
use crate::tracking::sqlite::now_ms;
use crate::tracking::{Row, rfc3339};

pub const SESSION_COOKIE: &str = "bulwark_session";
const LOGIN_COOKIE: &str = "bulwark_login";

static TEMPLATES: OnceLock<Environment<'static>> = OnceLock::new();

fn templates() -> &'static Environment<'static> {
    TEMPLATES.get_or_init(|| {
        let mut env = Environment::new();
        for (name, text) in [
            ("base.html", include_str!("../templates/base.html")),
            ("login.html", include_str!("../templates/login.html")),
            (
                "dashboard.html",
                include_str!("../templates/dashboard.html"),
            ),
            ("tracking.html", include_str!("../templates/tracking.html")),
            ("timeline.html", include_str!("../templates/timeline.html")),
            (
                "quarantine_admin.html",
                include_str!("../templates/quarantine_admin.html"),
            ),
            ("preview.html", include_str!("../templates/preview.html")),
            ("domains.html", include_str!("../templates/domains.html")),
            ("accounts.html", include_str!("../templates/accounts.html")),
            ("audit.html", include_str!("../templates/audit.html")),
            ("message.html", include_str!("../templates/message.html")),
            (
                "user/base.html",
                include_str!("../templates/user/base.html"),
            ),
            (
                "user/login.html",
                include_str!("../templates/user/login.html"),
            ),
            (
                "user/register.html",
                include_str!("../templates/user/register.html"),
            ),
            (
                "user/password.html",
                include_str!("../templates/user/password.html"),
            ),
            (
                "user/list.html",
                include_str!("../templates/user/list.html"),
            ),
            (
                "user/preview.html",
                include_str!("../templates/user/preview.html"),
            ),
            (
                "user/settings.html",
                include_str!("../templates/user/settings.html"),
            ),
            (
                "user/release.html",
                include_str!("../templates/user/release.html"),
            ),
            (
                "user/message.html",
                include_str!("../templates/user/message.html"),
            ),
            ("policy.html", include_str!("../templates/policy.html")),
            (
                "directory.html",
                include_str!("../templates/directory.html"),
            ),
            ("queue.html", include_str!("../templates/queue.html")),
        ] {
            // Templates are part of the binary: one that does not parse fails the tests.
            if let Err(e) = env.add_template(name, text) {
                tracing::error!("template {name}: {e}");
            }
        }
        env
    })
}

/// Security headers on every page.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Renders `name` (or only its `block`, for a partial update) with `ctx`.
pub fn render(name: &str, ctx: minijinja::Value, block: Option<&str>) -> Response {
    let out = templates().get_template(name).and_then(|t| match block {
        Some(b) => t
            .render_captured(&ctx)?
            .with_state_mut(|st| st.render_block(b)),
        None => t.render(&ctx),
    });
    match out {
        Ok(html) => {
            secure(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
        }
        Err(e) => {
            tracing::error!("rendering {name}: {e:#}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn set_cookie(state: &AppState, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if state.cookie_secure {
        c.push_str("; Secure");
    }
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Equal in constant time (CSRF tokens).
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A signed-in page's caller.
pub struct Session {
    pub actor: Actor,
    pub csrf: String,
}

impl Session {
    pub(crate) fn admin(&self) -> bool {
        self.actor.can(Role::Admin) && self.actor.unrestricted()
    }

    /// The context every page has.
    pub(crate) fn base(&self, nav: &str) -> minijinja::Value {
        context! {
            actor => self.actor,
            csrf => self.csrf,
            admin => self.admin(),
            nav => nav,
        }
    }

    pub(crate) fn check(&self, form: &HashMap<String, String>) -> Result<(), Response> {
        match form.get("csrf") {
            Some(t) if same(t, &self.csrf) => Ok(()),
            _ => Err(page_error(
                StatusCode::FORBIDDEN,
                "This form is out of date (its security token does not match your session). Go back, reload the page and try again.",
            )),
        }
    }
}

pub(crate) fn page_error(status: StatusCode, text: &str) -> Response {
    let mut r = render(
        "message.html",
        context! { title => "Not done", text => text, link => "/", link_text => "Back to the console" },
        None,
    );
    *r.status_mut() = status;
    r
}

/// The session of the request, or a redirect to the login page.
pub(crate) async fn session(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    here: &str,
) -> Result<Session, Response> {
    let to_login = || {
        let next: String = url_encode(here);
        Redirect::to(&format!("/login?next={next}")).into_response()
    };
    let Some(token) = cookie(headers, SESSION_COOKIE) else {
        return Err(to_login());
    };
    let st = state.clone();
    let found = blocking(move || {
        lock(&st.store)
            .session(&token)
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await;
    match found {
        Ok(Some((actor, csrf))) => Ok(Session { actor, csrf }),
        Ok(None) => Err(to_login()),
        Err(e) => Err(page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.text())),
    }
}

pub(crate) fn url_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Only a path of this site may be the place to go after login.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(dashboard))
        .route("/tracking", get(tracking))
        .route("/tracking/{qid}", get(timeline))
        .route("/held", get(held))
        .route("/held/{id}", get(held_preview))
        .route("/held/{id}/{op}", post(held_op))
        .route("/domains", get(domains).post(add_domain))
        .route("/domains/{name}/{op}", post(domain_op))
        .route("/accounts", get(accounts).post(create_account))
        .route("/accounts/{name}/delete", post(delete_account))
        .route("/tokens", post(create_token))
        .route("/tokens/{id}/delete", post(delete_token))
        .route("/audit", get(audit_log_page))
        .route("/end-users/remove", post(remove_end_user))
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../static/app.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../static/app.js"),
    )
        .into_response()
}

pub(crate) fn random_hex() -> String {
    let mut raw = [0u8; 24];
    let _ = getrandom::fill(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

async fn login_page(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    login_form(
        &state,
        q.get("next").map_or("/", |n| safe_next(n)),
        "",
        None,
    )
}

fn login_form(state: &AppState, next: &str, name: &str, error: Option<&str>) -> Response {
    let token = random_hex();
    let mut r = render(
        "login.html",
        context! { login_csrf => token, next => next, name => name, error => error },
        None,
    );
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, &token, Some(1800)),
    );
    r
}

async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let next = safe_next(form.get("next").map_or("/", String::as_str)).to_string();
    let name = form.get("name").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !form.get("csrf").is_some_and(|t| same(t, &expected)) {
        return login_form(
            &state,
            &next,
            &name,
            Some("The sign-in form expired; please try again."),
        );
    }
    let ip = peer.ip().to_string();
    if let Some(wait) = state.throttle.blocked(&name, &ip) {
        let mut r = login_form(
            &state,
            &next,
            &name,
            Some(&format!(
                "Too many failed sign-ins. Try again in {} minutes.",
                wait.as_secs().div_ceil(60)
            )),
        );
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        return r;
    }
    let st = state.clone();
    let (n, p) = (name.clone(), password);
    let result = blocking(move || {
        let record = lock(&st.store)
            .login_record(&n)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        // The password is checked without holding the store.
        let Some(actor) = crate::accounts::check_login(record, &p) else {
            return Ok(None);
        };
        let Some(id) = actor.account else {
            return Ok(None);
        };
        let mut store = lock(&st.store);
        let (token, _) = store
            .create_session(id)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        store.audit(
            &actor.name,
            "login",
            "console",
            &format!("from {}", peer.ip()),
        );
        Ok(Some(token))
    })
    .await;
    match result {
        Ok(Some(token)) => {
            state.throttle.succeeded(&name);
            let mut r = Redirect::to(&next).into_response();
            r.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(
                    &state,
                    SESSION_COOKIE,
                    &token,
                    Some(crate::accounts::SESSION_LIFETIME.as_secs()),
                ),
            );
            r.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(&state, LOGIN_COOKIE, "", Some(0)),
            );
            r
        }
        Ok(None) => {
            state.throttle.failed(&name, &ip);
            tracing::info!(%ip, name = %name, "console sign-in failed");
            let mut r = login_form(
                &state,
                &next,
                &name,
                Some("The name or the password is not right."),
            );
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
        Err(e) => page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.text()),
    }
}

async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Ok(s) = session(&state, &headers, "/").await {
        if let Err(r) = s.check(&form) {
            return r;
        }
        if let Some(token) = cookie(&headers, SESSION_COOKIE) {
            let st = state.clone();
            let _ = blocking(move || {
                let _ = lock(&st.store).end_session(&token);
                Ok(())
            })
            .await;
        }
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", Some(0)),
    );
    r
}

#[derive(Serialize)]
struct Bar {
    x: f64,
    y_accepted: f64,
    h_accepted: f64,
    y_blocked: f64,
    h_blocked: f64,
    accepted: i64,
    blocked: i64,
    label: String,
}

async fn dashboard(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match session(&state, &headers, "/").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let hours: i64 = q
        .get("hours")
        .and_then(|h| h.parse().ok())
        .filter(|h| [24, 168, 720].contains(h))
        .unwrap_or(24);
    let now = now_ms();
    let since = (now / 3_600_000 - hours + 1) * 3_600_000;
    let store = state.tracking.clone();
    // A domain-limited account sees the mail to its domains.
    let domains = s.actor.domains.clone();
    let volume = blocking(move || {
        store
            .volume(since, now, domains.as_deref())
            .map_err(ApiError::internal)
    })
    .await
    .unwrap_or_default();
    let (width, height) = (960.0, 200.0);
    let n = hours as usize;
    let slot = width / n as f64;
    let mut per_hour = vec![(0i64, 0i64); n];
    let mut totals = crate::tracking::Volume::default();
    let mut verdicts: std::collections::BTreeMap<String, i64> = Default::default();
    for v in &volume {
        let i = ((v.hour - since) / 3_600_000) as usize;
        if let Some(p) = per_hour.get_mut(i) {
            *p = (v.accepted, v.blocked);
        }
        totals.accepted += v.accepted;
        totals.blocked += v.blocked;
        totals.delivered += v.delivered;
        totals.quarantined += v.quarantined;
        for (k, c) in &v.verdicts {
            *verdicts.entry(k.clone()).or_default() += c;
        }
    }
    let max = per_hour
        .iter()
        .map(|(a, b)| a + b)
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = height / max as f64;
    let bars: Vec<Bar> = per_hour
        .iter()
        .enumerate()
        .map(|(i, (a, b))| {
            let ha = *a as f64 * scale;
            let hb = *b as f64 * scale;
            Bar {
                x: i as f64 * slot,
                y_accepted: height - ha,
                h_accepted: ha,
                y_blocked: height - ha - hb,
                h_blocked: hb,
                accepted: *a,
                blocked: *b,
                label: rfc3339(since + i as i64 * 3_600_000),
            }
        })
        .collect();
    let step = (n / 6).max(1);
    let ticks: Vec<serde_json::Value> = (0..n)
        .step_by(step)
        .map(|i| {
            let t = rfc3339(since + i as i64 * 3_600_000);
            let label = if hours > 48 {
                t[5..10].to_string()
            } else {
                t[11..16].to_string()
            };
            json!({"x": i as f64 * slot, "label": label})
        })
        .collect();
    let total: i64 = verdicts.values().sum::<i64>().max(1);
    let verdict_rows: Vec<serde_json::Value> = verdicts
        .iter()
        .map(|(k, c)| json!({"name": k, "count": c, "share": (c * 100 / total)}))
        .collect();
    let ing = state.tracking_stats.view();
    let ctx = context! {
        ..s.base("dashboard"),
        ..context! {
            hours => hours,
            totals => totals,
            chart => json!({"width": width, "height": height, "bar": (slot * 0.8).max(1.0), "bars": bars, "ticks": ticks, "max": max}),
            verdicts => verdict_rows,
            ingest => json!({
                "events": ing.events,
                "newest": if ing.newest_event > 0 { rfc3339(ing.newest_event) } else { "none yet".into() },
                "backlog": ing.backlog_bytes,
            }),
        }
    };
    render("dashboard.html", ctx, None)
}

/// A row as the pages show it.
fn row_view(r: &Row) -> serde_json::Value {
    let mut v = json!(r);
    v["time"] = rfc3339(r.first).into();
    v["score_text"] = r
        .score
        .map(|s| format!("{s:.1}"))
        .unwrap_or_default()
        .into();
    v
}

async fn tracking(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(mut q): Query<HashMap<String, String>>,
) -> Response {
    let s = match session(&state, &headers, "/tracking").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    q.retain(|_, v| !v.trim().is_empty());
    q.entry("traffic".into())
        .or_insert_with(|| "accepted".into());
    let partial = headers.contains_key("x-partial");
    let (rows, error, took) = match crate::api_tracking::parse_query(&q, now_ms()) {
        Ok(mut query) => {
            query.domains = s.actor.domains.clone();
            let store = state.tracking.clone();
            let t = std::time::Instant::now();
            match blocking(move || store.search(&query).map_err(ApiError::internal)).await {
                Ok(rows) => (rows, None, Some(t.elapsed().as_millis())),
                Err(e) => (Vec::new(), Some(e.text()), None),
            }
        }
        Err(e) => (Vec::new(), Some(e.text()), None),
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let f: HashMap<&str, &str> = [
        "traffic",
        "sender",
        "recipient",
        "subject",
        "ip",
        "qid",
        "since",
        "until",
        "verdict",
    ]
    .iter()
    .map(|k| (*k, q.get(*k).map_or("", String::as_str)))
    .collect();
    let ctx = context! {
        ..s.base("tracking"),
        ..context! {
            f => f,
            rows => rows.iter().map(row_view).collect::<Vec<_>>(),
            error_field => error.is_some(),
            search_error => error,
            took => took,
        }
    };
    let mut r = render("tracking.html", ctx, partial.then_some("results"));
    *r.status_mut() = status;
    r
}

async fn timeline(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(qid): Path<String>,
) -> Response {
    let s = match session(&state, &headers, &format!("/tracking/{}", url_encode(&qid))).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !crate::tracking::valid_qid(&qid) {
        return page_error(StatusCode::BAD_REQUEST, "That is not a queue id.");
    }
    let store = state.tracking.clone();
    let q = qid.clone();
    let found = blocking(move || store.timeline(&q).map_err(ApiError::internal)).await;
    let t = match found {
        Ok(Some(t)) if crate::api_tracking::visible(&s.actor, &t.message) => t,
        Ok(_) => {
            return page_error(
                StatusCode::NOT_FOUND,
                &format!("No message {qid} is tracked."),
            );
        }
        Err(e) => return page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.text()),
    };
    let m = &t.message;
    let events: Vec<serde_json::Value> = t
        .events
        .iter()
        .map(|e| {
            let at = e["t"].as_i64().unwrap_or(m.first);
            let mut detail = Vec::new();
            for k in [
                "rcpt",
                "dest",
                "reply",
                "stage",
                "by",
                "queued_as",
                "action",
            ] {
                if let Some(v) = e[k].as_str().filter(|v| !v.is_empty()) {
                    detail.push(format!("{k}: {v}"));
                }
            }
            if let Some(r) = e["rcpts"].as_array() {
                let l: Vec<&str> = r.iter().filter_map(|x| x.as_str()).collect();
                detail.push(format!("recipients: {}", l.join(", ")));
            }
            if let Some(d) = e["delay"].as_i64() {
                detail.push(format!("delay: {d} s"));
            }
            if let Some(a) = e["attempt"].as_i64() {
                detail.push(format!("attempt {a}"));
            }
            json!({
                "ev": e["ev"].as_str().unwrap_or(""),
                "time": rfc3339(at),
                "offset": format!("{:.3} s", (at - m.first) as f64 / 1000.0),
                "detail": detail.join(" · "),
            })
        })
        .collect();
    let ctx = context! {
        ..s.base("tracking"),
        ..context! {
            m => m,
            score => m.score.map(|x| format!("{x:.2}")),
            first => rfc3339(m.first),
            last => rfc3339(m.last),
            span => format!("{:.1} s", (m.last - m.first) as f64 / 1000.0),
            events => events,
        }
    };
    render("timeline.html", ctx, None)
}

/// Quarantined messages from the engine (core 0 keeps the store's desk).
fn quarantine_list(state: &AppState) -> Result<Vec<serde_json::Value>, ApiError> {
    let v = engine_request(state, json!({"op": "quarantine-list"}))?;
    Ok(v["entries"].as_array().cloned().unwrap_or_default())
}

/// Whether `actor` may see a quarantined entry (any of its recipients in its domains).
fn entry_visible(actor: &Actor, e: &serde_json::Value) -> bool {
    actor.unrestricted()
        || e["recipients"].as_array().is_some_and(|r| {
            r.iter()
                .filter_map(|x| x.as_str())
                .any(|a| actor.covers_address(a))
        })
}

async fn held(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match session(&state, &headers, "/held").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let st = state.clone();
    let entries = match blocking(move || quarantine_list(&st)).await {
        Ok(e) => e,
        Err(e) => return page_error(StatusCode::BAD_GATEWAY, &e.text()),
    };
    let want = |k: &str| {
        q.get(k)
            .map(|v| v.trim().to_lowercase())
            .filter(|v| !v.is_empty())
    };
    let (rcpt, sender, subject) = (want("recipient"), want("sender"), want("subject"));
    let mut shown: Vec<serde_json::Value> = entries
        .into_iter()
        .filter(|e| entry_visible(&s.actor, e))
        .filter(|e| {
            rcpt.as_ref().is_none_or(|r| {
                e["recipients"].as_array().is_some_and(|l| {
                    l.iter()
                        .filter_map(|x| x.as_str())
                        .any(|a| a.to_lowercase().contains(r.as_str()))
                })
            }) && sender.as_ref().is_none_or(|x| {
                e["sender"]
                    .as_str()
                    .unwrap_or("")
                    .to_lowercase()
                    .contains(x.as_str())
            }) && subject.as_ref().is_none_or(|x| {
                e["subject"]
                    .as_str()
                    .unwrap_or("")
                    .to_lowercase()
                    .contains(x.as_str())
            })
        })
        .collect();
    shown.sort_by_key(|e| std::cmp::Reverse(e["arrival"].as_i64().unwrap_or(0)));
    for e in &mut shown {
        e["time"] = rfc3339(e["arrival"].as_i64().unwrap_or(0) * 1000).into();
        e["score"] = format!("{:.1}", e["score"].as_f64().unwrap_or(0.0)).into();
    }
    let f: HashMap<&str, &str> = ["recipient", "sender", "subject"]
        .iter()
        .map(|k| (*k, q.get(*k).map_or("", String::as_str)))
        .collect();
    let ctx = context! {
        ..s.base("quarantine"),
        ..context! {
            entries => shown,
            f => f,
            can_release => s.actor.can(Role::Quarantine),
            notice => q.get("done"),
        }
    };
    render("quarantine_admin.html", ctx, None)
}

/// A quarantined message as safe text: its header fields, its text (HTML turned into
/// text), its attachments' names. Nothing in it is a link or loads anything.
pub fn preview_text(raw: &str) -> (String, String, String, String, String, Vec<String>) {
    let parsed = mail_parser::MessageParser::default().parse(raw.as_bytes());
    let Some(m) = parsed else {
        return (
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            raw.chars().take(100_000).collect(),
            Vec::new(),
        );
    };
    let addr = |a: Option<&mail_parser::Address>| -> String {
        a.map(|a| {
            a.iter()
                .map(|x| match (x.name(), x.address()) {
                    (Some(n), Some(e)) => format!("{n} <{e}>"),
                    (None, Some(e)) => e.to_string(),
                    (Some(n), None) => n.to_string(),
                    _ => String::new(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
    };
    let body = m
        .body_text(0)
        .map(|b| b.into_owned())
        .unwrap_or_default()
        .chars()
        .take(100_000)
        .collect();
    let attachments = m
        .attachments()
        .map(|a| {
            mail_parser::MimeHeaders::attachment_name(a)
                .unwrap_or("(unnamed)")
                .to_string()
        })
        .collect();
    (
        m.subject().unwrap_or_default().to_string(),
        addr(m.from()),
        addr(m.to()),
        m.date().map(|d| d.to_rfc3339()).unwrap_or_default(),
        body,
        attachments,
    )
}

async fn held_preview(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = match session(&state, &headers, "/held").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let st = state.clone();
    let i = id.clone();
    let shown =
        blocking(move || engine_request(&st, json!({"op": "quarantine-show", "id": i}))).await;
    let v = match shown {
        Ok(v) => v,
        Err(e) => return page_error(StatusCode::NOT_FOUND, &e.text()),
    };
    let meta = v["entries"][0].clone();
    if !entry_visible(&s.actor, &meta) {
        return page_error(StatusCode::NOT_FOUND, "No such message in quarantine.");
    }
    let (subject, from, to, date, body, attachments) =
        preview_text(v["content"].as_str().unwrap_or(""));
    let ctx = context! {
        ..s.base("quarantine"),
        ..context! {
            subject => subject, from => from, to => to, date => date, body => body,
            attachments => attachments,
            verdict => format!("{} (score {:.1})", meta["verdict"].as_str().unwrap_or(""), meta["score"].as_f64().unwrap_or(0.0)),
            truncated => v["truncated"].as_bool().unwrap_or(false),
            can_release => s.actor.can(Role::Quarantine),
            action => format!("/held/{}", url_encode(&id)),
            back => "/held",
        }
    };
    render("preview.html", ctx, None)
}

async fn held_op(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, op)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match session(&state, &headers, "/held").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = s.check(&form) {
        return r;
    }
    if !s.actor.can(Role::Quarantine) {
        return page_error(
            StatusCode::FORBIDDEN,
            "Your account may not release or delete quarantined mail.",
        );
    }
    let engine_op = match op.as_str() {
        "release" => "quarantine-release",
        "delete" => "quarantine-delete",
        _ => return page_error(StatusCode::NOT_FOUND, "No such operation."),
    };
    let st = state.clone();
    let actor = s.actor.clone();
    let i = id.clone();
    let op_name = op.clone();
    let done = blocking(move || {
        let shown = engine_request(&st, json!({"op": "quarantine-show", "id": i}))?;
        let meta = &shown["entries"][0];
        if !entry_visible(&actor, meta) {
            return Err(ApiError::not_found("No such message in quarantine."));
        }
        // A limited account acts on its domains' recipients only.
        let rcpts: Vec<String> = meta["recipients"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mine: Vec<&String> = rcpts.iter().filter(|r| actor.covers_address(r)).collect();
        let by = format!("{} (console)", actor.name);
        if mine.len() == rcpts.len() {
            engine_request(&st, json!({"op": engine_op, "id": i, "by": by}))?;
        } else {
            for r in mine {
                engine_request(
                    &st,
                    json!({"op": engine_op, "id": i, "recipient": r, "by": by}),
                )?;
            }
        }
        lock(&st.store).audit(&actor.name, &format!("quarantine {op_name}"), &i, "console");
        Ok(())
    })
    .await;
    match done {
        Ok(()) => {
            let verb = if op == "release" {
                "released"
            } else {
                "deleted"
            };
            Redirect::to(&format!(
                "/held?done={}",
                url_encode(&format!("{id} {verb}"))
            ))
            .into_response()
        }
        Err(e) => page_error(StatusCode::BAD_GATEWAY, &e.text()),
    }
}

async fn domains_page(
    state: &Arc<AppState>,
    s: &Session,
    extra: minijinja::Value,
    status: StatusCode,
) -> Response {
    let st = state.clone();
    let list = match blocking(move || lock(&st.store).domains().map_err(ApiError::from)).await {
        Ok(l) => l,
        Err(e) => return page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.text()),
    };
    let shown: Vec<_> = list
        .into_iter()
        .filter(|d| s.actor.covers(&d.name))
        .collect();
    let ctx = context! {
        ..s.base("domains"),
        ..extra,
        ..context! {
            domains => shown,
            can_add => s.admin(),
            can_remove => s.actor.can(Role::Admin),
        }
    };
    let mut r = render("domains.html", ctx, None);
    *r.status_mut() = status;
    r
}

async fn domains(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match session(&state, &headers, "/domains").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    domains_page(
        &state,
        &s,
        context! { notice => q.get("done"), form => json!({"tls": "opportunistic"}) },
        StatusCode::OK,
    )
    .await
}

async fn add_domain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match session(&state, &headers, "/domains").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = s.check(&form) {
        return r;
    }
    if !s.admin() {
        return page_error(
            StatusCode::FORBIDDEN,
            "Only an administrator of every domain adds domains.",
        );
    }
    let name = form
        .get("name")
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let body = json!({
        "name": name,
        "route": form.get("route").map(|v| v.trim()).unwrap_or(""),
        "tls": form.get("tls").map(String::as_str).unwrap_or("opportunistic"),
    });
    match crate::api::add_domain(State(state.clone()), Ok(Json(body))).await {
        Ok(_) => {
            audit(&state, &s.actor, "domain add", &name, "console").await;
            Redirect::to(&format!(
                "/domains?done={}",
                url_encode(&format!("{name} added"))
            ))
            .into_response()
        }
        Err(e) => {
            domains_page(
                &state,
                &s,
                context! { error => e.text(), form => form },
                StatusCode::BAD_REQUEST,
            )
            .await
        }
    }
}

pub(crate) async fn audit(
    state: &Arc<AppState>,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: &str,
) {
    let st = state.clone();
    let (a, b, c, d) = (
        actor.name.clone(),
        action.to_string(),
        target.to_string(),
        detail.to_string(),
    );
    let _ = blocking(move || {
        lock(&st.store).audit(&a, &b, &c, &d);
        Ok(())
    })
    .await;
}

async fn domain_op(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, op)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match session(&state, &headers, "/domains").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = s.check(&form) {
        return r;
    }
    if !s.actor.covers(&name) {
        return page_error(StatusCode::NOT_FOUND, "No such domain.");
    }
    match op.as_str() {
        "remove" => {
            if !s.actor.can(Role::Admin) {
                return page_error(
                    StatusCode::FORBIDDEN,
                    "Only an administrator removes domains.",
                );
            }
            match crate::api::remove_domain(State(state.clone()), Path(name.clone())).await {
                Ok(_) => {
                    audit(&state, &s.actor, "domain remove", &name, "console").await;
                    Redirect::to(&format!(
                        "/domains?done={}",
                        url_encode(&format!("{name} removed"))
                    ))
                    .into_response()
                }
                Err(e) => page_error(StatusCode::BAD_REQUEST, &e.text()),
            }
        }
        "test" => {
            let st = state.clone();
            let n = name.clone();
            let route = blocking(move || {
                let list = lock(&st.store).domains().map_err(ApiError::from)?;
                Ok(list.into_iter().find(|d| d.name == n).map(|d| d.route))
            })
            .await;
            let Ok(Some(route)) = route else {
                return page_error(StatusCode::NOT_FOUND, "No such domain.");
            };
            let domain = name.clone();
            let (ok, transcript) =
                tokio::task::spawn_blocking(move || test_delivery(&route, &domain))
                    .await
                    .unwrap_or((false, "the test could not run".into()));
            audit(
                &state,
                &s.actor,
                "domain test",
                &name,
                if ok { "passed" } else { "failed" },
            )
            .await;
            let ctx = context! { tested => name, test_ok => ok, transcript => transcript };
            if headers.contains_key("x-partial") {
                return render("domains.html", ctx, Some("test"));
            }
            domains_page(&state, &s, ctx, StatusCode::OK).await
        }
        _ => page_error(StatusCode::NOT_FOUND, "No such operation."),
    }
}

/// An SMTP conversation with a route, up to the recipient and no further: does it take
/// mail for `postmaster@domain`? The transcript, and whether it would.
pub fn test_delivery(route: &str, domain: &str) -> (bool, String) {
    use std::io::{BufRead, BufReader, Write};
    use std::net::ToSocketAddrs;
    let mut t = String::new();
    let timeout = std::time::Duration::from_secs(10);
    let addr = match route.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        _ => return (false, format!("cannot resolve {route}")),
    };
    t.push_str(&format!("connecting to {addr}\n"));
    let stream = match std::net::TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return (false, format!("{t}cannot connect: {e}")),
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let Ok(mut w) = stream.try_clone() else {
        return (false, t);
    };
    let mut r = BufReader::new(stream);
    let mut read_reply = |t: &mut String| -> Option<u16> {
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    t.push_str("(connection closed)\n");
                    return None;
                }
                Ok(_) => {}
            }
            t.push_str("S: ");
            t.push_str(line.trim_end());
            t.push('\n');
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line.get(..3).and_then(|c| c.parse().ok());
            }
        }
    };
    let Some(220) = read_reply(&mut t) else {
        return (false, t);
    };
    let mut ok = true;
    for (cmd, want) in [
        ("EHLO bulwark-test".to_string(), 250),
        ("MAIL FROM:<>".to_string(), 250),
        (format!("RCPT TO:<postmaster@{domain}>"), 250),
        ("RSET".to_string(), 250),
        ("QUIT".to_string(), 221),
    ] {
        t.push_str(&format!("C: {cmd}\n"));
        if w.write_all(format!("{cmd}\r\n").as_bytes()).is_err() {
            return (false, t);
        }
        match read_reply(&mut t) {
            Some(c) if c / 100 == want / 100 => {}
            _ => {
                ok = false;
                if cmd != "QUIT" {
                    let _ = w.write_all(b"QUIT\r\n");
                }
                break;
            }
        }
    }
    t.push_str(if ok {
        "The route accepts mail for this domain.\n"
    } else {
        "The route did not accept the test.\n"
    });
    (ok, t)
}

async fn admin_session(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    here: &str,
) -> Result<Session, Response> {
    let s = session(state, headers, here).await?;
    if !s.admin() {
        return Err(page_error(
            StatusCode::FORBIDDEN,
            "Only an administrator of every domain manages accounts.",
        ));
    }
    Ok(s)
}

async fn accounts_page(
    state: &Arc<AppState>,
    s: &Session,
    extra: minijinja::Value,
    status: StatusCode,
) -> Response {
    let st = state.clone();
    let data = blocking(move || {
        let store = lock(&st.store);
        Ok((
            store.accounts().map_err(ApiError::from)?,
            store.tokens(None).map_err(ApiError::from)?,
            store.end_users().map_err(ApiError::from)?,
        ))
    })
    .await;
    let (accounts, tokens, end_users) = match data {
        Ok(d) => d,
        Err(e) => return page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.text()),
    };
    let tokens: Vec<serde_json::Value> = tokens
        .into_iter()
        .map(|t| {
            let mut v = json!(t);
            v["created"] = rfc3339(t.created_at * 1000).into();
            v
        })
        .collect();
    let end_users: Vec<serde_json::Value> = end_users
        .into_iter()
        .map(|u| {
            let mut v = json!(u);
            v["created"] = rfc3339(u.created_at * 1000).into();
            v
        })
        .collect();
    let ctx = context! {
        ..s.base("accounts"),
        ..extra,
        ..context! { accounts, tokens, end_users, max => state.max_accounts }
    };
    let mut r = render("accounts.html", ctx, None);
    *r.status_mut() = status;
    r
}

async fn accounts(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match admin_session(&state, &headers, "/accounts").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    accounts_page(
        &state,
        &s,
        context! { notice => q.get("done"), form => json!({"role": "readonly"}) },
        StatusCode::OK,
    )
    .await
}

async fn create_account(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match admin_session(&state, &headers, "/accounts").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = s.check(&form) {
        return r;
    }
    let name = form
        .get("name")
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let role = Role::parse(form.get("role").map_or("readonly", String::as_str));
    let domains = form.get("domains").map(String::as_str).unwrap_or("");
    let domains = if domains.trim().eq_ignore_ascii_case("all") {
        ""
    } else {
        domains
    };
    let parsed = parse_domains(domains);
    let max = state.max_accounts;
    let st = state.clone();
    let n = name.clone();
    let result = blocking(move || {
        let Some(role) = role else {
            return Err(ApiError::bad("role", "role: not a role"));
        };
        let domains = parsed.map_err(ApiError::from)?;
        lock(&st.store)
            .create_account(&n, &password, role, &domains, max)
            .map_err(ApiError::from)
    })
    .await;
    match result {
        Ok(a) => {
            audit(
                &state,
                &s.actor,
                "account create",
                &name,
                &format!("role {} domains {}", a.role.as_str(), a.domains.join(" ")),
            )
            .await;
            Redirect::to(&format!(
                "/accounts?done={}",
                url_encode(&format!("{name} created"))
            ))
            .into_response()
        }
        Err(e) => {
            let mut f = form.clone();
            f.remove("password");
            accounts_page(
                &state,
                &s,
                context! { error => e.text(), form => f },
                StatusCode::BAD_REQUEST,
            )
            .await
        }
    }
}

async fn delete_account(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match admin_session(&state, &headers, "/accounts").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = s.check(&form) {
        return r;
    }
    let st = state.clone();
    let n = name.clone();
    match blocking(move || lock(&st.store).delete_account(&n).map_err(ApiError::from)).await {
        Ok(()) => {
            audit(&state, &s.actor, "account delete", &name, "console").await;
            Redirect::to(&format!(
                "/accounts?done={}",
                url_encode(&format!("{name} deleted"))
            ))
            .into_response()
        }
        Err(e) => page_error(StatusCode::BAD_REQUEST, &e.text()),
    }
}

async fn create_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match admin_session(&state, &headers, "/accounts").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = s.check(&form) {
        return r;
    }
    let name = form
        .get("name")
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let account = form
        .get("account")
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let st = state.clone();
    let (n, a) = (name.clone(), account.clone());
    let made = blocking(move || {
        let mut store = lock(&st.store);
        let id = match &a {
            Some(a) => Some(
                store
                    .account(a)
                    .map_err(ApiError::from)?
                    .ok_or_else(|| ApiError::bad("account", format!("no account {a}")))?
                    .id,
            ),
            None => None,
        };
        store.create_account_token(id, &n).map_err(ApiError::from)
    })
    .await;
    match made {
        Ok(token) => {
            audit(
                &state,
                &s.actor,
                "token create",
                &name,
                account.as_deref().unwrap_or("main administrator"),
            )
            .await;
            accounts_page(&state, &s, context! { new_token => token, notice => format!("Token {name} created"), form => json!({"role": "readonly"}) }, StatusCode::OK).await
        }
        Err(e) => {
            accounts_page(
                &state,
                &s,
                context! { error => e.text(), form => json!({"role": "readonly"}) },
                StatusCode::BAD_REQUEST,
            )
            .await
        }
    }
}

async fn remove_end_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match admin_session(&state, &headers, "/accounts").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = s.check(&form) {
        return r;
    }
    let address = form.get("address").cloned().unwrap_or_default();
    let (st, a) = (state.clone(), address.clone());
    let done = blocking(move || {
        if lock(&st.store).remove_end_user(&a)?.is_some() {
            crate::api::publish(&st)?;
        }
        Ok(())
    })
    .await;
    match done {
        Ok(()) => {
            audit(&state, &s.actor, "end user remove", &address, "console").await;
            Redirect::to(&format!(
                "/accounts?done={}",
                url_encode(&format!("{address} removed"))
            ))
            .into_response()
        }
        Err(e) => page_error(StatusCode::NOT_FOUND, &e.text()),
    }
}

async fn delete_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match admin_session(&state, &headers, "/accounts").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = s.check(&form) {
        return r;
    }
    let Ok(n) = id.parse::<i64>() else {
        return page_error(StatusCode::BAD_REQUEST, "That is not a token.");
    };
    let st = state.clone();
    match blocking(move || {
        lock(&st.store)
            .delete_token(n, None)
            .map_err(ApiError::from)
    })
    .await
    {
        Ok(true) => {
            audit(&state, &s.actor, "token revoke", &id, "console").await;
            Redirect::to("/accounts?done=Token%20revoked").into_response()
        }
        Ok(false) => page_error(StatusCode::NOT_FOUND, "No such token."),
        Err(e) => page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.text()),
    }
}

async fn audit_page(state: &Arc<AppState>, s: &Session) -> Response {
    let st = state.clone();
    let log = match blocking(move || lock(&st.store).audit_log(500).map_err(ApiError::from)).await {
        Ok(l) => l,
        Err(e) => return page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.text()),
    };
    let entries: Vec<serde_json::Value> = log
        .into_iter()
        .map(|e| {
            let mut v = json!(e);
            v["time"] = rfc3339(e.t * 1000).into();
            v
        })
        .collect();
    render(
        "audit.html",
        context! { ..s.base("audit"), ..context! { entries => entries } },
        None,
    )
}

async fn audit_log_page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match admin_session(&state, &headers, "/audit").await {
        Ok(s) => audit_page(&state, &s).await,
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        // One that does not parse is left out of the environment (and logged).
        let env = templates();
        let names: Vec<&str> = env.templates().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 23, "{names:?}");
        for want in ["base.html", "user/base.html", "user/release.html"] {
            assert!(names.contains(&want), "{want}");
        }
    }

    #[test]
    fn only_local_paths_follow_a_login() {
        assert_eq!(safe_next("/tracking?x=1"), "/tracking?x=1");
        for bad in [
            "//evil.test/",
            "https://evil.test/",
            "\\\\evil",
            "/\\evil",
            "",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad}");
        }
    }

    #[test]
    fn previews_are_text_and_escaped() {
        let raw = "From: \"<script>alert(1)</script>\" <a@b.test>\r\nTo: u@example.test\r\nSubject: <img src=x onerror=alert(1)>\r\nContent-Type: text/html\r\n\r\n<p>Hi <a href=\"http://evil.test/\">click</a><img src=\"http://tracker.test/p.gif\"></p>\r\n";
        let (subject, from, _, _, body, _) = preview_text(raw);
        assert_eq!(subject, "<img src=x onerror=alert(1)>");
        assert!(from.contains("<script>"));
        assert!(!body.contains("<a "), "{body}");
        assert!(!body.contains("<img"), "{body}");
        let page = templates()
            .get_template("preview.html")
            .unwrap()
            .render(context! { subject => subject, from => from, body => body, actor => json!({"name": "x", "role": "admin"}), csrf => "c", back => "/held" })
            .unwrap();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img src=x"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
    }
}
