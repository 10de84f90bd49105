//! `/api/v1/tracking`: searches, a message's timeline, hourly volume and the
//! ingester's status.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query as Params, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{Value, json};

use crate::accounts::Actor;
use crate::api::{ApiError, AppState, blocking};
use crate::tracking::sqlite::now_ms;
use crate::tracking::{DAY_MS, MAX_LIMIT, MAX_RANGE_DAYS, Query, Traffic, parse_time, valid_qid};

/// The longest text a search field takes.
const MAX_FIELD: usize = 320;

const SEARCH_FIELDS: &[&str] = &[
    "since",
    "until",
    "traffic",
    "sender",
    "recipient",
    "ip",
    "qid",
    "subject",
    "verdict",
    "action",
    "status",
    "limit",
    "before",
];

fn text_field(
    params: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<String>, ApiError> {
    let Some(v) = params.get(name) else {
        return Ok(None);
    };
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    if v.chars().count() > MAX_FIELD {
        return Err(ApiError::bad(
            name,
            format!("{name} may be at most {MAX_FIELD} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::bad(
            name,
            format!("{name} may not hold control characters"),
        ));
    }
    Ok(Some(v.to_string()))
}

fn word_field(
    params: &HashMap<String, String>,
    name: &'static str,
    allowed: &[&str],
) -> Result<Option<String>, ApiError> {
    let Some(v) = text_field(params, name)? else {
        return Ok(None);
    };
    let v = v.to_ascii_lowercase();
    if !allowed.contains(&v.as_str()) {
        return Err(ApiError::bad(
            name,
            format!("{name}: {v:?} is not one of {}", allowed.join(", ")),
        ));
    }
    Ok(Some(v))
}

/// `since` and `until` (default: the day before `default_until`), checked.
fn time_range(
    params: &HashMap<String, String>,
    now: i64,
    default_until: i64,
) -> Result<(i64, i64), ApiError> {
    let time = |name: &'static str, default: i64| -> Result<i64, ApiError> {
        match text_field(params, name)? {
            Some(v) => parse_time(&v, now).map_err(|e| ApiError::bad(name, format!("{name}: {e}"))),
            None => Ok(default),
        }
    };
    let until = time("until", default_until)?;
    let since = time("since", until - DAY_MS)?;
    if since > until {
        return Err(ApiError::bad("since", "since is after until"));
    }
    if until - since > MAX_RANGE_DAYS * DAY_MS {
        return Err(ApiError::bad(
            "since",
            format!("the range from since to until may span at most {MAX_RANGE_DAYS} days"),
        ));
    }
    Ok((since, until))
}

/// Reads a search from query parameters, naming the field at fault.
pub fn parse_query(params: &HashMap<String, String>, now: i64) -> Result<Query, ApiError> {
    for k in params.keys() {
        if !SEARCH_FIELDS.contains(&k.as_str()) {
            return Err(ApiError::bad(
                "query",
                format!(
                    "unknown search field {k:?}; the fields are {}",
                    SEARCH_FIELDS.join(", ")
                ),
            ));
        }
    }
    let (since, until) = time_range(params, now, now + 60_000)?;
    let traffic = match word_field(params, "traffic", &["accepted", "blocked", "all"])?.as_deref() {
        Some("accepted") => Some(Traffic::Accepted),
        Some("blocked") => Some(Traffic::Blocked),
        _ => None,
    };
    let address = |name: &'static str| -> Result<Option<String>, ApiError> {
        let Some(v) = text_field(params, name)? else {
            return Ok(None);
        };
        if v.contains(char::is_whitespace) || v.contains(['<', '>', '"']) {
            return Err(ApiError::bad(
                name,
                format!("{name}: {v:?} is not an address or @domain"),
            ));
        }
        if v.starts_with('@') && v.len() < 2 {
            return Err(ApiError::bad(
                name,
                format!("{name}: @ needs a domain after it"),
            ));
        }
        Ok(Some(v))
    };
    let sender = address("sender")?;
    let recipient = address("recipient")?;
    let ip = match text_field(params, "ip")? {
        Some(v) => match v.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ip.to_string()),
            Err(_) => {
                return Err(ApiError::bad(
                    "ip",
                    format!("ip: {v:?} is not an IP address"),
                ));
            }
        },
        None => None,
    };
    let qid = match text_field(params, "qid")? {
        Some(v) if valid_qid(&v) => Some(v.to_ascii_uppercase()),
        Some(v) => {
            return Err(ApiError::bad(
                "qid",
                format!("qid: {v:?} is not a queue id (13 to 40 hex digits)"),
            ));
        }
        None => None,
    };
    let subject = match text_field(params, "subject")? {
        Some(v) if v.chars().count() < 3 => {
            return Err(ApiError::bad(
                "subject",
                "subject: search for at least 3 characters of the subject",
            ));
        }
        other => other,
    };
    let verdict = word_field(
        params,
        "verdict",
        &[
            "none",
            "clean",
            "spam",
            "phishing",
            "malformed",
            "authfail",
            "virus",
            "limit",
        ],
    )?;
    let action = word_field(
        params,
        "action",
        &["deliver", "tag", "quarantine", "strip", "reject", "defer"],
    )?;
    let status = word_field(
        params,
        "status",
        &[
            "queued",
            "delivered",
            "deferred",
            "bounced",
            "expired",
            "quarantined",
            "released",
            "deleted",
            "rejected",
            "refused",
            "mixed",
        ],
    )?;
    let limit = match text_field(params, "limit")? {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad(
                    "limit",
                    format!("limit: {v:?} must be a number from 1 to {MAX_LIMIT}"),
                ));
            }
        },
        None => 100,
    };
    let before = match text_field(params, "before")? {
        Some(v) => {
            let parsed = v
                .split_once(':')
                .and_then(|(t, id)| Some((t.parse().ok()?, id.parse().ok()?)));
            match parsed {
                Some(p) => Some(p),
                None => {
                    return Err(ApiError::bad(
                        "before",
                        format!("before: {v:?} is not a paging mark (the `next` of a page)"),
                    ));
                }
            }
        }
        None => None,
    };
    Ok(Query {
        since,
        until,
        traffic,
        sender,
        recipient,
        ip,
        qid,
        subject,
        verdict,
        action,
        status,
        domains: None,
        limit,
        before,
    })
}

pub async fn search(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let mut q = parse_query(&params, now_ms())?;
    q.domains = actor.domains.clone();
    let store = state.tracking.clone();
    let started = std::time::Instant::now();
    let limit = q.limit;
    let rows = blocking(move || store.search(&q).map_err(ApiError::internal)).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| format!("{}:{}", r.first, r.id)))
        .flatten();
    Ok(Json(json!({
        "rows": rows,
        "next": next,
        "took_ms": started.elapsed().as_secs_f64() * 1000.0,
    })))
}

pub async fn timeline(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path(qid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !valid_qid(&qid) {
        return Err(ApiError::bad(
            "qid",
            format!("qid: {qid:?} is not a queue id (13 to 40 hex digits)"),
        ));
    }
    let store = state.tracking.clone();
    let q = qid.clone();
    let found = blocking(move || store.timeline(&q).map_err(ApiError::internal)).await?;
    match found {
        Some(t) if visible(&actor, &t.message) => Ok(Json(json!(t))),
        // Another domain's message is as absent as one never seen.
        _ => Err(ApiError::not_found(format!("no message {qid} is tracked"))),
    }
}

/// Whether `actor` may see `row`: a sender or a recipient in its domains.
pub fn visible(actor: &Actor, row: &crate::tracking::Row) -> bool {
    actor.unrestricted()
        || actor.covers_address(&row.sender)
        || row
            .recipients
            .iter()
            .any(|r| actor.covers_address(&r.address))
}

pub async fn volume(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let now = now_ms();
    for k in params.keys() {
        if k != "since" && k != "until" {
            return Err(ApiError::bad(
                "query",
                format!("unknown field {k:?}; the fields are since, until"),
            ));
        }
    }
    let (since, until) = time_range(&params, now, now)?;
    let store = state.tracking.clone();
    // A domain-limited account sees the mail to its domains.
    let hours = blocking(move || {
        store
            .volume(since, until, actor.domains.as_deref())
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(
        json!({ "since": since, "until": until, "hours": hours }),
    ))
}

pub async fn status(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    (StatusCode::OK, Json(json!(state.tracking_stats.view())))
}
