//! The REST API under `/api/v1`: bearer-token auth, JSON in and out, every change
//! compiled and published as a new policy snapshot before the call returns.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use bulwark_policy::address::{check_sender_pattern, is_hostname, parse_route};
use bulwark_policy::filtering::{RuleSpec, VerdictSpec};
use bulwark_policy::shm::Publisher;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::accounts::Actor;
use crate::store::{Store, StoreError};

/// What was published last.
#[derive(Clone, Copy)]
pub struct Published {
    pub generation: u64,
    pub size: usize,
    pub at: SystemTime,
}

pub struct AppState {
    pub store: Mutex<Store>,
    pub publisher: Mutex<Publisher>,
    pub published: Mutex<Option<Published>>,
    pub engines: Vec<SocketAddr>,
    /// The engine's admin sockets on this host (`[control] engine_admin_dir`).
    pub engine_admin_dir: Option<std::path::PathBuf>,
    /// Searches over the tracking store, and what its ingester has done.
    pub tracking: Arc<dyn crate::tracking::TrackingSearch>,
    pub tracking_stats: Arc<crate::tracking::ingest::Stats>,
    /// Accounts at most, the main administrator included (`[control] max_accounts`).
    pub max_accounts: usize,
    /// Failed console logins.
    pub throttle: crate::accounts::Throttle,
    /// Whether session cookies carry `Secure` (`[control] cookie_secure`).
    pub cookie_secure: bool,
    /// The console's address as users reach it (`[control] console_url`).
    pub console_url: String,
    /// Sender of the consoles' mail (`[control] notify_from`).
    pub notify_from: String,
}

/// An error as the API reports it: a status, a message, and the field at fault.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    field: Option<&'static str>,
    message: String,
}

impl ApiError {
    pub(crate) fn bad(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            field: Some(field),
            message: message.into(),
        }
    }
    /// What went wrong, as a person reads it (the field first when there is one).
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
    pub(crate) fn text(&self) -> String {
        self.message.clone()
    }
    pub(crate) fn conflict(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            field: Some(field),
            message: message.into(),
        }
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            field: None,
            message: message.into(),
        }
    }
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            field: None,
            message: message.into(),
        }
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            field: None,
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Exists(_) => ApiError {
                status: StatusCode::CONFLICT,
                field: Some("name"),
                message: e.to_string(),
            },
            StoreError::NotFound(_) => ApiError {
                status: StatusCode::NOT_FOUND,
                field: Some("name"),
                message: e.to_string(),
            },
            StoreError::NotListed(_) => ApiError {
                status: StatusCode::NOT_FOUND,
                field: None,
                message: e.to_string(),
            },
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(f) => json!({"error": self.message, "field": f}),
            None => json!({"error": self.message}),
        };
        (self.status, Json(body)).into_response()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Compiles the store and publishes it, one generation above what is in force.
pub fn publish(state: &AppState) -> Result<Published, ApiError> {
    let mut store = lock(&state.store);
    let mut publisher = lock(&state.publisher);
    let floor = publisher.generation() + 1;
    if store.generation().map_err(ApiError::from)? < floor {
        store.raise_generation(floor).map_err(ApiError::from)?;
    }
    let policy = store.compile().map_err(ApiError::from)?;
    // The artifacts the snapshot names go beside it first (once: they are named by
    // their digest), so an engine that sees the snapshot finds them.
    for (kind, sha) in [
        ("rules", &policy.inspection.rules),
        ("model", &policy.inspection.model),
        ("urls", &policy.inspection.url_blocklist),
        ("av", &policy.inspection.antivirus),
    ] {
        if sha.is_empty() {
            continue;
        }
        let path = bulwark_policy::artifact_path(publisher.path(), kind, sha);
        if path.exists() {
            continue;
        }
        let bytes = store
            .artifact_bytes(kind)
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::internal(format!("the {kind} artifact vanished")))?;
        write_artifact(&path, &bytes).map_err(ApiError::internal)?;
    }
    let image = bulwark_policy::encode(&policy).map_err(ApiError::internal)?;
    let generation = publisher.publish(&image).map_err(ApiError::internal)?;
    let p = Published {
        generation,
        size: image.len(),
        at: SystemTime::now(),
    };
    *lock(&state.published) = Some(p);
    info!(
        generation,
        bytes = image.len(),
        domains = policy.domains.len(),
        "policy published"
    );
    Ok(p)
}

/// Writes a file under a temporary name, syncs it and renames it into place.
fn write_artifact(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The largest rule upload (SpamAssassin's stock rules are under 2 MB).
const MAX_RULES_UPLOAD: usize = 32 << 20;
/// The largest model upload.
const MAX_MODEL_UPLOAD: usize = 256 << 20;
/// The largest URL blocklist upload (a million entries of about 60 octets).
const MAX_BLOCKLIST_UPLOAD: usize = 64 << 20;
/// The largest antivirus upload (ClamAV signature files as JSON).
const MAX_AV_UPLOAD: usize = 256 << 20;

/// `POST /api/v1/rules`: `{"files": [{"name": "x.cf", "text": "…"}, …]}`, SpamAssassin
/// `.cf` and Bulwark `.toml` files. They are parsed and compiled (with the built-in
/// rules) here; the compiled set replaces the one stored and is published. The answer
/// reports every rule's mode and every rule skipped, with file and line.
async fn import_rules(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let map = object(body, &["files"])?;
    let Some(Value::Array(files)) = map.get("files") else {
        return Err(ApiError::bad(
            "files",
            "files must be an array of {name, text}",
        ));
    };
    if files.is_empty() {
        return Err(ApiError::bad("files", "files is empty"));
    }
    let mut named = Vec::with_capacity(files.len());
    for f in files {
        let (Some(Value::String(name)), Some(Value::String(text))) = (f.get("name"), f.get("text"))
        else {
            return Err(ApiError::bad(
                "files",
                "each file needs a name and a text (strings)",
            ));
        };
        let ok_name = !name.is_empty()
            && name.len() <= 255
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && (name.ends_with(".cf") || name.ends_with(".toml"));
        if !ok_name {
            return Err(ApiError::bad(
                "files",
                format!(
                    "{name:?}: a file name is letters, digits, '.', '_', '-' and ends in .cf or .toml"
                ),
            ));
        }
        named.push((name.clone(), text.clone()));
    }
    let st = state.clone();
    blocking(move || {
        let dir = tempdir().map_err(ApiError::internal)?;
        let result = compile_rules(&dir, &named);
        let _ = std::fs::remove_dir_all(&dir);
        let (bytes, report) = result?;
        let sha = lock(&st.store)
            .set_artifact("rules", &bytes, &report.to_string())
            .map_err(ApiError::from)?;
        let generation = publish(&st)?.generation;
        let mut out = report;
        out["sha256"] = json!(sha);
        out["size"] = json!(bytes.len());
        out["generation"] = json!(generation);
        Ok((StatusCode::CREATED, Json(out)))
    })
    .await
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
    let name: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("bulwark-rules-{name}"));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// Parses and compiles uploaded rule files; the compiled bytes and the report.
fn compile_rules(
    dir: &std::path::Path,
    files: &[(String, String)],
) -> Result<(Vec<u8>, Value), ApiError> {
    use bulwark_inspect::{compiled::Compiled, inspector};
    for (name, text) in files {
        std::fs::write(dir.join(name), text).map_err(ApiError::internal)?;
    }
    let prefix = format!("{}/", dir.display());
    let set = inspector::load_rules(&[dir.to_path_buf()])
        .map_err(|e| ApiError::bad("files", e.to_string().replace(&prefix, "")))?;
    let compiled = Compiled::compile(&set)
        .map_err(|e| ApiError::bad("files", e.to_string().replace(&prefix, "")))?;
    let m = compiled.modes();
    let skipped: Vec<Value> = compiled
        .skipped
        .iter()
        .map(|s| {
            json!({
                "rule": s.name,
                "file": s.origin.file.trim_start_matches(&prefix),
                "line": s.origin.line,
                "reason": s.reason,
            })
        })
        .collect();
    let rules: Vec<Value> = compiled
        .rule_modes()
        .into_iter()
        .map(|(name, mode, origin)| {
            json!({"name": name, "mode": mode, "origin": origin.trim_start_matches(&prefix)})
        })
        .collect();
    let report = json!({
        "rules": rules.len(),
        "modes": {
            "hyperscan": m.hyperscan, "prefilter": m.prefilter, "pcre2": m.pcre,
            "meta": m.meta, "exists": m.exists, "native": m.native,
        },
        "skipped": skipped,
        "rule_modes": rules,
    });
    Ok((compiled.to_bytes(), report))
}

async fn get_rules(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    artifact_info(state, "rules").await
}

async fn get_model(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    artifact_info(state, "model").await
}

async fn artifact_info(state: Arc<AppState>, kind: &'static str) -> Result<Json<Value>, ApiError> {
    let info = blocking(move || {
        lock(&state.store)
            .artifact_info(kind)
            .map_err(ApiError::from)
    })
    .await?
    .ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        field: None,
        message: format!("no {kind} imported: engines use their own configuration's"),
    })?;
    let mut v = serde_json::from_str::<Value>(&info.report).unwrap_or(Value::Null);
    if !v.is_object() {
        v = json!({});
    }
    v["sha256"] = json!(info.sha256);
    v["size"] = json!(info.size);
    v["updated"] = json!(info.updated);
    Ok(Json(v))
}

async fn remove_rules(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    remove_artifact(state, "rules").await
}

async fn remove_model(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    remove_artifact(state, "model").await
}

async fn remove_artifact(
    state: Arc<AppState>,
    kind: &'static str,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        if !lock(&state.store)
            .remove_artifact(kind)
            .map_err(ApiError::from)?
        {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                field: None,
                message: format!("no {kind} imported"),
            });
        }
        Ok(Json(json!({"generation": publish(&state)?.generation})))
    })
    .await
}

/// `PUT /api/v1/model`: a model made by `bulwark learn` / `bulwark-control learn`, as the
/// request body (`application/octet-stream`).
async fn put_model(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let model = bulwark_inspect::classifier::Model::from_bytes(&body)
        .map_err(|e| ApiError::bad("body", format!("not a Bulwark model: {e}")))?;
    let report = json!({"tokens": model.tokens()});
    blocking(move || {
        let sha = lock(&state.store)
            .set_artifact("model", &body, &report.to_string())
            .map_err(ApiError::from)?;
        let generation = publish(&state)?.generation;
        Ok((
            StatusCode::CREATED,
            Json(json!({"sha256": sha, "size": body.len(), "tokens": report["tokens"], "generation": generation})),
        ))
    })
    .await
}

/// `POST /api/v1/url-blocklist`: one URL or `host/path` expression per line (`#`
/// comments), replacing the published list; a line that is neither is a 400 naming it.
async fn put_url_blocklist(
    State(state): State<Arc<AppState>>,
    body: String,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let list = bulwark_inspect::phishing::Blocklist::parse(&body)
        .map_err(|e| ApiError::bad("body", e.to_string()))?;
    if list.is_empty() {
        return Err(ApiError::bad(
            "body",
            "no entries (to remove the list, DELETE /api/v1/url-blocklist)",
        ));
    }
    let bytes = list.to_bytes();
    let report = json!({"entries": list.len()});
    blocking(move || {
        let sha = lock(&state.store)
            .set_artifact("urls", &bytes, &report.to_string())
            .map_err(ApiError::from)?;
        let generation = publish(&state)?.generation;
        Ok((
            StatusCode::CREATED,
            Json(json!({"sha256": sha, "entries": report["entries"], "generation": generation})),
        ))
    })
    .await
}

/// `POST /api/v1/antivirus`: ClamAV signature files as `{"files": [{"name": "x.hdb",
/// "text": "…"}]}` (the name's extension says the format: `.hdb`, `.hsb`, `.ndb`),
/// compiled with EICAR into the published signatures. A malformed line is a 400 naming
/// the file and line; lines this engine cannot express are skipped and listed.
async fn put_antivirus(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let map = object(body, &["files"])?;
    let files = map
        .get("files")
        .and_then(Value::as_array)
        .filter(|f| !f.is_empty())
        .ok_or_else(|| ApiError::bad("files", "files must be a non-empty array of {name, text}"))?;
    let mut set = bulwark_inspect::av::SignatureSet::builtin();
    let mut errors = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let (Some(name), Some(content)) = (
            f.get("name").and_then(Value::as_str),
            f.get("text").and_then(Value::as_str),
        ) else {
            return Err(ApiError::bad(
                "files",
                format!("files[{i}] needs a name and a text string"),
            ));
        };
        match set.add_file(name, content) {
            Ok(()) => {}
            Err(bulwark_inspect::av::AvError::Lines(l)) => errors.extend(l),
            Err(e) => return Err(ApiError::bad("files", e.to_string())),
        }
    }
    if !errors.is_empty() {
        let lines: Vec<String> = errors.iter().take(50).map(|e| e.to_string()).collect();
        return Err(ApiError::bad("files", lines.join("; ")));
    }
    let av = blocking(move || {
        set.compile()
            .map_err(|e| ApiError::bad("files", e.to_string()))
    })
    .await?;
    let counts = av.counts();
    let skipped: Vec<String> = av
        .skipped()
        .iter()
        .take(100)
        .map(|s| s.to_string())
        .collect();
    let bytes = av.to_bytes();
    let report = json!({
        "hashes": counts.hashes,
        "bodies": counts.bodies,
        "skipped": counts.skipped,
    });
    blocking(move || {
        let sha = lock(&state.store)
            .set_artifact("av", &bytes, &report.to_string())
            .map_err(ApiError::from)?;
        let generation = publish(&state)?.generation;
        Ok((
            StatusCode::CREATED,
            Json(json!({
                "sha256": sha,
                "hashes": counts.hashes,
                "bodies": counts.bodies,
                "skipped": skipped,
                "generation": generation,
            })),
        ))
    })
    .await
}

async fn get_antivirus(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    artifact_info(state, "av").await
}

async fn remove_antivirus(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    remove_artifact(state, "av").await
}

async fn get_url_blocklist(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    artifact_info(state, "urls").await
}

async fn remove_url_blocklist(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    remove_artifact(state, "urls").await
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/api/v1/domains", get(list_domains).post(add_domain))
        .route("/api/v1/domains/{name}", delete(remove_domain))
        .route(
            "/api/v1/domains/{name}/directory",
            get(list_directory).post(import_directory),
        )
        .route(
            "/api/v1/senders",
            get(list_senders).post(add_sender).delete(remove_sender),
        )
        .route("/api/v1/ips", get(list_ips).post(add_ip).delete(remove_ip))
        .route("/api/v1/ips/check", get(check_ip))
        .route("/api/v1/dnsbl", get(get_dnsbl).put(put_dnsbl))
        .route(
            "/api/v1/ips/dynamic",
            get(list_dynamic).delete(remove_dynamic),
        )
        .route("/api/v1/limits", get(get_limits).put(put_limits))
        .route(
            "/api/v1/verdicts",
            get(get_verdicts).put(put_global_verdicts),
        )
        .route(
            "/api/v1/domains/{name}/verdicts",
            get(get_domain_verdicts)
                .put(put_domain_verdicts)
                .delete(remove_domain_verdicts),
        )
        .route(
            "/api/v1/policy-rules",
            get(get_policy_rules)
                .put(put_policy_rules)
                .post(add_policy_rule),
        )
        .route("/api/v1/policy-rules/{name}", delete(remove_policy_rule))
        .route("/api/v1/snapshot", get(snapshot))
        .route("/api/v1/tracking", get(crate::api_tracking::search))
        .route(
            "/api/v1/tracking/messages/{qid}",
            get(crate::api_tracking::timeline),
        )
        .route("/api/v1/tracking/volume", get(crate::api_tracking::volume))
        .route("/api/v1/tracking/status", get(crate::api_tracking::status))
        .route(
            "/api/v1/accounts",
            get(crate::api_accounts::list).post(crate::api_accounts::create),
        )
        .route(
            "/api/v1/accounts/{name}",
            axum::routing::put(crate::api_accounts::update).delete(crate::api_accounts::remove),
        )
        .route(
            "/api/v1/tokens",
            get(crate::api_accounts::tokens).post(crate::api_accounts::create_token),
        )
        .route(
            "/api/v1/tokens/{id}",
            delete(crate::api_accounts::remove_token),
        )
        .route("/api/v1/audit", get(crate::api_accounts::audit))
        .route("/api/v1/quarantine/digest", post(send_digests))
        .route("/api/v1/end-users", get(end_users))
        .route("/api/v1/end-users/{address}", delete(remove_end_user))
        .route(
            "/api/v1/rules",
            get(get_rules)
                .post(import_rules)
                .delete(remove_rules)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_RULES_UPLOAD)),
        )
        .route(
            "/api/v1/url-blocklist",
            get(get_url_blocklist)
                .post(put_url_blocklist)
                .delete(remove_url_blocklist)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_BLOCKLIST_UPLOAD)),
        )
        .route(
            "/api/v1/antivirus",
            get(get_antivirus)
                .post(put_antivirus)
                .delete(remove_antivirus)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_AV_UPLOAD)),
        )
        .route(
            "/api/v1/model",
            get(get_model)
                .put(put_model)
                .delete(remove_model)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_MODEL_UPLOAD)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .merge(protected)
        .merge(crate::web::router())
        .merge(crate::web_user::router())
        .merge(crate::web_admin::router())
        .fallback(not_found)
        .with_state(state)
}

async fn end_users(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    let users = blocking(move || Ok(lock(&state.store).end_users()?)).await?;
    let mine: Vec<_> = users
        .into_iter()
        .filter(|u| actor.covers_address(&u.address))
        .collect();
    Ok(Json(json!(mine)))
}

async fn remove_end_user(
    State(state): State<Arc<AppState>>,
    Path(address): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let address = address.to_ascii_lowercase();
    let generation = blocking(move || {
        let changed = lock(&state.store).remove_end_user(&address)?;
        match changed {
            Some(_) => publish(&state).map(|p| Some(p.generation)),
            None => Ok(None),
        }
    })
    .await?;
    Ok(Json(json!({"removed": true, "generation": generation})))
}

async fn send_digests(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let run = blocking(move || crate::web_user::send_digests(&state)).await?;
    Ok(Json(json!(run)))
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        field: None,
        message: "no such resource; see /api/v1/openapi.json".into(),
    }
}

async fn auth(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let Some(token) = token else {
        return ApiError {
            status: StatusCode::UNAUTHORIZED,
            field: None,
            message: "a bearer token is required (Authorization: Bearer …)".into(),
        }
        .into_response();
    };
    let st = state.clone();
    let actor = match blocking(move || {
        lock(&st.store)
            .token_actor(&token)
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await
    {
        Ok(Some(a)) => a,
        Ok(None) => {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                field: None,
                message: "the bearer token is not valid".into(),
            }
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let Some(need) = crate::authz::required(&method, &path) else {
        return not_found().await.into_response();
    };
    if let Some(why) = crate::authz::refuse(&actor, &need) {
        return ApiError::forbidden(why).into_response();
    }
    req.extensions_mut().insert(actor.clone());
    let query = req.uri().query().map(str::to_string);
    let response = next.run(req).await;
    if method != "GET" && method != "HEAD" && response.status().is_success() {
        // Every change, by whom (the bodies are in the API's own log lines).
        let target = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let _ = blocking(move || {
            lock(&state.store).audit(&actor.name, &method, &target, "api");
            Ok(())
        })
        .await;
    }
    response
}

async fn list_domains(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    let mut domains =
        blocking(move || lock(&state.store).domains().map_err(ApiError::from)).await?;
    domains.retain(|d| actor.covers(&d.name));
    Ok(Json(json!(domains)))
}

/// A sender entry's scope as the caller may touch it: global entries only for accounts
/// not limited to domains.
fn sender_scope(actor: &Actor, domain: Option<&str>) -> Result<(), ApiError> {
    match domain {
        None if !actor.unrestricted() => Err(ApiError::forbidden(format!(
            "{} is limited to domains: name the domain of the entry",
            actor.name
        ))),
        Some(d) if !actor.covers(d) => Err(ApiError::forbidden(format!(
            "{d} is not one of the domains of {}",
            actor.name
        ))),
        _ => Ok(()),
    }
}

/// Reads a JSON object whose keys are all known, naming the field at fault otherwise.
pub(crate) fn object(
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
    known: &[&'static str],
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let Json(v) = body.map_err(|e| {
        ApiError::bad(
            "body",
            format!("the body must be a JSON object: {}", e.body_text()),
        )
    })?;
    let Value::Object(map) = v else {
        return Err(ApiError::bad("body", "the body must be a JSON object"));
    };
    if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad(
            "body",
            format!("unknown field {k:?}; allowed: {}", known.join(", ")),
        ));
    }
    Ok(map)
}

fn string_field(
    map: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<String, ApiError> {
    match map.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::bad(field, format!("{field} must be a string"))),
        None => Err(ApiError::bad(field, format!("{field} is required"))),
    }
}

pub(crate) async fn add_domain(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let map = object(body, &["name", "route", "tls", "tls_ca"])?;
    let name = string_field(&map, "name")?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if !is_hostname(&name) {
        return Err(ApiError::bad(
            "name",
            format!("{name:?} is not a valid domain name"),
        ));
    }
    let route = string_field(&map, "route")?;
    let (host, port) = parse_route(&route).map_err(|e| ApiError::bad("route", e))?;
    let tls = match map.get("tls") {
        None | Some(Value::Null) => "opportunistic".to_string(),
        Some(Value::String(t)) if bulwark_policy::TlsPolicy::parse(t).is_some() => t.clone(),
        Some(other) => {
            return Err(ApiError::bad(
                "tls",
                format!("{other} must be \"opportunistic\", \"required\" or \"none\""),
            ));
        }
    };
    let tls_ca = match map.get("tls_ca") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(p)) if p.is_empty() || p.starts_with('/') => p.clone(),
        Some(_) => {
            return Err(ApiError::bad(
                "tls_ca",
                "tls_ca must be an absolute path on the engine hosts",
            ));
        }
    };
    let st = state.clone();
    let (n, t, c) = (name.clone(), tls.clone(), tls_ca.clone());
    let generation = blocking(move || {
        lock(&st.store)
            .add_domain(&n, &host, port, &t, &c)
            .map_err(ApiError::from)?;
        publish(&st).map(|p| p.generation)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"name": name, "route": route, "tls": tls, "tls_ca": tls_ca, "generation": generation}),
        ),
    ))
}

pub(crate) async fn remove_domain(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = name.to_ascii_lowercase();
    let st = state.clone();
    let generation = blocking(move || {
        lock(&st.store)
            .remove_domain(&name)
            .map_err(ApiError::from)?;
        publish(&st).map(|p| p.generation)
    })
    .await?;
    Ok(Json(json!({"generation": generation})))
}

async fn list_directory(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = name.to_ascii_lowercase();
    let rows = blocking(move || {
        let store = lock(&state.store);
        if !store
            .domains()
            .map_err(ApiError::from)?
            .iter()
            .any(|d| d.name == name)
        {
            return Err(ApiError::from(StoreError::NotFound(name)));
        }
        store.directory(&name).map_err(ApiError::from)
    })
    .await?;
    Ok(Json(json!(rows)))
}

#[derive(serde::Deserialize)]
struct ImportQuery {
    skip_invalid: Option<bool>,
}

/// Imports a CSV body (column A address, column B full name). Any invalid line refuses
/// the whole file, unless `skip_invalid=true`.
async fn import_directory(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<ImportQuery>,
    body: String,
) -> Result<Response, ApiError> {
    let name = name.to_ascii_lowercase();
    let (entries, errors) = crate::csv::parse(&body, &name);
    if !errors.is_empty() && !q.skip_invalid.unwrap_or(false) {
        let message = format!(
            "{} invalid line(s); nothing was imported (pass skip_invalid=true to import the rest)",
            errors.len()
        );
        let body = json!({"error": message, "field": "body", "lines": errors});
        return Ok((StatusCode::BAD_REQUEST, Json(body)).into_response());
    }
    let imported = entries.len();
    let st = state.clone();
    let generation = blocking(move || {
        lock(&st.store)
            .import_directory(&name, &entries)
            .map_err(ApiError::from)?;
        publish(&st).map(|p| p.generation)
    })
    .await?;
    Ok(
        Json(json!({"imported": imported, "skipped": errors, "generation": generation}))
            .into_response(),
    )
}

async fn list_senders(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    let mut rows = blocking(move || lock(&state.store).senders().map_err(ApiError::from)).await?;
    rows.retain(|r| sender_scope(&actor, r.domain.as_deref()).is_ok());
    Ok(Json(json!(rows)))
}

pub(crate) async fn add_sender(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let map = object(body, &["pattern", "action", "domain"])?;
    let pattern = string_field(&map, "pattern")?.to_ascii_lowercase();
    check_sender_pattern(&pattern).map_err(|e| ApiError::bad("pattern", e))?;
    let action = string_field(&map, "action")?;
    if action != "approved" && action != "blocked" {
        return Err(ApiError::bad(
            "action",
            format!("{action:?} must be \"approved\" or \"blocked\""),
        ));
    }
    let domain = match map.get("domain") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.to_ascii_lowercase()),
        Some(_) => return Err(ApiError::bad("domain", "domain must be a string")),
    };
    sender_scope(&actor, domain.as_deref())?;
    let st = state.clone();
    let (p, a, d) = (pattern.clone(), action.clone(), domain.clone());
    let generation = blocking(move || {
        lock(&st.store)
            .set_sender(d.as_deref(), &p, &a)
            .map_err(|e| match e {
                StoreError::NotFound(n) => ApiError {
                    status: StatusCode::NOT_FOUND,
                    field: Some("domain"),
                    message: format!("domain {n} does not exist"),
                },
                other => ApiError::from(other),
            })?;
        publish(&st).map(|p| p.generation)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"pattern": pattern, "action": action, "domain": domain, "generation": generation}),
        ),
    ))
}

#[derive(serde::Deserialize)]
pub(crate) struct SenderQuery {
    pub(crate) pattern: Option<String>,
    pub(crate) domain: Option<String>,
}

pub(crate) async fn remove_sender(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<SenderQuery>,
) -> Result<Json<Value>, ApiError> {
    let Some(pattern) = q.pattern.map(|p| p.to_ascii_lowercase()) else {
        return Err(ApiError::bad(
            "pattern",
            "the pattern query parameter is required",
        ));
    };
    check_sender_pattern(&pattern).map_err(|e| ApiError::bad("pattern", e))?;
    let domain = q.domain.map(|d| d.to_ascii_lowercase());
    sender_scope(&actor, domain.as_deref())?;
    let generation = blocking(move || {
        lock(&state.store)
            .remove_sender(domain.as_deref(), &pattern)
            .map_err(ApiError::from)?;
        publish(&state).map(|p| p.generation)
    })
    .await?;
    Ok(Json(json!({"generation": generation})))
}

async fn list_ips(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let rows = blocking(move || lock(&state.store).ips().map_err(ApiError::from)).await?;
    Ok(Json(json!(rows)))
}

/// The canonical text of an address or network (`192.0.2.0/24`, `2001:db8::/32`).
fn canonical_cidr(text: &str) -> Option<String> {
    bulwark_policy::Cidr::parse(text).map(|c| c.to_string())
}

pub(crate) async fn add_ip(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let map = object(body, &["cidr", "action"])?;
    let raw = string_field(&map, "cidr")?;
    let cidr = canonical_cidr(&raw).ok_or_else(|| {
        ApiError::bad(
            "cidr",
            format!("{raw:?} is not an IP address or CIDR network"),
        )
    })?;
    let action = string_field(&map, "action")?;
    if action != "allow" && action != "block" && action != "drop" {
        return Err(ApiError::bad(
            "action",
            format!("{action:?} must be \"allow\", \"block\" or \"drop\""),
        ));
    }
    let st = state.clone();
    let (c, a) = (cidr.clone(), action.clone());
    let generation = blocking(move || {
        lock(&st.store).set_ip(&c, &a).map_err(ApiError::from)?;
        publish(&st).map(|p| p.generation)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"cidr": cidr, "action": action, "generation": generation})),
    ))
}

#[derive(serde::Deserialize)]
pub(crate) struct IpQuery {
    pub(crate) cidr: Option<String>,
}

pub(crate) async fn remove_ip(
    State(state): State<Arc<AppState>>,
    Query(q): Query<IpQuery>,
) -> Result<Json<Value>, ApiError> {
    let Some(raw) = q.cidr else {
        return Err(ApiError::bad(
            "cidr",
            "the cidr query parameter is required",
        ));
    };
    let cidr = canonical_cidr(&raw).ok_or_else(|| {
        ApiError::bad(
            "cidr",
            format!("{raw:?} is not an IP address or CIDR network"),
        )
    })?;
    let generation = blocking(move || {
        lock(&state.store)
            .remove_ip(&cidr)
            .map_err(ApiError::from)?;
        publish(&state).map(|p| p.generation)
    })
    .await?;
    Ok(Json(json!({"generation": generation})))
}

#[derive(serde::Deserialize)]
struct AddressQuery {
    address: Option<String>,
}

fn address_param(q: AddressQuery) -> Result<(String, std::net::IpAddr), ApiError> {
    let Some(raw) = q.address else {
        return Err(ApiError::bad(
            "address",
            "the address query parameter is required",
        ));
    };
    match raw.split('/').next().unwrap_or_default().trim().parse() {
        Ok(ip) => Ok((raw, ip)),
        Err(_) => Err(ApiError::bad(
            "address",
            format!("{raw:?} is not an IP address"),
        )),
    }
}

/// One request to the engine's core 0 admin socket; its JSON answer.
pub(crate) fn engine_request(state: &AppState, req: Value) -> Result<Value, ApiError> {
    engine_request_core(state, 0, req)
}

/// A request to the admin socket of one core of the engine on this host.
pub(crate) fn engine_request_core(
    state: &AppState,
    core: usize,
    req: Value,
) -> Result<Value, ApiError> {
    use std::io::{BufRead, Write};
    let Some(dir) = &state.engine_admin_dir else {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            field: Some("engine_admin_dir"),
            message:
                "control.engine_admin_dir is not set: the control service cannot reach an engine"
                    .into(),
        });
    };
    let path = dir.join(format!("core-{core}.sock"));
    let unreachable = |e: std::io::Error| ApiError {
        status: StatusCode::BAD_GATEWAY,
        field: None,
        message: format!("the engine did not answer on {}: {e}", path.display()),
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(&req).map_err(ApiError::internal)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(unreachable)?;
    let v: Value = serde_json::from_str(&answer).map_err(|e| ApiError {
        status: StatusCode::BAD_GATEWAY,
        field: None,
        message: format!("the engine answered something else than JSON: {e}"),
    })?;
    if v["ok"] != json!(true) {
        return Err(ApiError {
            status: StatusCode::BAD_GATEWAY,
            field: None,
            message: format!(
                "the engine refused: {}",
                v["error"].as_str().unwrap_or("no reason given")
            ),
        });
    }
    Ok(v)
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct DnsblZoneSpec {
    zone: String,
    #[serde(default = "one")]
    weight: i32,
    #[serde(default = "standard")]
    class: String,
    #[serde(default)]
    answers: Vec<String>,
}

fn one() -> i32 {
    1
}

fn standard() -> String {
    "standard".into()
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct DnsblSpec {
    #[serde(default = "one")]
    threshold: i32,
    #[serde(default)]
    allow_threshold: i32,
    #[serde(default)]
    zones: Vec<DnsblZoneSpec>,
}

fn dnsbl_spec(p: &bulwark_policy::DnsblPolicy) -> DnsblSpec {
    DnsblSpec {
        threshold: p.threshold,
        allow_threshold: p.allow_threshold,
        zones: p
            .zones
            .iter()
            .map(|z| DnsblZoneSpec {
                zone: z.zone.clone(),
                weight: z.weight,
                class: if z.dynamic { "dynamic" } else { "standard" }.into(),
                answers: z.answers.clone(),
            })
            .collect(),
    }
}

/// The DNS lists and thresholds the engines use.
async fn get_dnsbl(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let p = blocking(move || lock(&state.store).dnsbl().map_err(ApiError::from)).await?;
    Ok(Json(json!(dnsbl_spec(&p))))
}

/// Replaces the DNS lists and thresholds and publishes; every zone is checked first and
/// the first fault named (`zones[N].field`).
async fn put_dnsbl(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let spec: DnsblSpec = json_body(body)?;
    let mut zones = Vec::with_capacity(spec.zones.len());
    for (i, z) in spec.zones.into_iter().enumerate() {
        let dynamic = match z.class.as_str() {
            "standard" => false,
            "dynamic" => true,
            other => {
                return Err(ApiError::bad(
                    "zones",
                    format!("zones[{i}].class: {other:?} must be \"standard\" or \"dynamic\""),
                ));
            }
        };
        zones.push(bulwark_policy::DnsblZone {
            zone: z.zone.trim().trim_end_matches('.').to_ascii_lowercase(),
            weight: z.weight,
            dynamic,
            answers: z.answers.iter().map(|a| a.trim().to_string()).collect(),
        });
    }
    let policy = bulwark_policy::DnsblPolicy {
        zones,
        threshold: spec.threshold,
        allow_threshold: spec.allow_threshold,
    };
    if let Err((field, message)) = bulwark_policy::dnsbl::validate(&policy) {
        let top: &'static str = if field.starts_with("zones") {
            "zones"
        } else if field == "threshold" {
            "threshold"
        } else {
            "allow_threshold"
        };
        return Err(ApiError::bad(top, format!("{field}: {message}")));
    }
    let zones = policy.zones.len();
    let generation = blocking(move || {
        lock(&state.store)
            .set_dnsbl(&policy)
            .map_err(ApiError::from)?;
        publish(&state).map(|p| p.generation)
    })
    .await?;
    Ok(Json(json!({"generation": generation, "zones": zones})))
}

/// What a connection from an address would get, and why: asked of the engine (IP
/// lists, pregreet, dynamic blocks, DNS lists, throttles) when `engine_admin_dir` is
/// set, else from the stored lists alone.
async fn check_ip(
    State(state): State<Arc<AppState>>,
    Query(q): Query<AddressQuery>,
) -> Result<Json<Value>, ApiError> {
    let (address, ip) = address_param(q)?;
    blocking(move || {
        if state.engine_admin_dir.is_some() {
            let v = engine_request(&state, json!({"op": "check", "address": address}))?;
            return Ok(Json(v["check"].clone()));
        }
        let policy = lock(&state.store).compile().map_err(ApiError::from)?;
        let find = |l: &[bulwark_policy::Cidr]| {
            l.iter()
                .find(|c| c.contains(ip))
                .map(|c| c.to_string())
        };
        let mut steps = Vec::new();
        let mut verdict = "accepted";
        let mut reply = "";
        if let Some(n) = find(&policy.ips.allow) {
            steps.push(json!(["approved_ips", format!("listed in {n}: every later check is skipped")]));
            verdict = "approved";
        } else if let Some(n) = find(&policy.ips.block) {
            steps.push(json!(["approved_ips", "not listed"]));
            steps.push(json!(["blocked_ips", format!("listed in {n}")]));
            verdict = "blocked";
            reply = "554 5.7.1 Connection refused: your address is blocked by policy";
        } else if let Some(n) = find(&policy.ips.drop) {
            steps.push(json!(["approved_ips", "not listed"]));
            steps.push(json!(["blocked_ips", format!("listed in {n} to drop: the XDP program drops its packets (refused at accept with 554 5.7.1 where it is not loaded)")]));
            verdict = "drop";
        } else {
            steps.push(json!(["approved_ips", "not listed"]));
            steps.push(json!(["blocked_ips", "not listed"]));
            steps.push(json!(["engine", "control.engine_admin_dir is not set: dynamic blocks, DNS lists and throttles were not checked"]));
        }
        Ok(Json(json!({
            "address": address,
            "client": bulwark_policy::dynamic_key_network(bulwark_policy::dynamic_key(
                ip,
                policy.throttle.ipv4_prefix,
                policy.throttle.ipv6_prefix
            )),
            "verdict": verdict,
            "reply": reply,
            "group": if verdict == "approved" { "approved" } else { "" },
            "steps": steps,
        })))
    })
    .await
}

/// The engine's dynamic blocks in force.
async fn list_dynamic(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let v = engine_request(&state, json!({"op": "dynamic-list"}))?;
        Ok(Json(v["blocks"].clone()))
    })
    .await
}

/// Lifts the dynamic block (and throttles) of an address's client on every core.
async fn remove_dynamic(
    State(state): State<Arc<AppState>>,
    Query(q): Query<AddressQuery>,
) -> Result<Json<Value>, ApiError> {
    let (address, _) = address_param(q)?;
    blocking(move || {
        let v = engine_request(&state, json!({"op": "dynamic-remove", "address": address}))?;
        Ok(Json(json!({"address": address, "removed": v["removed"]})))
    })
    .await
}

async fn get_limits(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let l = blocking(move || lock(&state.store).limits().map_err(ApiError::from)).await?;
    Ok(Json(Value::Object(
        l.into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
    )))
}

/// Sets any of the limits; every field given is range-checked before anything changes.
async fn put_limits(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let names: Vec<&'static str> = crate::store::LIMITS.iter().map(|(k, _, _)| *k).collect();
    let map = object(body, &names)?;
    if map.is_empty() {
        return Err(ApiError::bad(
            "body",
            format!("give at least one of: {}", names.join(", ")),
        ));
    }
    let mut values = Vec::new();
    for (name, min, max) in crate::store::LIMITS {
        let Some(v) = map.get(name) else { continue };
        match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => values.push((name, n)),
            _ => {
                return Err(ApiError::bad(
                    name,
                    format!("{name} must be an integer from {min} to {max}"),
                ));
            }
        }
    }
    let st = state.clone();
    let generation = blocking(move || {
        lock(&st.store)
            .set_limits(&values)
            .map_err(ApiError::from)?;
        publish(&st).map(|p| p.generation)
    })
    .await?;
    let mut out = get_limits(State(state)).await?.0;
    out["generation"] = json!(generation);
    Ok(Json(out))
}

/// Reads a JSON body as `T`, a 400 naming what is wrong otherwise.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    let Json(v) = body.map_err(|e| {
        ApiError::bad(
            "body",
            format!("the body must be a JSON object: {}", e.body_text()),
        )
    })?;
    serde_json::from_value(v).map_err(|e| ApiError::bad("body", e.to_string()))
}

fn verdict_spec(
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<VerdictSpec, ApiError> {
    let spec: VerdictSpec = json_body(body)?;
    spec.compile().map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        field: Some(verdict_field(&e.field)),
        message: e.to_string(),
    })?;
    Ok(spec)
}

/// The static name of a verdict spec's field (for the error body).
fn verdict_field(name: &str) -> &'static str {
    const FIELDS: [&str; 11] = [
        "tag_threshold",
        "spam_threshold",
        "spam_action",
        "phishing_action",
        "malformed_action",
        "dmarc_reject_action",
        "dmarc_quarantine_action",
        "virus_action",
        "limit_action",
        "antivirus_on_failure",
        "subject_tag",
    ];
    FIELDS.into_iter().find(|f| *f == name).unwrap_or("body")
}

async fn get_verdicts(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let all = blocking(move || lock(&state.store).verdicts().map_err(ApiError::from)).await?;
    let mut global = json!({});
    let mut domains = serde_json::Map::new();
    for (scope, spec) in all {
        if scope.is_empty() {
            global = json!(spec);
        } else {
            domains.insert(scope, json!(spec));
        }
    }
    Ok(Json(json!({"global": global, "domains": domains})))
}

async fn set_verdicts(
    state: Arc<AppState>,
    scope: String,
    spec: VerdictSpec,
) -> Result<Json<Value>, ApiError> {
    let st = state.clone();
    let generation = blocking(move || {
        lock(&st.store)
            .set_verdicts(&scope, &spec)
            .map_err(ApiError::from)?;
        publish(&st).map(|p| p.generation)
    })
    .await?;
    Ok(Json(json!({"generation": generation})))
}

/// Replaces the thresholds and actions for every domain (`{}`: the engines' own).
pub(crate) async fn put_global_verdicts(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let spec = verdict_spec(body)?;
    set_verdicts(state, String::new(), spec).await
}

async fn get_domain_verdicts(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = name.to_ascii_lowercase();
    let found = blocking(move || {
        let store = lock(&state.store);
        if !store.domains()?.iter().any(|d| d.name == name) {
            return Err(ApiError::from(StoreError::NotFound(name)));
        }
        Ok(store.verdicts()?.into_iter().find(|(s, _)| *s == name))
    })
    .await?;
    Ok(Json(
        found.map_or_else(|| json!({}), |(_, spec)| json!(spec)),
    ))
}

/// Replaces a domain's own thresholds and actions (`{}`: inherit all).
async fn put_domain_verdicts(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let spec = verdict_spec(body)?;
    set_verdicts(state, name.to_ascii_lowercase(), spec).await
}

async fn remove_domain_verdicts(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_verdicts(state, name.to_ascii_lowercase(), VerdictSpec::default()).await
}

async fn get_policy_rules(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let rules = blocking(move || lock(&state.store).policy_rules().map_err(ApiError::from)).await?;
    Ok(Json(json!({ "rules": rules })))
}

/// Changes the policy rules with `edit` (given the stored list) under the store's lock,
/// validates the result and stores it, publishing a new generation.
async fn edit_policy_rules(
    state: Arc<AppState>,
    edit: impl FnOnce(&mut Vec<RuleSpec>) -> Result<(), ApiError> + Send + 'static,
) -> Result<Json<Value>, ApiError> {
    let st = state.clone();
    blocking(move || {
        let count = {
            let mut store = lock(&st.store);
            let mut rules = store.policy_rules()?;
            edit(&mut rules)?;
            bulwark_policy::filtering::compile_rules(&rules).map_err(|e| ApiError {
                status: StatusCode::BAD_REQUEST,
                field: Some("rules"),
                message: e.to_string(),
            })?;
            store.set_policy_rules(&rules)?;
            rules.len()
        };
        let generation = publish(&st)?.generation;
        Ok(Json(json!({"generation": generation, "rules": count})))
    })
    .await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleList {
    rules: Vec<RuleSpec>,
}

/// Replaces every policy rule: `{"rules": [...]}`, in the order they are tried.
async fn put_policy_rules(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let list: RuleList = json_body(body)?;
    edit_policy_rules(state, move |rules| {
        *rules = list.rules;
        Ok(())
    })
    .await
}

/// Adds one rule after the others (or before the rule `before` names).
async fn add_policy_rule(
    State(state): State<Arc<AppState>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let rule: RuleSpec = json_body(body)?;
    let before = q.get("before").cloned();
    let out = edit_policy_rules(state, move |rules| {
        let at = match before {
            None => rules.len(),
            Some(name) => rules.iter().position(|r| r.name == name).ok_or_else(|| {
                ApiError::bad("before", format!("there is no policy rule {name:?}"))
            })?,
        };
        rules.insert(at, rule);
        Ok(())
    })
    .await?;
    Ok((StatusCode::CREATED, out))
}

async fn remove_policy_rule(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    edit_policy_rules(state, move |rules| {
        let before = rules.len();
        rules.retain(|r| r.name != name);
        if rules.len() == before {
            return Err(ApiError::from(StoreError::NotListed(format!(
                "policy rule {name:?}"
            ))));
        }
        Ok(())
    })
    .await
}

/// The generation an engine reports on its metrics endpoint.
/// An engine's Prometheus metrics, as text.
pub(crate) fn engine_metrics(addr: SocketAddr) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text)
}

fn engine_generation(addr: SocketAddr) -> Result<u64, String> {
    engine_metrics(addr)?
        .lines()
        .find_map(|l| l.strip_prefix("bulwark_policy_generation "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| "no bulwark_policy_generation in its metrics".to_string())
}

async fn snapshot(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let st = state.clone();
    blocking(move || {
        let published = *lock(&st.published);
        let engines: Vec<Value> = st
            .engines
            .iter()
            .map(|e| match engine_generation(*e) {
                Ok(g) => json!({"endpoint": e.to_string(), "generation": g}),
                Err(err) => {
                    warn!(engine = %e, "cannot read the engine's generation: {err}");
                    json!({"endpoint": e.to_string(), "error": err})
                }
            })
            .collect();
        let Some(p) = published else {
            return Ok(Json(json!({"generation": null, "engines": engines})));
        };
        let at = p.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let age = p.at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
        Ok(Json(json!({"generation": p.generation, "size": p.size, "published_at": at, "age_seconds": age, "engines": engines})))
    })
    .await
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// The OpenAPI 3.0 description of this API, kept beside the routes it describes.
pub(crate) const OPENAPI: &str = r##"{
  "openapi": "3.0.3",
  "info": {"title": "Bulwark control API", "version": "1"},
  "servers": [{"url": "/"}],
  "components": {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    "schemas": {
      "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "field": {"type": "string"}}},
      "Domain": {"type": "object", "required": ["name", "route"], "additionalProperties": false,
        "properties": {"name": {"type": "string", "description": "domain name"}, "route": {"type": "string", "description": "host:port of the customer's server"},
          "tls": {"type": "string", "enum": ["opportunistic", "required", "none"], "description": "TLS on delivery to the route"},
          "tls_ca": {"type": "string", "description": "CA file (absolute path on the engines) for tls=required; empty: web PKI roots"}}},
      "Sender": {"type": "object", "required": ["pattern", "action"], "additionalProperties": false,
        "properties": {"pattern": {"type": "string"}, "action": {"type": "string", "enum": ["approved", "blocked"]}, "domain": {"type": "string"}}},
      "Dnsbl": {"type": "object", "additionalProperties": false, "properties": {
        "threshold": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "score from which a client's mail is refused"},
        "allow_threshold": {"type": "integer", "minimum": -1000, "maximum": 0, "description": "a negative score at or below which the later tests are skipped (0: off)"},
        "zones": {"type": "array", "maxItems": 32, "items": {"type": "object", "required": ["zone"], "additionalProperties": false, "properties": {
          "zone": {"type": "string"}, "weight": {"type": "integer", "minimum": -1000, "maximum": 1000, "description": "not 0; negative for allow lists"},
          "class": {"type": "string", "enum": ["standard", "dynamic"]}, "answers": {"type": "array", "items": {"type": "string"}}}}}}},
      "Ip": {"type": "object", "required": ["cidr", "action"], "additionalProperties": false,
        "properties": {"cidr": {"type": "string"}, "action": {"type": "string", "enum": ["allow", "block", "drop"]}}},
      "Limits": {"type": "object", "additionalProperties": false, "properties": {
        "message_size": {"type": "integer", "minimum": 1024, "maximum": 4294967296},
        "recipients": {"type": "integer", "minimum": 1, "maximum": 100000},
        "harvest_max_unknown": {"type": "integer", "minimum": 0, "maximum": 1000000},
        "harvest_window_secs": {"type": "integer", "minimum": 1, "maximum": 2592000},
        "harvest_block_secs": {"type": "integer", "minimum": 1, "maximum": 2592000},
        "throttle_unknown_connections": {"type": "integer", "minimum": 0, "maximum": 100000},
        "throttle_unknown_connections_per_minute": {"type": "integer", "minimum": 0, "maximum": 1000000},
        "throttle_unknown_messages_per_session": {"type": "integer", "minimum": 0, "maximum": 100000},
        "throttle_unknown_recipients_per_hour": {"type": "integer", "minimum": 0, "maximum": 100000000},
        "throttle_unknown_failed_recipients_per_hour": {"type": "integer", "minimum": 0, "maximum": 100000000},
        "throttle_unknown_protocol_errors_per_hour": {"type": "integer", "minimum": 0, "maximum": 1000000},
        "throttle_suspect_connections": {"type": "integer", "minimum": 0, "maximum": 100000},
        "throttle_suspect_connections_per_minute": {"type": "integer", "minimum": 0, "maximum": 1000000},
        "throttle_suspect_messages_per_session": {"type": "integer", "minimum": 0, "maximum": 100000},
        "throttle_suspect_recipients_per_hour": {"type": "integer", "minimum": 0, "maximum": 100000000},
        "throttle_suspect_failed_recipients_per_hour": {"type": "integer", "minimum": 0, "maximum": 100000000},
        "throttle_suspect_protocol_errors_per_hour": {"type": "integer", "minimum": 0, "maximum": 1000000},
        "throttle_block_after": {"type": "integer", "minimum": 0, "maximum": 1000000},
        "throttle_block_window_secs": {"type": "integer", "minimum": 1, "maximum": 86400},
        "throttle_block_secs": {"type": "integer", "minimum": 1, "maximum": 2592000},
        "throttle_block_max_secs": {"type": "integer", "minimum": 1, "maximum": 2592000},
        "throttle_ipv4_prefix": {"type": "integer", "minimum": 24, "maximum": 32},
        "throttle_ipv6_prefix": {"type": "integer", "minimum": 48, "maximum": 64}}},
      "Verdicts": {"type": "object", "additionalProperties": false, "description": "absent keys inherit (a domain's from the global settings, the global from the engines' [inspection])",
        "properties": {"tag_threshold": {"type": "number"}, "spam_threshold": {"type": "number"},
          "spam_action": {"$ref": "#/components/schemas/Action"}, "phishing_action": {"$ref": "#/components/schemas/Action"},
          "malformed_action": {"$ref": "#/components/schemas/Action"}, "dmarc_reject_action": {"$ref": "#/components/schemas/Action"},
          "dmarc_quarantine_action": {"$ref": "#/components/schemas/Action"},
          "virus_action": {"$ref": "#/components/schemas/Action"}, "limit_action": {"$ref": "#/components/schemas/Action"},
          "antivirus_on_failure": {"type": "string", "enum": ["tempfail", "tag"], "description": "clamd cannot answer: 451 4.7.0, or deliver tagged"}, "subject_tag": {"type": "string", "maxLength": 200}}},
      "Action": {"type": "string", "enum": ["deliver", "tag", "strip", "quarantine", "reject"]},
      "PolicyRule": {"type": "object", "required": ["name", "action"], "additionalProperties": false,
        "description": "every condition given must hold; the first rule that holds sets the action",
        "properties": {"name": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,100}$"},
          "senders": {"type": "array", "items": {"type": "string"}, "description": "user@domain, domain or *.domain; any"},
          "recipients": {"type": "array", "items": {"type": "string"}, "description": "user@domain, domain or *.domain; any"},
          "header": {"type": "string", "description": "a header field name; alone: the field exists"},
          "contains": {"type": "array", "items": {"type": "string"}, "description": "the header's value contains one of these (case-insensitive)"},
          "min_size": {"type": "integer", "minimum": 0}, "max_size": {"type": "integer", "minimum": 0},
          "min_score": {"type": "number"}, "max_score": {"type": "number"},
          "verdicts": {"type": "array", "items": {"type": "string", "enum": ["clean", "suspect", "spam", "phishing", "authfail", "malformed", "virus", "limit"]}},
          "attachment_types": {"type": "array", "description": "one attachment's true type or group; any", "items": {"type": "string", "enum": ["pe", "elf", "macho", "script", "ole_macro", "ole", "ooxml_macro", "ooxml", "pdf_javascript", "pdf", "html", "zip", "gzip", "tar", "bzip2", "xz", "7z", "rar", "image", "other", "executable", "macro", "archive", "document"]}},
          "attachment_extensions": {"type": "array", "items": {"type": "string"}, "description": "file name extensions without the dot; any"},
          "attachment_names": {"type": "array", "items": {"type": "string"}, "description": "file name patterns with * and ?; any"},
          "attachment_min_size": {"type": "integer", "minimum": 0}, "attachment_max_size": {"type": "integer", "minimum": 0},
          "double_extension": {"type": "boolean", "description": "true: an attachment named like invoice.pdf.exe"},
          "encrypted": {"type": "boolean", "description": "true: an encrypted archive or member"},
          "unscannable": {"type": "boolean", "description": "true: an archive that could not be read (RAR, corrupt)"},
          "action": {"$ref": "#/components/schemas/Action"}}},
      "Snapshot": {"type": "object", "properties": {
        "generation": {"type": "integer", "nullable": true}, "size": {"type": "integer"}, "published_at": {"type": "integer"},
        "age_seconds": {"type": "number"},
        "engines": {"type": "array", "items": {"type": "object", "properties": {"endpoint": {"type": "string"}, "generation": {"type": "integer"}, "error": {"type": "string"}}}}}}
    }
  },
  "security": [{"bearer": []}],
  "paths": {
    "/api/v1/domains": {
      "get": {"summary": "List managed domains", "responses": {
        "200": {"description": "domains", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Domain"}}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "post": {"summary": "Add a managed domain and publish", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Domain"}}}},
        "responses": {
          "201": {"description": "added; the new generation is published", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "409": {"description": "exists", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/domains/{name}": {
      "delete": {"summary": "Remove a managed domain and publish",
        "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
        "responses": {
          "200": {"description": "removed", "content": {"application/json": {"schema": {"type": "object"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "404": {"description": "no such domain", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/domains/{name}/directory": {
      "get": {"summary": "The recipient directory of a domain",
        "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
        "responses": {
          "200": {"description": "addresses", "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object", "properties": {"address": {"type": "string"}, "name": {"type": "string"}}}}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "404": {"description": "no such domain", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "post": {"summary": "Import addresses from CSV (column A address, column B full name) and publish",
        "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}},
                       {"name": "skip_invalid", "in": "query", "required": false, "schema": {"type": "boolean"}}],
        "requestBody": {"required": true, "content": {"text/csv": {"schema": {"type": "string"}}}},
        "responses": {
          "200": {"description": "imported", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid lines, each with its number; nothing imported", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "404": {"description": "no such domain", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/senders": {
      "get": {"summary": "Approved and blocked senders", "responses": {
        "200": {"description": "entries", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Sender"}}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "post": {"summary": "Approve or block a sender (address, domain or *.domain), globally or for one domain, and publish",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Sender"}}}},
        "responses": {
          "201": {"description": "listed", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "404": {"description": "no such domain", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "delete": {"summary": "Remove a sender entry and publish",
        "parameters": [{"name": "pattern", "in": "query", "required": true, "schema": {"type": "string"}},
                       {"name": "domain", "in": "query", "required": false, "schema": {"type": "string"}}],
        "responses": {
          "200": {"description": "removed", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "404": {"description": "not listed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/dnsbl": {
      "get": {"summary": "DNS block and allow lists with their thresholds", "responses": {
        "200": {"description": "lists", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Dnsbl"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "put": {"summary": "Replace the DNS lists and thresholds and publish",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Dnsbl"}}}},
        "responses": {
          "200": {"description": "published", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid field (zones[N].field named in the message)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}},
    "/api/v1/ips/check": {
      "get": {"summary": "What a connection from an address would get, step by step (the engine's answer when control.engine_admin_dir is set, else the stored lists')",
        "parameters": [{"name": "address", "in": "query", "required": true, "schema": {"type": "string"}}],
        "responses": {
          "200": {"description": "verdict, reply, group and steps", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid address", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "502": {"description": "the engine did not answer", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}},
    "/api/v1/ips/dynamic": {
      "get": {"summary": "The engine's dynamic blocks in force",
        "responses": {
          "200": {"description": "blocks: network, key, reason, until, remaining_ms", "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "409": {"description": "control.engine_admin_dir is not set", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "502": {"description": "the engine did not answer", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "delete": {"summary": "Lift the dynamic block and throttles of an address's client on every core",
        "parameters": [{"name": "address", "in": "query", "required": true, "schema": {"type": "string"}}],
        "responses": {
          "200": {"description": "lifted (removed: whether a block was in force)", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid address", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "409": {"description": "control.engine_admin_dir is not set", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "502": {"description": "the engine did not answer", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}},
    "/api/v1/ips": {
      "get": {"summary": "IP allow, block and drop lists", "responses": {
        "200": {"description": "entries", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Ip"}}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "post": {"summary": "Allow, block or drop an address or CIDR network and publish",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ip"}}}},
        "responses": {
          "201": {"description": "listed", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "delete": {"summary": "Remove an IP entry and publish",
        "parameters": [{"name": "cidr", "in": "query", "required": true, "schema": {"type": "string"}}],
        "responses": {
          "200": {"description": "removed", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "404": {"description": "not listed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/limits": {
      "get": {"summary": "Message size, recipient and harvest-protection limits", "responses": {
        "200": {"description": "limits", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Limits"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "put": {"summary": "Set some limits and publish", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Limits"}}}},
        "responses": {
          "200": {"description": "the limits now in force", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/rules": {
      "get": {"summary": "The imported rule set: digest, size, modes, skipped rules", "responses": {
        "200": {"description": "rules", "content": {"application/json": {"schema": {"type": "object"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "none imported", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "post": {"summary": "Import rule files (SpamAssassin .cf, Bulwark .toml), compile and publish", "requestBody": {"required": true, "content": {"application/json": {"schema": {
          "type": "object", "required": ["files"], "additionalProperties": false, "properties": {
            "files": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["name", "text"], "properties": {
              "name": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]*[.](cf|toml)$"}, "text": {"type": "string"}}}}}}}}},
        "responses": {
          "201": {"description": "compiled and published: each rule's mode, rules skipped with file and line", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "a file that does not parse or compile (file and line named)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "413": {"description": "upload too large"}}},
      "delete": {"summary": "Remove the imported rules (engines go back to their own) and publish", "responses": {
        "200": {"description": "removed", "content": {"application/json": {"schema": {"type": "object"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "none imported", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/model": {
      "get": {"summary": "The classifier model: digest, size, tokens", "responses": {
        "200": {"description": "model", "content": {"application/json": {"schema": {"type": "object"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "none", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "put": {"summary": "Replace the classifier model (made by bulwark-control learn) and publish", "requestBody": {"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {
          "201": {"description": "stored and published", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "not a model", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "413": {"description": "upload too large"}}},
      "delete": {"summary": "Remove the model and publish", "responses": {
        "200": {"description": "removed", "content": {"application/json": {"schema": {"type": "object"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "none", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/antivirus": {
      "get": {"summary": "The published antivirus signatures: digest, size, counts", "responses": {
        "200": {"description": "the signatures' report", "content": {"application/json": {"schema": {"type": "object"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "none published", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "post": {"summary": "Replace the antivirus signatures with EICAR and these ClamAV files (.hdb, .hsb, .ndb) and publish", "requestBody": {"required": true, "content": {"application/json": {"schema": {
          "type": "object", "required": ["files"], "properties": {"files": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["name", "content"],
            "properties": {"name": {"type": "string"}, "text": {"type": "string"}}}}}}}}},
        "responses": {
          "201": {"description": "published (with the lines skipped)", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "a malformed line (file and line named) or a file of another kind", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "413": {"description": "upload too large"}}},
      "delete": {"summary": "Remove the published signatures (engines use their own) and publish", "responses": {
        "200": {"description": "removed", "content": {"application/json": {"schema": {"type": "object"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "none published", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/url-blocklist": {
      "get": {"summary": "The published URL blocklist: digest, size, entries", "responses": {
        "200": {"description": "the list's report", "content": {"application/json": {"schema": {"type": "object"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "none published", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "post": {"summary": "Replace the URL blocklist (one URL or host/path per line, # comments) and publish", "requestBody": {"required": true, "content": {"text/plain": {"schema": {"type": "string"}}}},
        "responses": {
          "201": {"description": "published", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "a line that is not a URL or host/path (line named), or no entries", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "413": {"description": "upload too large"}}},
      "delete": {"summary": "Remove the published list (engines use their own) and publish", "responses": {
        "200": {"description": "removed", "content": {"application/json": {"schema": {"type": "object"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "none published", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/verdicts": {
      "get": {"summary": "Thresholds and actions: the global settings and each domain's own", "responses": {
        "200": {"description": "{global, domains}", "content": {"application/json": {"schema": {"type": "object", "properties": {
          "global": {"$ref": "#/components/schemas/Verdicts"}, "domains": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Verdicts"}}}}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "put": {"summary": "Replace the global settings ({} inherits the engines') and publish", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Verdicts"}}}},
        "responses": {
          "200": {"description": "published", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/domains/{name}/verdicts": {
      "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
      "get": {"summary": "A domain's own thresholds and actions", "responses": {
        "200": {"description": "settings", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Verdicts"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "no such domain", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "put": {"summary": "Replace a domain's own settings and publish", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Verdicts"}}}},
        "responses": {
          "200": {"description": "published", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "404": {"description": "no such domain", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "delete": {"summary": "Remove a domain's own settings (it inherits) and publish", "responses": {
        "200": {"description": "published", "content": {"application/json": {"schema": {"type": "object"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "no such domain", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/policy-rules": {
      "get": {"summary": "Policy rules in the order they are tried", "responses": {
        "200": {"description": "{rules}", "content": {"application/json": {"schema": {"type": "object", "properties": {"rules": {"type": "array", "items": {"$ref": "#/components/schemas/PolicyRule"}}}}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "put": {"summary": "Replace every rule and publish", "requestBody": {"required": true, "content": {"application/json": {"schema": {
          "type": "object", "required": ["rules"], "additionalProperties": false, "properties": {"rules": {"type": "array", "items": {"$ref": "#/components/schemas/PolicyRule"}}}}}}},
        "responses": {
          "200": {"description": "published", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "a rule that does not hold together (rules[N].field named)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "post": {"summary": "Add one rule at the end, or before the rule named by ?before=NAME, and publish",
        "parameters": [{"name": "before", "in": "query", "required": false, "schema": {"type": "string"}}],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PolicyRule"}}}},
        "responses": {
          "201": {"description": "published", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "invalid rule", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/policy-rules/{name}": {
      "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
      "delete": {"summary": "Remove a rule and publish", "responses": {
        "200": {"description": "published", "content": {"application/json": {"schema": {"type": "object"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "no such rule", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/snapshot": {
      "get": {"summary": "The published snapshot and the generation each engine runs", "responses": {
        "200": {"description": "snapshot", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Snapshot"}}}},
        "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/tracking": {
      "get": {"summary": "Search tracked messages and refused connections (newest first; an account limited to domains sees only theirs)",
        "parameters": [
          {"name": "since", "in": "query", "required": false, "description": "from: 2026-12-01, 2026-12-01T10:00:00Z, Unix seconds, or an age (2h, 7d); default a day before until", "schema": {"type": "string"}},
          {"name": "until", "in": "query", "required": false, "description": "until (default now)", "schema": {"type": "string"}},
          {"name": "traffic", "in": "query", "required": false, "schema": {"type": "string", "enum": ["accepted", "blocked", "all"]}},
          {"name": "sender", "in": "query", "required": false, "description": "address, or @domain", "schema": {"type": "string"}},
          {"name": "recipient", "in": "query", "required": false, "description": "address, or @domain", "schema": {"type": "string"}},
          {"name": "ip", "in": "query", "required": false, "description": "client IP address", "schema": {"type": "string"}},
          {"name": "qid", "in": "query", "required": false, "description": "queue id", "schema": {"type": "string"}},
          {"name": "subject", "in": "query", "required": false, "description": "3 or more characters of the subject", "schema": {"type": "string"}},
          {"name": "verdict", "in": "query", "required": false, "description": "none, clean, spam, phishing, malformed, authfail, virus, limit", "schema": {"type": "string"}},
          {"name": "action", "in": "query", "required": false, "description": "deliver, tag, quarantine, strip, reject, defer", "schema": {"type": "string"}},
          {"name": "status", "in": "query", "required": false, "description": "queued, delivered, deferred, bounced, expired, quarantined, released, deleted, rejected, refused, mixed", "schema": {"type": "string"}},
          {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
          {"name": "before", "in": "query", "required": false, "description": "paging: the next of the previous page", "schema": {"type": "string"}}],
        "responses": {
          "200": {"description": "rows, next page mark", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "a field is invalid (named in field)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/tracking/messages/{qid}": {
      "get": {"summary": "A message and its whole timeline",
        "parameters": [{"name": "qid", "in": "path", "required": true, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the message and its events", "content": {"application/json": {"schema": {"type": "object"}}}}, "400": {"description": "not a queue id", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "404": {"description": "not tracked (or another domain's)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/tracking/volume": {
      "get": {"summary": "Hourly counts (accepted, blocked, delivered, quarantined, by verdict); for a domain-limited account, of the mail to its domains",
        "parameters": [{"name": "since", "in": "query", "required": false, "description": "from", "schema": {"type": "string"}}, {"name": "until", "in": "query", "required": false, "description": "until", "schema": {"type": "string"}}],
        "responses": {"200": {"description": "hours", "content": {"application/json": {"schema": {"type": "object"}}}}, "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/tracking/status": {
      "get": {"summary": "What the ingester has done: events, duplicates skipped, damaged lines, backlog",
        "responses": {"200": {"description": "counters", "content": {"application/json": {"schema": {"type": "object"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "limited to domains", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/accounts": {
      "get": {"summary": "Console accounts", "responses": {"200": {"description": "accounts", "content": {"application/json": {"schema": {"type": "array"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an unrestricted administrator", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "post": {"summary": "Create a sub-account (the first account is the main administrator)",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["name", "password"], "additionalProperties": false,
          "properties": {"name": {"type": "string"}, "password": {"type": "string", "minLength": 10}, "role": {"type": "string", "enum": ["readonly", "quarantine", "policy", "admin"]},
            "domains": {"type": "array", "items": {"type": "string"}}}}}}},
        "responses": {"201": {"description": "created", "content": {"application/json": {"schema": {"type": "object"}}}}, "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an unrestricted administrator", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "409": {"description": "exists", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/accounts/{name}": {
      "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
      "put": {"summary": "Change an account's role, domains, password or disabled state",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false,
          "properties": {"password": {"type": "string"}, "role": {"type": "string", "enum": ["readonly", "quarantine", "policy", "admin"]},
            "domains": {"type": "array", "items": {"type": "string"}}, "disabled": {"type": "boolean"}}}}}},
        "responses": {"200": {"description": "changed", "content": {"application/json": {"schema": {"type": "object"}}}}, "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an unrestricted administrator", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "404": {"description": "no such account", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "delete": {"summary": "Delete a sub-account (its sessions and tokens with it)", "responses": {"200": {"description": "deleted", "content": {"application/json": {"schema": {"type": "object"}}}}, "400": {"description": "the main administrator", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an unrestricted administrator", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "404": {"description": "no such account", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/tokens": {
      "get": {"summary": "API tokens (names and owners; never the tokens)", "responses": {"200": {"description": "tokens", "content": {"application/json": {"schema": {"type": "array"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an unrestricted administrator", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "post": {"summary": "Create an API token for an account (or the main administrator); shown once",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["name"], "additionalProperties": false,
          "properties": {"name": {"type": "string"}, "account": {"type": "string"}}}}}},
        "responses": {"201": {"description": "the token", "content": {"application/json": {"schema": {"type": "object"}}}}, "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an unrestricted administrator", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/tokens/{id}": {
      "delete": {"summary": "Revoke a token", "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "revoked", "content": {"application/json": {"schema": {"type": "object"}}}}, "400": {"description": "not a token id", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an unrestricted administrator", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "404": {"description": "no such token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/audit": {
      "get": {"summary": "The audit log: who changed what, when (newest first)",
        "parameters": [{"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}],
        "responses": {"200": {"description": "entries", "content": {"application/json": {"schema": {"type": "array"}}}}, "400": {"description": "invalid field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an unrestricted administrator", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/quarantine/digest": {
      "post": {"summary": "Sends the quarantine digests now: each recipient in a managed domain gets the quarantined messages not yet in one of their digests, with signed release links (the control service also does this daily at [control] digest_hour)",
        "responses": {"200": {"description": "what was sent", "content": {"application/json": {"schema": {"type": "object", "properties": {"recipients": {"type": "integer"}, "messages": {"type": "integer"}, "failed": {"type": "integer"}}}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an unrestricted administrator", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "409": {"description": "no engine admin socket configured", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "502": {"description": "the engine did not answer", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/end-users": {
      "get": {"summary": "End users registered on the quarantine console (of the account's domains): address, active, digest, created_at",
        "responses": {"200": {"description": "end users", "content": {"application/json": {"schema": {"type": "array"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/end-users/{address}": {
      "delete": {"summary": "Removes an end user of the quarantine console: their account, sessions and approved senders",
        "parameters": [{"name": "address", "in": "path", "required": true, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "removed", "content": {"application/json": {"schema": {"type": "object"}}}}, "401": {"description": "no or bad token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an unrestricted administrator", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "404": {"description": "no such end user", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/v1/openapi.json": {
      "get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}}}
    }
  }
}"##;

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_is_json() {
        let v: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        assert_eq!(v["openapi"], "3.0.3");
        assert!(v["paths"]["/api/v1/domains"]["post"].is_object());
    }

    #[test]
    fn openapi_limit_ranges_are_the_shared_table() {
        let v: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let props = &v["components"]["schemas"]["Limits"]["properties"];
        for r in bulwark_policy::limits::ALL {
            assert_eq!(props[r.name]["minimum"], r.min, "{}", r.name);
            assert_eq!(props[r.name]["maximum"], r.max, "{}", r.name);
        }
    }
}
