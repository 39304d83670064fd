//! Who may do what: bearer tokens (kept only as SHA-256), principals, roles and patterns.

use sha2::{Digest, Sha256};

/// What a principal may do: the wire contract's, since tokens and sessions carry it.
pub use shiphat_protocol::Role;

/// Who a token speaks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub name: String,
    pub roles: Vec<Role>,
    /// `WORKFLOW` or `WORKFLOW/ENVIRONMENT`, each part a glob where `*` matches anything. A
    /// pattern without `/` allows every environment of the workflows it matches.
    pub patterns: Vec<String>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|&r| r >= role)
    }

    /// Refuses with a message naming the missing role.
    pub fn require(&self, role: Role) -> Result<(), String> {
        if self.has(role) {
            Ok(())
        } else {
            Err(format!(
                "principal `{}` lacks the role `{}`",
                self.name,
                role.as_str()
            ))
        }
    }

    /// Where this principal may start `workflow`, as its role and patterns say: the one rule
    /// [`Principal::may_run`] applies to a run, for a reader (the daemon's handbook).
    pub fn reach(&self, workflow: &str) -> Reach<'_> {
        if self.has(Role::Admin) {
            return Reach::Admin;
        }
        if !self.has(Role::Deployer) {
            return Reach::Nowhere;
        }
        let mut environments = Vec::new();
        for pattern in &self.patterns {
            match pattern.split_once('/') {
                None if glob(pattern, workflow) => return Reach::Anywhere,
                Some((w, e)) if glob(w, workflow) => environments.push(e),
                _ => {}
            }
        }
        if environments.is_empty() {
            Reach::Nowhere
        } else {
            Reach::Environments(environments)
        }
    }

    /// Whether this principal may start `workflow` in `environment` (the run's `environment`
    /// input, when it has one). Admins may run anything.
    pub fn may_run(&self, workflow: &str, environment: Option<&str>) -> Result<(), String> {
        self.require(Role::Deployer)?;
        if self.has(Role::Admin) {
            return Ok(());
        }
        let allowed = match self.reach(workflow) {
            Reach::Admin | Reach::Anywhere => true,
            Reach::Environments(patterns) => {
                environment.is_some_and(|env| patterns.iter().any(|e| glob(e, env)))
            }
            Reach::Nowhere => false,
        };
        if allowed {
            return Ok(());
        }
        let target = match environment {
            Some(env) => format!("`{workflow}/{env}`"),
            None => format!("`{workflow}`"),
        };
        Err(format!(
            "no pattern of principal `{}` allows {target} (its patterns: {})",
            self.name,
            if self.patterns.is_empty() {
                "none".to_owned()
            } else {
                self.patterns
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))
    }
}

/// Where a principal may start a workflow ([`Principal::reach`]).
#[derive(Debug, PartialEq)]
pub enum Reach<'a> {
    /// Anywhere, as an admin.
    Admin,
    /// In every environment, by a pattern without `/`.
    Anywhere,
    /// In the environments these globs match, by `WORKFLOW/ENVIRONMENT` patterns.
    Environments(Vec<&'a str>),
    Nowhere,
}

/// Matches `text` against `pattern`, where `*` matches any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut text) = text.strip_prefix(head) else {
        return false;
    };
    let mut parts = rest.split('*').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            return text.ends_with(part);
        }
        match text.find(part) {
            Some(at) => text = &text[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// A new token: 32 random bytes, as hex.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// The SHA-256 of a token, as hex: the only form in which tokens are stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_steps_know_the_daemons_roles() {
        // A workflow is checked without the daemon; the roles it may name must be these.
        assert_eq!(
            shiphat_workflow::APPROVER_ROLES.to_vec(),
            Role::ALL.map(Role::as_str).to_vec()
        );
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("web-*", "web-prod"));
        assert!(!glob("web-*", "api-prod"));
        assert!(glob("*-prod", "web-prod"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXcYYb"));
        assert!(glob("exact", "exact"));
    }

    #[test]
    fn patterns_name_what_is_missing() {
        let p = Principal {
            name: "ci".into(),
            roles: vec![Role::Deployer],
            patterns: vec!["web/staging".into(), "docs".into()],
        };
        assert!(p.may_run("web", Some("staging")).is_ok());
        assert!(p.may_run("docs", Some("prod")).is_ok());
        let err = p.may_run("web", Some("prod")).unwrap_err();
        assert!(
            err.contains("`web/prod`") && err.contains("`web/staging`"),
            "{err}"
        );
        assert!(p.require(Role::Admin).unwrap_err().contains("`admin`"));
        let viewer = Principal {
            roles: vec![Role::Viewer],
            ..p
        };
        assert!(
            viewer
                .may_run("docs", None)
                .unwrap_err()
                .contains("`deployer`")
        );
    }

    #[test]
    fn reach_says_where_may_run_lets_a_principal_run() {
        let p = Principal {
            name: "ci".into(),
            roles: vec![Role::Deployer],
            patterns: vec!["web/staging".into(), "web/qa-*".into(), "do*".into()],
        };
        assert_eq!(p.reach("web"), Reach::Environments(vec!["staging", "qa-*"]));
        assert_eq!(p.reach("docs"), Reach::Anywhere);
        assert_eq!(p.reach("api"), Reach::Nowhere);
        assert!(p.may_run("web", Some("qa-1")).is_ok());
        assert!(p.may_run("web", None).is_err());
        let viewer = Principal {
            roles: vec![Role::Viewer],
            ..p.clone()
        };
        assert_eq!(viewer.reach("docs"), Reach::Nowhere);
        let admin = Principal {
            roles: vec![Role::Admin],
            patterns: vec![],
            ..p
        };
        assert_eq!(admin.reach("api"), Reach::Admin);
    }
}
