//! `/api/v1/accounts`, `/api/v1/tokens`, `/api/v1/audit`: the main administrator's
//! management of sub-accounts, API tokens and the audit log.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::accounts::{AccountError, Role, parse_domains};
use crate::api::{ApiError, AppState, blocking, lock};

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> ApiError {
        match e {
            AccountError::Invalid { field, message } => ApiError::bad(field, message),
            AccountError::Exists(_) => ApiError::conflict("name", e.to_string()),
            AccountError::NotFound(_) => ApiError::not_found(e.to_string()),
            AccountError::Store(s) => ApiError::from(s),
        }
    }
}

fn body_object(
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
    known: &[&'static str],
) -> Result<serde_json::Map<String, Value>, ApiError> {
    crate::api::object(body, known)
}

fn opt_str<'a>(
    map: &'a serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad(field, format!("{field} must be a string"))),
    }
}

fn role_field(map: &serde_json::Map<String, Value>) -> Result<Option<Role>, ApiError> {
    match opt_str(map, "role")? {
        None => Ok(None),
        Some(r) => Role::parse(r).map(Some).ok_or_else(|| {
            ApiError::bad(
                "role",
                format!("{r:?} is not a role (readonly, quarantine, policy, admin)"),
            )
        }),
    }
}

fn domains_field(map: &serde_json::Map<String, Value>) -> Result<Option<Vec<String>>, ApiError> {
    match map.get("domains") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(parse_domains(s)?)),
        Some(Value::Array(a)) => {
            let mut text = String::new();
            for v in a {
                let Some(s) = v.as_str() else {
                    return Err(ApiError::bad("domains", "domains must be strings"));
                };
                text.push_str(s);
                text.push(' ');
            }
            Ok(Some(parse_domains(&text)?))
        }
        Some(_) => Err(ApiError::bad("domains", "domains must be a list of names")),
    }
}

pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let accounts = blocking(move || lock(&state.store).accounts().map_err(ApiError::from)).await?;
    Ok(Json(json!(accounts)))
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let map = body_object(body, &["name", "password", "role", "domains"])?;
    let name = opt_str(&map, "name")?
        .ok_or_else(|| ApiError::bad("name", "name is required"))?
        .to_string();
    let password = opt_str(&map, "password")?
        .ok_or_else(|| ApiError::bad("password", "password is required"))?
        .to_string();
    let role = role_field(&map)?.unwrap_or(Role::ReadOnly);
    let domains = domains_field(&map)?.unwrap_or_default();
    let max = state.max_accounts;
    let account = blocking(move || {
        lock(&state.store)
            .create_account(&name, &password, role, &domains, max)
            .map_err(ApiError::from)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!(account))))
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let map = body_object(body, &["role", "domains", "password", "disabled"])?;
    let role = role_field(&map)?;
    let domains = domains_field(&map)?;
    let password = opt_str(&map, "password")?.map(str::to_string);
    let disabled = match map.get("disabled") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::bad("disabled", "disabled must be true or false")),
    };
    let account = blocking(move || {
        lock(&state.store)
            .update_account(
                &name,
                role,
                domains.as_deref(),
                password.as_deref(),
                disabled,
            )
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(json!(account)))
}

pub async fn remove(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let n = name.clone();
    blocking(move || {
        lock(&state.store)
            .delete_account(&n)
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(json!({"removed": name})))
}

pub async fn tokens(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let t = blocking(move || lock(&state.store).tokens(None).map_err(ApiError::from)).await?;
    Ok(Json(json!(t)))
}

pub async fn create_token(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let map = body_object(body, &["name", "account"])?;
    let name = opt_str(&map, "name")?
        .ok_or_else(|| ApiError::bad("name", "name is required"))?
        .to_string();
    let account = opt_str(&map, "account")?.map(str::to_string);
    let token = blocking(move || {
        let mut store = lock(&state.store);
        let id = match &account {
            Some(a) => Some(
                store
                    .account(a)?
                    .ok_or_else(|| ApiError::bad("account", format!("no account {a}")))?
                    .id,
            ),
            None => None,
        };
        store
            .create_account_token(id, &name)
            .map_err(ApiError::from)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({"token": token}))))
}

pub async fn remove_token(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Ok(id) = id.parse::<i64>() else {
        return Err(ApiError::bad("id", format!("{id:?} is not a token id")));
    };
    let removed = blocking(move || {
        lock(&state.store)
            .delete_token(id, None)
            .map_err(ApiError::from)
    })
    .await?;
    if !removed {
        return Err(ApiError::not_found(format!("no token {id}")));
    }
    Ok(Json(json!({"removed": id})))
}

#[derive(serde::Deserialize)]
pub struct AuditQuery {
    limit: Option<String>,
}

pub async fn audit(
    State(state): State<Arc<AppState>>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                return Err(ApiError::bad(
                    "limit",
                    format!("limit: {v:?} must be a number from 1 to 10000"),
                ));
            }
        },
    };
    let log = blocking(move || lock(&state.store).audit_log(limit).map_err(ApiError::from)).await?;
    Ok(Json(json!(log)))
}
