//! The end-user quarantine console at `/quarantine/`: recipients register with an
//! address in a managed domain's directory (an activation link is mailed to it through
//! the engine), sign in, see only their own quarantined mail, preview it as text,
//! release or delete it, approve its sender (their own list, compiled into the policy
//! the engines run), and turn the daily digest on or off. The digest's release links
//! are signed and expire; they work without signing in.

// Handlers return a page as their error: it is as large as any page.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::context;
use serde_json::{Value, json};

use crate::api::{ApiError, AppState, blocking, engine_request, lock, publish};
use crate::endusers::{self, DigestEntry, LinkRequest, UserSession};
use crate::web::{cookie, preview_text, random_hex, render, same, url_encode};

pub const USER_COOKIE: &str = "bulwark_user";
/// The double-submit token of the forms used before signing in.
const FORM_COOKIE: &str = "bulwark_user_form";

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/quarantine",
            get(|| async { Redirect::to("/quarantine/") }),
        )
        .route("/quarantine/", get(list))
        .route("/quarantine/login", get(login_page).post(login))
        .route("/quarantine/logout", post(logout))
        .route("/quarantine/register", get(register_page).post(register))
        .route("/quarantine/activate", get(activate_page).post(activate))
        .route("/quarantine/message/{id}", get(preview))
        .route("/quarantine/message/{id}/{op}", post(message_op))
        .route("/quarantine/settings", get(settings).post(change_settings))
        .route("/quarantine/release", get(release_page).post(release_link))
}

fn set_cookie(state: &AppState, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let mut c =
        format!("{name}={value}; Path=/quarantine; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    if state.cookie_secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn page(title: &str, text: &str, link: &str, link_text: &str, status: StatusCode) -> Response {
    let mut r = render(
        "user/message.html",
        context! { title, text, link, link_text },
        None,
    );
    *r.status_mut() = status;
    r
}

fn failed(status: StatusCode, text: &str) -> Response {
    page(
        "Not done",
        text,
        "/quarantine/",
        "Back to your quarantine",
        status,
    )
}

/// A form shown before signing in, with a fresh double-submit token in a cookie.
fn form_page(state: &AppState, name: &str, ctx: minijinja::Value, status: StatusCode) -> Response {
    let token = random_hex();
    let mut r = render(name, context! { form_csrf => token, ..ctx }, None);
    *r.status_mut() = status;
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, FORM_COOKIE, &token, 1800),
    );
    r
}

fn form_token_ok(headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
    let expected = cookie(headers, FORM_COOKIE).unwrap_or_default();
    !expected.is_empty() && form.get("csrf").is_some_and(|t| same(t, &expected))
}

/// The signed-in end user, or a redirect to the sign-in page.
async fn user(state: &Arc<AppState>, headers: &HeaderMap) -> Result<UserSession, Response> {
    let Some(token) = cookie(headers, USER_COOKIE) else {
        return Err(Redirect::to("/quarantine/login").into_response());
    };
    let st = state.clone();
    match blocking(move || Ok(lock(&st.store).user_session(&token)?)).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(Redirect::to("/quarantine/login").into_response()),
        Err(e) => Err(failed(StatusCode::INTERNAL_SERVER_ERROR, &e.text())),
    }
}

fn base(u: &UserSession, nav: &str) -> minijinja::Value {
    context! { user => u.address, csrf => u.csrf, nav => nav }
}

fn csrf_ok(u: &UserSession, form: &HashMap<String, String>) -> Result<(), Response> {
    match form.get("csrf") {
        Some(t) if same(t, &u.csrf) => Ok(()),
        _ => Err(failed(
            StatusCode::FORBIDDEN,
            "This form is out of date. Go back, reload the page and try again.",
        )),
    }
}

/// Sends a message from the console through the engine (queued durably there).
pub fn send_mail(state: &AppState, to: &str, content: String) -> Result<String, ApiError> {
    let v = engine_request(
        state,
        json!({"op": "submit", "sender": state.notify_from, "recipients": [to], "content": content}),
    )?;
    Ok(v["queued_as"].as_str().unwrap_or_default().to_string())
}

fn held_for(meta: &Value, address: &str) -> bool {
    meta["recipients"].as_array().is_some_and(|r| {
        r.iter()
            .filter_map(Value::as_str)
            .any(|a| a.eq_ignore_ascii_case(address))
    })
}

/// What the quarantine holds for `address`, newest first.
fn held_list(state: &AppState, address: &str) -> Result<Vec<Value>, ApiError> {
    let v = engine_request(
        state,
        json!({"op": "quarantine-list", "recipient": address}),
    )?;
    let mut entries: Vec<Value> = v["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| held_for(e, address))
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e["arrival"].as_i64().unwrap_or(0)));
    Ok(entries)
}

/// The quarantined message `id` when it is held for `address`.
fn held_one(state: &AppState, id: &str, address: &str) -> Result<Value, ApiError> {
    let v = engine_request(state, json!({"op": "quarantine-show", "id": id}))
        .map_err(|_| ApiError::not_found("No such message is held for you."))?;
    if !held_for(&v["entries"][0], address) {
        return Err(ApiError::not_found("No such message is held for you."));
    }
    Ok(v)
}

/// Why a message was held, in words: the verdict class said plainly, with the rest of
/// the verdict (a rule's name, a reason) when there is more.
fn why(meta: &Value) -> String {
    let verdict = meta["verdict"].as_str().unwrap_or("").trim();
    let (class, detail) = verdict
        .split_once([':', ' '])
        .map_or((verdict, ""), |(c, d)| (c, d.trim()));
    let text = match class.to_ascii_lowercase().as_str() {
        "spam" => "Looks like spam",
        "phish" | "phishing" => "Looks like phishing",
        "virus" | "malware" => "Carries a virus",
        "bulk" => "Bulk mail",
        "" => "Held by policy",
        _ => return format!("Held by policy ({verdict})"),
    };
    if detail.is_empty() {
        text.to_string()
    } else {
        format!("{text} ({detail})")
    }
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let u = match user(&state, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let (st, a) = (state.clone(), u.address.clone());
    let entries = match blocking(move || held_list(&st, &a)).await {
        Ok(e) => e,
        Err(e) => return failed(e.status(), &e.text()),
    };
    let rows: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "id": e["id"],
                "time": crate::tracking::rfc3339(e["arrival"].as_i64().unwrap_or(0) * 1000),
                "sender": e["sender"],
                "subject": e["subject"],
                "why": why(e),
            })
        })
        .collect();
    render(
        "user/list.html",
        context! { entries => rows, notice => q.get("done"), ..base(&u, "list") },
        None,
    )
}

async fn login_page(State(state): State<Arc<AppState>>) -> Response {
    form_page(
        &state,
        "user/login.html",
        context! { address => "" },
        StatusCode::OK,
    )
}

async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let typed = form.get("address").cloned().unwrap_or_default();
    let again = |error: &str, status: StatusCode| {
        form_page(
            &state,
            "user/login.html",
            context! { address => typed, error => error },
            status,
        )
    };
    if !form_token_ok(&headers, &form) {
        return again(
            "The sign-in form expired; please try again.",
            StatusCode::OK,
        );
    }
    let address = endusers::normalize_address(&typed).unwrap_or_default();
    let (key, ip) = (format!("user:{address}"), peer.ip().to_string());
    if let Some(wait) = state.throttle.blocked(&key, &ip) {
        return again(
            &format!(
                "Too many failed sign-ins. Try again in {} minutes.",
                wait.as_secs().div_ceil(60)
            ),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let password = form.get("password").cloned().unwrap_or_default();
    let (st, a) = (state.clone(), address.clone());
    let result = blocking(move || {
        let stored = lock(&st.store).end_user_password(&a)?;
        // The hash is checked without holding the store.
        if !crate::accounts::check_hash(stored.as_deref(), &password) {
            return Ok(None);
        }
        let mut store = lock(&st.store);
        let (token, _) = store.create_user_session(&a)?;
        store.audit(
            &format!("{a} (end user)"),
            "login",
            "quarantine console",
            &format!("from {}", peer.ip()),
        );
        Ok(Some(token))
    })
    .await;
    match result {
        Ok(Some(token)) => {
            state.throttle.succeeded(&key);
            let mut r = Redirect::to("/quarantine/").into_response();
            r.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(&state, USER_COOKIE, &token, endusers::SESSION_LIFETIME),
            );
            r.headers_mut()
                .append(header::SET_COOKIE, set_cookie(&state, FORM_COOKIE, "", 0));
            r
        }
        Ok(None) => {
            state.throttle.failed(&key, &ip);
            tracing::info!(%ip, address = %address, "quarantine console sign-in failed");
            again(
                "The address or the password is not right (or the account is not activated yet).",
                StatusCode::UNAUTHORIZED,
            )
        }
        Err(e) => failed(StatusCode::INTERNAL_SERVER_ERROR, &e.text()),
    }
}

async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Ok(u) = user(&state, &headers).await {
        if let Err(r) = csrf_ok(&u, &form) {
            return r;
        }
        if let Some(token) = cookie(&headers, USER_COOKIE) {
            let st = state.clone();
            let _ = blocking(move || Ok(lock(&st.store).close_user_session(&token)?)).await;
        }
    }
    let mut r = Redirect::to("/quarantine/login").into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&state, USER_COOKIE, "", 0));
    r
}

async fn register_page(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    form_page(
        &state,
        "user/register.html",
        context! { reset => q.contains_key("reset"), address => "" },
        StatusCode::OK,
    )
}

/// A registration or a forgotten password: the same answer whatever the address, so
/// the page tells nobody which addresses exist or have accounts.
async fn register(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let reset = form.contains_key("reset");
    let typed = form.get("address").cloned().unwrap_or_default();
    if !form_token_ok(&headers, &form) {
        return form_page(
            &state,
            "user/register.html",
            context! { reset, address => typed, error => "The form expired; please try again." },
            StatusCode::OK,
        );
    }
    let Some(address) = endusers::normalize_address(&typed) else {
        return form_page(
            &state,
            "user/register.html",
            context! { reset, address => typed, error => "That is not an email address." },
            StatusCode::BAD_REQUEST,
        );
    };
    let (key, ip) = (format!("register:{address}"), peer.ip().to_string());
    if let Some(wait) = state.throttle.blocked(&key, &ip) {
        return form_page(
            &state,
            "user/register.html",
            context! { reset, address, error => format!("Too many requests. Try again in {} minutes.", wait.as_secs().div_ceil(60)) },
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    // Every request counts towards the throttle, by address and by client.
    state.throttle.failed(&key, &ip);
    let (st, a) = (state.clone(), address.clone());
    let outcome = blocking(move || {
        let asked = lock(&st.store).request_link(&a)?;
        let LinkRequest::Send(purpose, token) = asked else {
            return Ok(format!("{asked:?}"));
        };
        let url = format!("{}/quarantine/activate?token={token}", st.console_url);
        let mail = endusers::link_mail(&st.notify_from, &a, purpose, &url);
        let id = send_mail(&st, &a, mail)?;
        lock(&st.store).audit(
            &format!("{a} (end user)"),
            &format!("{} link", purpose.as_str()),
            "quarantine console",
            &format!("mailed as {id}"),
        );
        Ok(format!("{} link queued as {id}", purpose.as_str()))
    })
    .await;
    match outcome {
        Ok(what) => {
            tracing::info!(address = %address, %ip, "quarantine console registration: {what}")
        }
        Err(e) => {
            tracing::warn!(address = %address, "quarantine console: cannot mail a link: {}", e.text())
        }
    }
    form_page(
        &state,
        "user/register.html",
        context! { reset, address, sent => true },
        StatusCode::OK,
    )
}

fn expired_link() -> Response {
    page(
        "This link does not work any more",
        "It has expired or was used already. Ask for a new one: it is sent to your address again.",
        "/quarantine/register",
        "Ask for a new link",
        StatusCode::NOT_FOUND,
    )
}

async fn activate_page(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let token = q.get("token").cloned().unwrap_or_default();
    let (st, t) = (state.clone(), token.clone());
    match blocking(move || Ok(lock(&st.store).link(&t)?)).await {
        Ok(Some((address, purpose))) => form_page(
            &state,
            "user/password.html",
            context! { token, address, purpose => purpose.as_str() },
            StatusCode::OK,
        ),
        Ok(None) => expired_link(),
        Err(e) => failed(StatusCode::INTERNAL_SERVER_ERROR, &e.text()),
    }
}

async fn activate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token = form.get("token").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let again = |state: &Arc<AppState>, address: String, purpose: &str, error: String| {
        form_page(
            state,
            "user/password.html",
            context! { token => token.clone(), address, purpose, error },
            StatusCode::BAD_REQUEST,
        )
    };
    let (st, t) = (state.clone(), token.clone());
    let (address, purpose) = match blocking(move || Ok(lock(&st.store).link(&t)?)).await {
        Ok(Some(x)) => x,
        Ok(None) => return expired_link(),
        Err(e) => return failed(StatusCode::INTERNAL_SERVER_ERROR, &e.text()),
    };
    if !form_token_ok(&headers, &form) {
        return again(
            &state,
            address,
            purpose.as_str(),
            "The form expired; please try again.".into(),
        );
    }
    if form.get("confirm") != Some(&password) {
        return again(
            &state,
            address,
            purpose.as_str(),
            "The two passwords are not the same.".into(),
        );
    }
    let (st, t) = (state.clone(), token.clone());
    let done = blocking(move || {
        // Hashing takes a moment: not under the store's lock.
        crate::accounts::check_password(&password)?;
        let hash = crate::accounts::hash_password(&password)?;
        let mut store = lock(&st.store);
        let Some(a) = store.use_link_hashed(&t, &hash)? else {
            return Ok(None);
        };
        let (session, _) = store.create_user_session(&a)?;
        store.audit(
            &format!("{a} (end user)"),
            "password set",
            "quarantine console",
            purpose.as_str(),
        );
        Ok(Some(session))
    })
    .await;
    match done {
        Ok(Some(session)) => {
            let mut r = Redirect::to(&format!(
                "/quarantine/?done={}",
                url_encode(if purpose == endusers::Purpose::Activate {
                    "Your account is active."
                } else {
                    "Your new password is set."
                })
            ))
            .into_response();
            r.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(&state, USER_COOKIE, &session, endusers::SESSION_LIFETIME),
            );
            r.headers_mut()
                .append(header::SET_COOKIE, set_cookie(&state, FORM_COOKIE, "", 0));
            r
        }
        Ok(None) => expired_link(),
        Err(e) => again(&state, address, purpose.as_str(), e.text()),
    }
}

async fn preview(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let u = match user(&state, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let (st, i, a) = (state.clone(), id.clone(), u.address.clone());
    let v = match blocking(move || held_one(&st, &i, &a)).await {
        Ok(v) => v,
        Err(e) => return failed(StatusCode::NOT_FOUND, &e.text()),
    };
    let meta = &v["entries"][0];
    let (subject, from, _, date, body, attachments) =
        preview_text(v["content"].as_str().unwrap_or(""));
    render(
        "user/preview.html",
        context! {
            id, subject, from, date, body, attachments,
            sender => meta["sender"].as_str().unwrap_or(""),
            why => why(meta),
            truncated => v["truncated"].as_bool().unwrap_or(false),
            ..base(&u, "list")
        },
        None,
    )
}

/// Releases (or deletes) the copy of `id` held for `address`.
fn act(state: &AppState, op: &str, id: &str, address: &str, by: &str) -> Result<(), ApiError> {
    engine_request(
        state,
        json!({"op": format!("quarantine-{op}"), "id": id, "recipient": address, "by": by}),
    )?;
    Ok(())
}

async fn message_op(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, op)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let u = match user(&state, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(r) = csrf_ok(&u, &form) {
        return r;
    }
    if !matches!(op.as_str(), "release" | "delete" | "approve") {
        return failed(StatusCode::NOT_FOUND, "No such operation.");
    }
    let (st, i, a, o) = (state.clone(), id.clone(), u.address.clone(), op.clone());
    let done = blocking(move || {
        let v = held_one(&st, &i, &a)?;
        let sender = v["entries"][0]["sender"].as_str().unwrap_or("").to_string();
        let by = format!("{a} (end user)");
        let mut said = String::new();
        if o == "approve" {
            if sender.is_empty() {
                return Err(ApiError::bad(
                    "sender",
                    "this message has no sender to approve",
                ));
            }
            lock(&st.store).add_personal_sender(&a, &sender)?;
            publish(&st)?;
            lock(&st.store).audit(&by, "approve sender", &sender, "quarantine console");
            said = format!("; mail from {sender} will be delivered to you from now on");
        }
        let engine_op = if o == "delete" { "delete" } else { "release" };
        act(&st, engine_op, &i, &a, &by)?;
        lock(&st.store).audit(
            &by,
            &format!("quarantine {engine_op}"),
            &i,
            "quarantine console",
        );
        Ok(format!(
            "{} {}{said}",
            if sender.is_empty() {
                "The message"
            } else {
                "The message from"
            },
            if engine_op == "delete" {
                format!("{sender} was deleted")
            } else {
                format!("{sender} was released to your inbox")
            }
        ))
    })
    .await;
    match done {
        Ok(text) => {
            Redirect::to(&format!("/quarantine/?done={}", url_encode(text.trim()))).into_response()
        }
        Err(e) => failed(e.status(), &e.text()),
    }
}

async fn settings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let u = match user(&state, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    settings_page(&state, &u, q.get("done").cloned(), None).await
}

async fn settings_page(
    state: &Arc<AppState>,
    u: &UserSession,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let (st, a) = (state.clone(), u.address.clone());
    let found = blocking(move || {
        let store = lock(&st.store);
        Ok((
            store.personal_senders(&a)?,
            store.end_user(&a)?.is_none_or(|e| e.digest),
        ))
    })
    .await;
    match found {
        Ok((senders, digest)) => {
            let mut r = render(
                "user/settings.html",
                context! { senders, digest, notice, error, ..base(u, "settings") },
                None,
            );
            if error.is_some() {
                *r.status_mut() = StatusCode::BAD_REQUEST;
            }
            r
        }
        Err(e) => failed(StatusCode::INTERNAL_SERVER_ERROR, &e.text()),
    }
}

async fn change_settings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let u = match user(&state, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(r) = csrf_ok(&u, &form) {
        return r;
    }
    let op = form.get("op").cloned().unwrap_or_default();
    let sender = form.get("sender").cloned().unwrap_or_default();
    let on = form.get("digest").is_some_and(|v| v == "on");
    let (st, a) = (state.clone(), u.address.clone());
    let done = blocking(move || {
        let by = format!("{a} (end user)");
        let text = match op.as_str() {
            "add" => {
                lock(&st.store).add_personal_sender(&a, &sender)?;
                publish(&st)?;
                lock(&st.store).audit(&by, "approve sender", &sender, "quarantine console");
                format!("{} approved.", sender.trim().to_ascii_lowercase())
            }
            "remove" => {
                lock(&st.store).remove_personal_sender(&a, &sender)?;
                publish(&st)?;
                lock(&st.store).audit(&by, "remove approved sender", &sender, "quarantine console");
                format!("{sender} removed.")
            }
            "digest" => {
                lock(&st.store).set_digest(&a, on)?;
                lock(&st.store).audit(
                    &by,
                    "digest",
                    if on { "on" } else { "off" },
                    "quarantine console",
                );
                format!("The daily digest is {}.", if on { "on" } else { "off" })
            }
            _ => return Err(ApiError::bad("op", "not add, remove or digest")),
        };
        Ok(text)
    })
    .await;
    match done {
        Ok(text) => Redirect::to(&format!("/quarantine/settings?done={}", url_encode(&text)))
            .into_response(),
        Err(e) => settings_page(&state, &u, None, Some(e.text())).await,
    }
}

/// The fields of a digest's release link, checked.
fn signed_release(
    state: &AppState,
    f: &HashMap<String, String>,
) -> Result<(String, String), ApiError> {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let (id, to) = (get("id"), get("to"));
    let exp: i64 = get("exp").parse().unwrap_or(0);
    let key = lock(&state.store).link_key()?;
    if !endusers::check_release(&key, id, to, exp, get("sig")) {
        return Err(ApiError::not_found(
            "This release link has expired or is not valid. Sign in to see what is held for you.",
        ));
    }
    Ok((id.to_string(), to.to_ascii_lowercase()))
}

async fn release_page(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let st = state.clone();
    let fields = q.clone();
    let found = blocking(move || {
        let (id, to) = signed_release(&st, &fields)?;
        let v = held_one(&st, &id, &to).map_err(|_| {
            ApiError::not_found("This message is not held any more: it was released or deleted already, or it expired.")
        })?;
        Ok((to, v))
    })
    .await;
    match found {
        Ok((to, v)) => {
            let meta = &v["entries"][0];
            let fields: HashMap<&str, &str> = ["id", "to", "exp", "sig"]
                .into_iter()
                .map(|k| (k, q.get(k).map_or("", String::as_str)))
                .collect();
            render(
                "user/release.html",
                context! {
                    to, fields,
                    sender => meta["sender"].as_str().unwrap_or(""),
                    subject => meta["subject"].as_str().unwrap_or(""),
                },
                None,
            )
        }
        Err(e) => page(
            "Cannot release",
            &e.text(),
            "/quarantine/login",
            "Sign in",
            StatusCode::NOT_FOUND,
        ),
    }
}

async fn release_link(
    State(state): State<Arc<AppState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let st = state.clone();
    let done = blocking(move || {
        let (id, to) = signed_release(&st, &form)?;
        held_one(&st, &id, &to).map_err(|_| {
            ApiError::not_found("This message is not held any more: it was released or deleted already, or it expired.")
        })?;
        let by = format!("{to} (digest link)");
        act(&st, "release", &id, &to, &by)?;
        lock(&st.store).audit(&by, "quarantine release", &id, "digest link");
        Ok(())
    })
    .await;
    match done {
        Ok(()) => page(
            "Released",
            "The message is on its way to your inbox.",
            "/quarantine/",
            "See the rest of your quarantine",
            StatusCode::OK,
        ),
        Err(e) => page(
            "Cannot release",
            &e.text(),
            "/quarantine/login",
            "Sign in",
            StatusCode::NOT_FOUND,
        ),
    }
}

/// What one digest run did.
#[derive(Debug, Default, serde::Serialize)]
pub struct DigestRun {
    /// Digests queued.
    pub recipients: usize,
    /// Messages listed in them.
    pub messages: usize,
    /// Digests that could not be queued (tried again next time).
    pub failed: usize,
}

/// Mails each recipient in a managed domain the quarantined messages not yet in one
/// of their digests, unless they turned the digest off.
pub fn send_digests(state: &AppState) -> Result<DigestRun, ApiError> {
    let v = engine_request(state, json!({"op": "quarantine-list"}))?;
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    let (key, opted_out, domains, done) = {
        let store = lock(&state.store);
        let domains: HashSet<String> = store.domains()?.into_iter().map(|d| d.name).collect();
        (
            store.link_key()?,
            store.digest_opt_outs()?,
            domains,
            store.digested()?,
        )
    };
    let mut by_rcpt: HashMap<String, Vec<DigestEntry>> = HashMap::new();
    let mut held: HashSet<(String, String)> = HashSet::new();
    for e in &entries {
        let id = e["id"].as_str().unwrap_or("").to_string();
        for r in e["recipients"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap_or("").to_ascii_lowercase();
            held.insert((id.clone(), r.clone()));
            let domain = r.rsplit_once('@').map_or("", |(_, d)| d);
            if !domains.contains(domain)
                || opted_out.contains(&r)
                || done.contains(&(id.clone(), r.clone()))
            {
                continue;
            }
            by_rcpt.entry(r).or_default().push(DigestEntry {
                id: id.clone(),
                arrival: e["arrival"].as_i64().unwrap_or(0),
                sender: e["sender"].as_str().unwrap_or("").to_string(),
                subject: e["subject"].as_str().unwrap_or("").to_string(),
                verdict: why(e),
            });
        }
    }
    let mut run = DigestRun::default();
    let mut rcpts: Vec<_> = by_rcpt.into_iter().collect();
    rcpts.sort_by(|a, b| a.0.cmp(&b.0));
    for (rcpt, mut list) in rcpts {
        list.sort_by_key(|e| std::cmp::Reverse(e.arrival));
        let mail =
            endusers::digest_mail(&state.notify_from, &rcpt, &state.console_url, &key, &list);
        match send_mail(state, &rcpt, mail) {
            Ok(_) => {
                run.recipients += 1;
                run.messages += list.len();
                let ids: Vec<&str> = list.iter().map(|e| e.id.as_str()).collect();
                lock(&state.store).mark_digested(&rcpt, &ids)?;
            }
            Err(e) => {
                run.failed += 1;
                tracing::warn!(%rcpt, "cannot queue the quarantine digest: {}", e.text());
            }
        }
    }
    // Forget what is not held any more.
    lock(&state.store).forget_digested(&held)?;
    tracing::info!(
        recipients = run.recipients,
        messages = run.messages,
        failed = run.failed,
        "quarantine digests queued"
    );
    Ok(run)
}

/// Whether the day's digest is due at `now` (Unix seconds): it is the hour, and it has
/// not gone out today. Returns the day to record.
fn digest_due(now: i64, hour: u32, last_day: Option<i64>) -> Option<i64> {
    let (today, h) = (now.div_euclid(86400), now.rem_euclid(86400) / 3600);
    (h == i64::from(hour) && last_day != Some(today)).then_some(today)
}

/// Sends the digests once a day at `hour` (UTC) until `stop`.
pub fn digest_loop(state: Arc<AppState>, hour: u32, stop: Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering::Relaxed;
    while !stop.load(Relaxed) {
        let last = lock(&state.store).digest_day().unwrap_or(None);
        if let Some(today) = digest_due(crate::store::now(), hour, last) {
            match send_digests(&state) {
                Ok(_) => {
                    if let Err(e) = lock(&state.store).set_digest_day(today) {
                        tracing::warn!("cannot record the digest run: {e}");
                    }
                }
                Err(e) => tracing::warn!("quarantine digest: {}", e.text()),
            }
        }
        for _ in 0..30 {
            if stop.load(Relaxed) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_goes_out_once_a_day_in_its_hour() {
        let day = 20_424; // 2025-12-02
        let at = |h: i64, m: i64| day * 86400 + h * 3600 + m * 60;
        assert_eq!(digest_due(at(7, 0), 7, None), Some(day));
        assert_eq!(digest_due(at(7, 59), 7, Some(day - 1)), Some(day));
        assert_eq!(
            digest_due(at(7, 30), 7, Some(day)),
            None,
            "sent today already"
        );
        assert_eq!(digest_due(at(6, 59), 7, None), None);
        assert_eq!(digest_due(at(8, 0), 7, Some(day - 1)), None);
        assert_eq!(digest_due(at(0, 0), 0, Some(day - 1)), Some(day));
    }

    #[test]
    fn why_says_what_the_verdict_means() {
        let w = |v: &str| why(&json!({ "verdict": v }));
        assert_eq!(w("spam"), "Looks like spam");
        assert_eq!(w("phishing: url"), "Looks like phishing (url)");
        assert_eq!(w("virus Eicar-Test"), "Carries a virus (Eicar-Test)");
        assert_eq!(w(""), "Held by policy");
        assert_eq!(w("policy:hold"), "Held by policy (policy:hold)");
    }
}
