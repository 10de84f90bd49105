//! The admin sockets: every core listens on its own Unix socket
//! (`<admin_dir>/core-N.sock`, mode 0600) for queue operations, one JSON request per
//! line, one JSON response per line. The request runs on the core that owns the
//! messages, between two steps of its work, so nothing crosses cores and nothing locks.
//! `bulwark queue` asks every core and merges the answers; `bulwark quarantine` asks
//! core 0, which keeps the quarantine store's desk.

use std::io::{self, BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::deliver::Deliverer;
use crate::deliver::ops::{Request, Response};
use crate::quarantine::{self, Desk};

/// Either kind of request: they differ by their `op`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum AnyRequest {
    Queue(Request),
    Quarantine(quarantine::Request),
}

/// The longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

pub fn socket_path(dir: &Path, core: usize) -> PathBuf {
    dir.join(format!("core-{core}.sock"))
}

/// Starts this core's admin socket.
pub fn serve(
    core: usize,
    dir: &Path,
    deliverer: Rc<Deliverer>,
    desk: Option<Rc<Desk>>,
) -> io::Result<()> {
    if !dir.exists() {
        // A directory of our own is closed to others; an existing one is left as it is.
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let path = socket_path(dir, core);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    info!(core, socket = %path.display(), "admin socket ready");
    glommio::spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    let d = deliverer.clone();
                    let q = desk.clone();
                    glommio::spawn_local(async move {
                        if let Err(e) = session(stream, d, q).await {
                            warn!(core, "admin session: {e}");
                        }
                    })
                    .detach();
                }
                Err(e) => {
                    warn!(core, "admin accept failed: {e}");
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .detach();
    Ok(())
}

async fn session(
    mut stream: UnixStream,
    deliverer: Rc<Deliverer>,
    desk: Option<Rc<Desk>>,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = memchr::memchr(b'\n', &buf) {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let response = match serde_json::from_slice::<AnyRequest>(&line) {
                Ok(AnyRequest::Queue(req)) => serde_json::to_vec(&deliverer.handle(req)),
                Ok(AnyRequest::Quarantine(req)) => match &desk {
                    Some(d) => serde_json::to_vec(&d.handle(req).await),
                    None => serde_json::to_vec(&quarantine::Response {
                        error: Some("the quarantine is kept by core 0".into()),
                        ..Default::default()
                    }),
                },
                Err(_) => serde_json::to_vec(&Response {
                    ok: false,
                    error: Some(format!(
                        "bad request: {}",
                        String::from_utf8_lossy(&line).trim_end()
                    )),
                    ..Default::default()
                }),
            };
            let mut out = response.map_err(io::Error::other)?;
            out.push(b'\n');
            stream.write_all(&out).await?;
            stream.flush().await?;
        }
        if buf.len() > MAX_REQUEST {
            let out = b"{\"ok\":false,\"error\":\"request line too long\"}\n";
            stream.write_all(out).await?;
            return Ok(());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no running engine answered on {0} (is `bulwark serve` running with this configuration?)"
    )]
    NoEngine(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("{0}: bad response: {1}")]
    Protocol(PathBuf, String),
}

/// One request on one socket: `Ok(None)` when no engine listens there (the socket is
/// gone or refuses), else the response.
fn ask_socket<A: serde::de::DeserializeOwned>(
    path: &Path,
    line: &[u8],
) -> Result<Option<A>, ClientError> {
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(ClientError::Io(path.to_path_buf(), e)),
    };
    let io_err = |e| ClientError::Io(path.to_path_buf(), e);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io_err)?;
    stream.write_all(line).map_err(io_err)?;
    let mut reader = io::BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io_err)?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| ClientError::Protocol(path.to_path_buf(), e.to_string()))
}

fn request_line<Q: serde::Serialize>(dir: &Path, req: &Q) -> Result<Vec<u8>, ClientError> {
    let mut line =
        serde_json::to_vec(req).map_err(|e| ClientError::Protocol(dir.into(), e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

/// Sends `req` to one core's socket and returns its response.
pub fn ask_core<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
    dir: &Path,
    core: usize,
    req: &Q,
) -> Result<A, ClientError> {
    let line = request_line(dir, req)?;
    ask_socket(&socket_path(dir, core), &line)?.ok_or_else(|| ClientError::NoEngine(dir.into()))
}

/// Sends `req` to every core's socket in `dir` and returns each core's response.
/// Sockets left by an engine that is gone (connection refused) are skipped.
pub fn ask_all(dir: &Path, req: &Request) -> Result<Vec<Response>, ClientError> {
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ClientError::Io(dir.to_path_buf(), e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("core-") && n.ends_with(".sock"))
        })
        .collect();
    sockets.sort();
    let line = request_line(dir, req)?;
    let mut out = Vec::new();
    for path in sockets {
        if let Some(r) = ask_socket(&path, &line)? {
            out.push(r);
        }
    }
    if out.is_empty() {
        return Err(ClientError::NoEngine(dir.to_path_buf()));
    }
    Ok(out)
}
