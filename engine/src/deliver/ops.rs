//! Queue operations on a running engine (`bulwark queue …`), each run on the core that
//! owns the message, between two steps of its delivery, so they are safe against
//! concurrent delivery: a held or deleted message's queued jobs are dropped before they
//! run, and the results of a transaction already under way are ignored for the
//! recipients it no longer has.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::{Deliverer, Message, Phase, Status};
use crate::policy::{destination, domain_of};

/// A request on the admin socket: one JSON object per line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    List,
    Show {
        id: String,
    },
    Flush {
        domain: Option<String>,
    },
    Delete {
        id: Option<String>,
        domain: Option<String>,
    },
    Hold {
        id: String,
    },
    Release {
        id: String,
    },
}

/// The answer: one JSON object per line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `list`, `show`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<Entry>,
    /// Messages acted on.
    #[serde(default)]
    pub messages: usize,
    /// Recipients removed (`delete`).
    #[serde(default)]
    pub recipients: usize,
    /// The message asked for is not on this core (the client asks every core).
    #[serde(default)]
    pub missing: bool,
}

impl Response {
    fn done(messages: usize, recipients: usize) -> Response {
        Response {
            ok: true,
            messages,
            recipients,
            ..Default::default()
        }
    }

    fn error(e: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(e.into()),
            ..Default::default()
        }
    }

    fn missing(id: &str) -> Response {
        Response {
            missing: true,
            ..Response::error(format!("no message {id} in the queue"))
        }
    }
}

/// Why an operation on one message did not happen.
enum OpError {
    Missing,
    Refused(String),
}

impl OpError {
    fn response(self, id: &str) -> Response {
        match self {
            OpError::Missing => Response::missing(id),
            OpError::Refused(e) => Response::error(e),
        }
    }
}

/// One message as the queue listing shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub id: String,
    pub core: usize,
    pub sender: String,
    /// Octets of content.
    pub size: u64,
    /// Unix seconds.
    pub arrival: u64,
    pub attempts: u32,
    /// `active` (being delivered), `deferred` (waiting for its next attempt), `held`.
    pub state: String,
    /// Unix seconds of the next attempt, while deferred.
    pub next_attempt: Option<u64>,
    pub last_error: String,
    pub recipients: Vec<RcptEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RcptEntry {
    pub address: String,
    /// `pending`, `delivered`, `failed` or `removed`.
    pub status: String,
    pub last_reply: Option<String>,
    pub remote: Option<String>,
}

impl Deliverer {
    /// Runs one admin request.
    pub fn handle(self: &Rc<Self>, req: Request) -> Response {
        match req {
            Request::List => {
                let mut entries: Vec<Entry> = self
                    .messages
                    .borrow()
                    .values()
                    .filter_map(|m| self.entry(m))
                    .collect();
                entries.sort_by(|a, b| a.id.cmp(&b.id));
                Response {
                    ok: true,
                    messages: entries.len(),
                    entries,
                    ..Default::default()
                }
            }
            Request::Show { id } => match self.find(&id).and_then(|m| self.entry(&m)) {
                Some(e) => Response {
                    ok: true,
                    messages: 1,
                    entries: vec![e],
                    ..Default::default()
                },
                None => Response::missing(&id),
            },
            Request::Flush { domain } => Response::done(self.flush(domain.as_deref()), 0),
            Request::Delete {
                id: Some(id),
                domain: None,
            } => match self.delete(&id) {
                Ok(n) => Response::done(1, n),
                Err(e) => e.response(&id),
            },
            Request::Delete {
                id: None,
                domain: Some(d),
            } => {
                let (m, r) = self.delete_domain(&d);
                Response::done(m, r)
            }
            Request::Delete { .. } => Response::error("delete takes an id or a domain"),
            Request::Hold { id } => match self.hold(&id) {
                Ok(()) => Response::done(1, 0),
                Err(e) => e.response(&id),
            },
            Request::Release { id } => match self.release(&id) {
                Ok(()) => Response::done(1, 0),
                Err(e) => e.response(&id),
            },
        }
    }

    fn find(&self, id: &str) -> Option<Rc<Message>> {
        self.messages.borrow().get(id).cloned()
    }

    fn entry(&self, m: &Message) -> Option<Entry> {
        let st = m.state.borrow();
        let state = match st.phase {
            Phase::Active | Phase::Finishing => "active",
            Phase::Waiting(_) => "deferred",
            Phase::Held => "held",
            Phase::Gone => return None,
        };
        Some(Entry {
            id: m.id.clone(),
            core: self.core,
            sender: m.sender.clone(),
            size: m.location.len,
            arrival: m.arrival,
            attempts: st.attempts,
            state: state.to_string(),
            next_attempt: matches!(st.phase, Phase::Waiting(_)).then_some(st.next_attempt),
            last_error: st.last_error.clone(),
            recipients: st
                .rcpts
                .iter()
                .map(|r| RcptEntry {
                    address: r.addr.clone(),
                    status: match r.status {
                        Status::Pending => "pending",
                        Status::Delivered => "delivered",
                        Status::Failed => "failed",
                        Status::Removed => "removed",
                    }
                    .to_string(),
                    last_reply: r.last.as_ref().map(|(rep, _)| rep.text.clone()),
                    remote: r.last.as_ref().and_then(|(_, remote)| remote.clone()),
                })
                .collect(),
        })
    }

    /// Attempts every deferred message now (those with a pending recipient in `domain`,
    /// when given), and ends the backoff of their destinations so they are tried at once.
    fn flush(self: &Rc<Self>, domain: Option<&str>) -> usize {
        let domain = domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase());
        let matches =
            |m: &Message| match &domain {
                None => true,
                Some(d) => m.state.borrow().rcpts.iter().any(|r| {
                    r.status == Status::Pending && domain_of(&r.addr).eq_ignore_ascii_case(d)
                }),
            };
        let due: Vec<Rc<Message>> = self
            .messages
            .borrow()
            .values()
            .filter(|m| matches!(m.phase(), Phase::Waiting(_)) && matches(m))
            .cloned()
            .collect();
        let now = self.clock.now();
        let snap = self.policy.current();
        let target = domain
            .as_deref()
            .map(|d| destination(&snap, &format!("postmaster@{d}")));
        for q in self.dests.borrow().values() {
            if target.as_ref().is_none_or(|t| *t == q.dest) {
                q.health.borrow_mut().expedite(now);
            }
        }
        let mut n = 0;
        for m in due {
            if self.retry_now(m) {
                n += 1;
            }
        }
        info!(
            core = self.core,
            messages = n,
            domain = domain.as_deref().unwrap_or("*"),
            "queue flushed"
        );
        n
    }

    /// Removes a message from the queue: no more delivery, no bounce.
    fn delete(self: &Rc<Self>, id: &str) -> Result<usize, OpError> {
        let m = self.find(id).ok_or(OpError::Missing)?;
        let phase = m.phase();
        if phase == Phase::Finishing {
            return Err(OpError::Refused(format!(
                "{id} is being finished and cannot be deleted"
            )));
        }
        let removed = {
            let mut st = m.state.borrow_mut();
            let mut n = 0;
            for r in st.rcpts.iter_mut().filter(|r| r.status == Status::Pending) {
                r.status = Status::Removed;
                n += 1;
            }
            n
        };
        if let Phase::Waiting(key) = phase {
            self.waiting.borrow_mut().remove(&key);
        }
        self.shard().queue_deleted.add(removed as u64);
        self.tracker.record(crate::tracking::Event {
            ev: "deleted",
            qid: id,
            stage: "queue",
            by: "operator",
            ..Default::default()
        });
        self.forget(&m);
        info!(%id, recipients = removed, "deleted from the queue by an operator");
        Ok(removed)
    }

    /// Removes the pending recipients in `domain` from every message; a message left
    /// with nothing pending is finished (its earlier failures are still bounced).
    fn delete_domain(self: &Rc<Self>, domain: &str) -> (usize, usize) {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let all: Vec<Rc<Message>> = self.messages.borrow().values().cloned().collect();
        let (mut messages, mut recipients) = (0, 0);
        for m in all {
            let phase = m.phase();
            if matches!(phase, Phase::Finishing | Phase::Gone) {
                continue;
            }
            let (removed, pending) = {
                let mut st = m.state.borrow_mut();
                let mut removed = Vec::new();
                for (i, r) in st.rcpts.iter_mut().enumerate() {
                    if r.status == Status::Pending
                        && domain_of(&r.addr).eq_ignore_ascii_case(&domain)
                    {
                        r.status = Status::Removed;
                        removed.push(i as u32);
                    }
                }
                (
                    removed,
                    st.rcpts.iter().any(|r| r.status == Status::Pending),
                )
            };
            if removed.is_empty() {
                continue;
            }
            messages += 1;
            recipients += removed.len();
            self.shard().queue_deleted.add(removed.len() as u64);
            self.spool.mark_delivered(m.location, &m.id, &removed);
            self.tracker.record(crate::tracking::Event {
                ev: "deleted",
                qid: &m.id,
                rcpt: &domain,
                stage: "queue",
                by: "operator",
                ..Default::default()
            });
            info!(id = %m.id, %domain, recipients = removed.len(), "recipients deleted from the queue by an operator");
            if pending {
                continue;
            }
            match phase {
                Phase::Waiting(key) => {
                    self.waiting.borrow_mut().remove(&key);
                    self.settle(m);
                }
                Phase::Held => {
                    m.state.borrow_mut().held = false;
                    self.shard().queue_held.add(-1);
                    self.settle(m);
                }
                // Its jobs report first; then it settles with nothing pending.
                _ => {}
            }
        }
        (messages, recipients)
    }

    /// Stops delivery attempts of a message until it is released.
    fn hold(self: &Rc<Self>, id: &str) -> Result<(), OpError> {
        let m = self.find(id).ok_or(OpError::Missing)?;
        {
            let mut st = m.state.borrow_mut();
            if st.held {
                return Err(OpError::Refused(format!("{id} is already on hold")));
            }
            match st.phase {
                Phase::Finishing | Phase::Gone => {
                    return Err(OpError::Refused(format!(
                        "{id} is being finished and cannot be held"
                    )));
                }
                Phase::Waiting(key) => {
                    self.waiting.borrow_mut().remove(&key);
                    st.phase = Phase::Held;
                }
                // A job under way completes; queued jobs are dropped; then it settles
                // into Held.
                Phase::Active | Phase::Held => {}
            }
            st.held = true;
        }
        self.shard().queue_held.add(1);
        self.persist(&m);
        info!(%id, "held by an operator");
        Ok(())
    }

    /// Lets a held message be delivered again, at once.
    fn release(self: &Rc<Self>, id: &str) -> Result<(), OpError> {
        let m = self.find(id).ok_or(OpError::Missing)?;
        let phase = {
            let mut st = m.state.borrow_mut();
            if !st.held {
                return Err(OpError::Refused(format!("{id} is not on hold")));
            }
            st.held = false;
            st.next_attempt = self.clock.unix();
            st.phase
        };
        self.shard().queue_held.add(-1);
        self.persist(&m);
        info!(%id, "released by an operator");
        if phase == Phase::Held {
            self.attempt(m);
        }
        Ok(())
    }
}
