//! Which inspector each core uses. At start it is the one the configuration gives
//! (`[inspection]`: built-in rules, rule files, model). When the control service
//! publishes compiled rules or a model with a snapshot, a loader thread reads those
//! artifacts (named by their SHA-256, checked) beside the snapshot, and each core swaps
//! to the new inspector between two transactions, with a scratch space of its own: mail
//! never waits for a load, and a transaction in flight finishes with the rules it began
//! with.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bulwark_inspect::classifier::Model;
use bulwark_inspect::compiled::{Compiled, Scanner};
use bulwark_inspect::inspector::{Inspector, Origin};
use bulwark_inspect::phishing::Blocklist;
use sha2::{Digest, Sha256};
use tracing::{error, info};

use crate::metrics::{Metrics, RuleHits};

/// The artifacts an inspector was made from: (rules, model, URL blocklist, antivirus
/// signatures) digests; empty for the configuration's own.
pub type Key = (String, String, String, String);

/// One core's inspector, with its scratch space and hit counters.
pub struct CoreInspect {
    pub inspector: Arc<Inspector>,
    pub scanner: RefCell<Scanner>,
    /// Scratch spaces for full scans on the executor's blocking thread.
    pub pool: Arc<Mutex<Vec<Scanner>>>,
    pub hits: Arc<RuleHits>,
    pub key: Key,
    /// Scratch spaces of the built-in antivirus engine.
    pub av_pool: crate::antivirus::ScratchPool,
}

impl CoreInspect {
    pub fn new(inspector: Arc<Inspector>, key: Key, metrics: &Metrics) -> anyhow::Result<Self> {
        let scanner = inspector
            .scanner()
            .map_err(|e| anyhow::anyhow!("inspection scratch space: {e}"))?;
        let hits = metrics.rule_hits(
            inspector
                .compiled
                .rules
                .iter()
                .map(|r| r.name.clone())
                .collect(),
        );
        Ok(CoreInspect {
            inspector,
            scanner: RefCell::new(scanner),
            pool: Arc::new(Mutex::new(Vec::new())),
            hits,
            key,
            av_pool: Arc::new(Mutex::new(Vec::new())),
        })
    }
}

enum State {
    Loading,
    Ready(Arc<Inspector>),
    Failed,
}

/// Loads published artifacts off the cores; shared by every core.
pub struct Loader {
    /// The configuration's inspector; `None` when inspection is off (then nothing is
    /// ever loaded).
    local: Option<Arc<Inspector>>,
    /// Where snapshots are published (artifacts live beside them).
    snapshot: Option<PathBuf>,
    states: Mutex<HashMap<Key, State>>,
}

impl Loader {
    pub fn new(local: Option<Arc<Inspector>>, snapshot: Option<PathBuf>) -> Arc<Loader> {
        Arc::new(Loader {
            local,
            snapshot,
            states: Mutex::new(HashMap::new()),
        })
    }

    pub fn local(&self) -> Option<&Arc<Inspector>> {
        self.local.as_ref()
    }

    /// The inspector for `key` if it is loaded; otherwise starts loading it (once) and
    /// answers `None` until it is ready. A load that failed is not retried for that key.
    pub fn get(self: &Arc<Self>, key: &Key) -> Option<Arc<Inspector>> {
        let local = self.local.as_ref()?;
        if key.0.is_empty() && key.1.is_empty() && key.2.is_empty() && key.3.is_empty() {
            return Some(local.clone());
        }
        let mut states = self.states.lock().ok()?;
        match states.get(key) {
            Some(State::Ready(i)) => return Some(i.clone()),
            Some(State::Loading | State::Failed) => return None,
            None => {}
        }
        states.insert(key.clone(), State::Loading);
        drop(states);
        let me = self.clone();
        let owned = key.clone();
        let spawned = std::thread::Builder::new()
            .name("inspect-load".into())
            .spawn(move || {
                let key = owned;
                let t0 = std::time::Instant::now();
                let state = match me.load(&key) {
                    Ok(i) => {
                        let m = i.compiled.modes();
                        info!(
                            rules = i.compiled.rules.len(),
                            hyperscan = m.hyperscan,
                            prefilter = m.prefilter,
                            pcre2 = m.pcre,
                            model = i.model.is_some(),
                            rules_sha256 = %key.0,
                            model_sha256 = %key.1,
                            url_blocklist_sha256 = %key.2,
                            antivirus_sha256 = %key.3,
                            av_signatures = i.settings.antivirus.as_ref().map_or(0, |a| {
                                let n = a.counts();
                                n.hashes + n.bodies
                            }),
                            ms = t0.elapsed().as_millis() as u64,
                            "published inspection rules loaded"
                        );
                        State::Ready(Arc::new(i))
                    }
                    Err(e) => {
                        error!("published inspection artifacts refused, keeping the rules in force: {e:#}");
                        State::Failed
                    }
                };
                if let Ok(mut s) = me.states.lock() {
                    // Only the newest matters; older ones are dropped with their memory.
                    s.retain(|k, v| k == &key || matches!(v, State::Loading));
                    s.insert(key, state);
                }
            });
        if spawned.is_err()
            && let Ok(mut s) = self.states.lock()
        {
            s.remove(key);
        }
        None
    }

    /// Whether loading `key` failed (the rules in force stay until other ones come).
    pub fn failed(&self, key: &Key) -> bool {
        self.states
            .lock()
            .is_ok_and(|s| matches!(s.get(key), Some(State::Failed)))
    }

    fn load(&self, key: &Key) -> anyhow::Result<Inspector> {
        let local = self
            .local
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("inspection is off"))?;
        let snapshot = self
            .snapshot
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no [policy] snapshot to find artifacts beside"))?;
        let read = |kind: &str, sha: &str| -> anyhow::Result<Vec<u8>> {
            let path = bulwark_policy::artifact_path(snapshot, kind, sha);
            let bytes =
                std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let got: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if got != sha {
                anyhow::bail!("{}: content does not match its digest", path.display());
            }
            Ok(bytes)
        };
        let compiled = if key.0.is_empty() {
            local.compiled.clone()
        } else {
            Arc::new(
                Compiled::from_bytes(&read("rules", &key.0)?)
                    .map_err(|e| anyhow::anyhow!("rules {}: {e}", key.0))?,
            )
        };
        let model = if key.1.is_empty() {
            local.model.clone()
        } else {
            Some(Arc::new(
                Model::from_bytes(&read("model", &key.1)?)
                    .map_err(|e| anyhow::anyhow!("model {}: {e}", key.1))?,
            ))
        };
        let mut settings = local.settings.clone();
        if !key.2.is_empty() {
            settings.url_blocklist = Blocklist::from_bytes(&read("urls", &key.2)?)
                .ok_or_else(|| anyhow::anyhow!("URL blocklist {}: not a blocklist", key.2))?;
        }
        // Published signatures replace the configured ones, unless the built-in engine
        // is off here.
        if !key.3.is_empty() && local.settings.antivirus.is_some() {
            settings.antivirus = Some(Arc::new(
                bulwark_inspect::av::Antivirus::from_bytes(&read("av", &key.3)?)
                    .map_err(|e| anyhow::anyhow!("antivirus signatures {}: {e}", key.3))?,
            ));
        }
        Ok(Inspector::from_shared(
            compiled,
            model,
            settings,
            Origin::Compiled,
        ))
    }
}
