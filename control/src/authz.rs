//! What each API route asks of the account calling it: a role, and a scope (every
//! domain, the domain the path names, or rows the handler filters to the account's
//! domains). Every route of the router has an entry; a test holds them equal.

use crate::accounts::{Actor, Role};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Global settings: only an account not limited to domains.
    Global,
    /// The domain named in the path.
    Domain(String),
    /// The handler shows or changes only what the account's domains cover.
    Filtered,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub role: Role,
    pub scope: Scope,
}

fn need(role: Role, scope: Scope) -> Option<Need> {
    Some(Need { role, scope })
}

/// The need of `method` on `path` (under `/api/v1`), or `None` for a route that does not
/// exist.
pub fn required(method: &str, path: &str) -> Option<Need> {
    let rest = path.strip_prefix("/api/v1/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let read = method == "GET" || method == "HEAD";
    use Role::*;
    use Scope::*;
    match parts.as_slice() {
        ["domains"] if read => need(ReadOnly, Filtered),
        ["domains"] => need(Admin, Global),
        ["domains", name] => need(Admin, Domain(name.to_string())),
        ["domains", name, "directory"] | ["domains", name, "verdicts"] => need(
            if read { ReadOnly } else { Policy },
            Domain(name.to_string()),
        ),
        ["senders"] => need(if read { ReadOnly } else { Policy }, Filtered),
        ["tracking"] | ["tracking", "messages", _] => need(ReadOnly, Filtered),
        ["tracking", "status"] => need(ReadOnly, Global),
        ["tracking", "volume"] => need(ReadOnly, Filtered),
        ["limits"] => need(if read { ReadOnly } else { Admin }, Global),
        ["ips"]
        | ["ips", "check"]
        | ["ips", "dynamic"]
        | ["dnsbl"]
        | ["verdicts"]
        | ["policy-rules"]
        | ["policy-rules", _]
        | ["rules"]
        | ["url-blocklist"]
        | ["antivirus"]
        | ["model"] => need(if read { ReadOnly } else { Policy }, Global),
        ["snapshot"] => need(ReadOnly, Global),
        ["quarantine", "digest"] => need(Admin, Global),
        ["end-users"] => need(ReadOnly, Filtered),
        ["end-users", _] => need(Admin, Global),
        ["accounts"] | ["accounts", _] | ["tokens"] | ["tokens", _] | ["audit"] => {
            need(Admin, Global)
        }
        _ => None,
    }
}

/// Why `actor` may not do what `need` asks, if it may not.
pub fn refuse(actor: &Actor, need: &Need) -> Option<String> {
    if !actor.can(need.role) {
        return Some(format!(
            "this needs the {} role; {} has {}",
            need.role.as_str(),
            actor.name,
            actor.role.as_str()
        ));
    }
    match &need.scope {
        Scope::Global if !actor.unrestricted() => Some(format!(
            "{} is limited to domains; this is a setting of every domain",
            actor.name
        )),
        Scope::Domain(d) if !actor.covers(d) => {
            Some(format!("{} is not one of the domains of {}", d, actor.name))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_route_has_a_need() {
        let spec: serde_json::Value =
            serde_json::from_str(crate::api::OPENAPI).expect("the OpenAPI document is JSON");
        let paths = spec["paths"].as_object().unwrap();
        assert!(paths.len() > 20);
        for (path, ops) in paths {
            if path == "/api/v1/openapi.json" {
                continue;
            }
            let concrete = path
                .replace("{name}", "example.test")
                .replace("{qid}", "0123456789ABC000001");
            for method in ops.as_object().unwrap().keys() {
                let m = method.to_ascii_uppercase();
                let n = required(&m, &concrete);
                assert!(n.is_some(), "{m} {path} has no need");
                if m != "GET" {
                    assert!(
                        n.unwrap().role > Role::ReadOnly,
                        "{m} {path} changes something with the read-only role"
                    );
                }
            }
        }
    }

    #[test]
    fn a_limited_account_reaches_only_its_domains() {
        let a = Actor {
            account: Some(2),
            name: "ops".into(),
            role: Role::Policy,
            domains: Some(vec!["a.test".into()]),
            main: false,
        };
        let n = |m: &str, p: &str| required(m, p).unwrap();
        assert!(refuse(&a, &n("GET", "/api/v1/domains/a.test/directory")).is_none());
        assert!(refuse(&a, &n("GET", "/api/v1/domains/b.test/directory")).is_some());
        assert!(refuse(&a, &n("POST", "/api/v1/ips")).is_some());
        assert!(refuse(&a, &n("POST", "/api/v1/domains")).is_some());
        assert!(refuse(&a, &n("GET", "/api/v1/accounts")).is_some());
        assert!(refuse(&a, &n("GET", "/api/v1/tracking")).is_none());
        let ro = Actor {
            role: Role::ReadOnly,
            domains: None,
            ..a
        };
        assert!(refuse(&ro, &n("GET", "/api/v1/ips")).is_none());
        assert!(refuse(&ro, &n("DELETE", "/api/v1/ips")).is_some());
        assert!(required("GET", "/api/v1/nothing").is_none());
    }
}
