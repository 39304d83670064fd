//! The `[slack]` section of `shiphat.toml`, parsed at this boundary and checked into
//! [`SlackConfig`].

use std::collections::BTreeMap;

use serde::Deserialize;

use shiphat_workflow::HostPattern;

use crate::auth::{Principal, Role};

/// The host of Slack's `response_url`s: the only one the daemon posts to unless the config
/// allows others.
pub const SLACK_RESPONSE_HOST: &str = "hooks.slack.com";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlack {
    signing_secret: Option<String>,
    signing_secret_env: Option<String>,
    /// `APP → ENVIRONMENT → {workflow, rollback?}`.
    #[serde(default)]
    apps: BTreeMap<String, BTreeMap<String, RawTarget>>,
    #[serde(default)]
    users: Vec<RawUser>,
    /// `ENVIRONMENT → [channel id or name]`; environments not named here are allowed anywhere.
    #[serde(default)]
    channels: BTreeMap<String, Vec<String>>,
    /// Hosts besides `hooks.slack.com` that a request's `response_url` may name, as in a
    /// step's `allow.http`: `host` (ports 80 and 443 only) or `host:port`.
    #[serde(default)]
    response_hosts: Vec<String>,
    /// Incoming-webhook URLs that get the run events of chat deploys and the approval questions
    /// of every run.
    #[serde(default)]
    webhooks: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    workflow: String,
    rollback: Option<String>,
    /// The workflow input that `/deploy APP@REF` fills with REF; `ref` by default.
    ref_input: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    /// A Slack user id (`U…`); without it the entry covers every user of `team`.
    user: Option<String>,
    /// A Slack team id (`T…`); without it the entry matches the user in any team.
    team: Option<String>,
    /// The principal's name, as the audit log and the runs show it.
    name: String,
    roles: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
}

/// Where `/deploy APP to ENVIRONMENT` goes.
#[derive(Clone, Debug)]
pub struct Target {
    pub workflow: String,
    pub rollback: Option<String>,
    /// The workflow input `@REF` goes to, when the config names one; see [`Target::ref_input`].
    pub ref_input: Option<String>,
}

impl Target {
    /// The workflow input `@REF` goes to.
    pub fn ref_input(&self) -> &str {
        self.ref_input.as_deref().unwrap_or(DEFAULT_REF_INPUT)
    }
}

/// The input `/deploy APP@REF` fills when the config names none.
pub const DEFAULT_REF_INPUT: &str = "ref";

/// Who a Slack user is to the daemon.
#[derive(Clone, Debug)]
pub struct SlackUser {
    pub user: Option<String>,
    pub team: Option<String>,
    pub principal: Principal,
}

/// The checked `[slack]` section.
#[derive(Clone)]
pub struct SlackConfig {
    pub signing_secret: String,
    pub apps: BTreeMap<String, BTreeMap<String, Target>>,
    pub users: Vec<SlackUser>,
    pub channels: BTreeMap<String, Vec<String>>,
    /// Host and port together, as a step's `allow.http` matches them.
    pub response_hosts: Vec<HostPattern>,
    pub webhooks: Vec<String>,
}

// By hand, so that the signing secret never reaches a log.
impl std::fmt::Debug for SlackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackConfig")
            .field("signing_secret", &"<redacted>")
            .field("apps", &self.apps)
            .field("users", &self.users)
            .field("channels", &self.channels)
            .field("response_hosts", &self.response_hosts)
            .field("webhooks", &self.webhooks)
            .finish()
    }
}

impl RawSlack {
    /// Checks the section; `env` reads an environment variable (injected for tests).
    pub fn check(self, env: impl Fn(&str) -> Option<String>) -> Result<SlackConfig, String> {
        let signing_secret = match (self.signing_secret, self.signing_secret_env) {
            (Some(_), Some(_)) => {
                return Err(
                    "`slack`: give `signing_secret` or `signing_secret_env`, not both".into(),
                );
            }
            (Some(secret), None) => secret,
            (None, Some(var)) => env(&var).filter(|s| !s.is_empty()).ok_or_else(|| {
                format!("`slack.signing_secret_env`: the environment variable `{var}` is not set")
            })?,
            (None, None) => {
                return Err("`slack`: `signing_secret` or `signing_secret_env` is required (the app's signing secret, from its Basic Information page)".into());
            }
        };
        let apps = self
            .apps
            .into_iter()
            .map(|(app, envs)| {
                let envs = envs
                    .into_iter()
                    .map(|(env, t)| {
                        (
                            env,
                            Target {
                                workflow: t.workflow,
                                rollback: t.rollback,
                                ref_input: t.ref_input,
                            },
                        )
                    })
                    .collect();
                (app, envs)
            })
            .collect();
        let mut users = Vec::new();
        for u in self.users {
            if u.user.is_none() && u.team.is_none() {
                return Err(format!(
                    "`slack.users` entry `{}`: give `user`, `team` or both",
                    u.name
                ));
            }
            let roles = u
                .roles
                .iter()
                .map(|r| {
                    Role::parse(r).ok_or_else(|| {
                        format!(
                            "`slack.users` entry `{}`: unknown role `{r}`; roles are `viewer`, `deployer` and `admin`",
                            u.name
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            users.push(SlackUser {
                user: u.user,
                team: u.team,
                principal: Principal {
                    name: u.name,
                    roles,
                    patterns: u.patterns,
                },
            });
        }
        for url in &self.webhooks {
            url.parse::<axum::http::Uri>()
                .ok()
                .filter(|u| u.host().is_some())
                .ok_or_else(|| format!("`slack.webhooks`: `{url}` is not a URL"))?;
        }
        let response_hosts = self
            .response_hosts
            .iter()
            .map(|h| HostPattern::parse(h).map_err(|e| format!("`slack.response_hosts`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SlackConfig {
            signing_secret,
            apps,
            users,
            channels: self.channels,
            response_hosts,
            webhooks: self.webhooks,
        })
    }
}

impl SlackConfig {
    /// The principal of a Slack user: an entry naming the user (and its team, if the entry
    /// names one) wins over one covering the whole team.
    pub fn principal(&self, user: &str, team: &str) -> Option<&Principal> {
        let matches = |u: &&SlackUser| {
            u.user.as_deref().is_none_or(|x| x == user)
                && u.team.as_deref().is_none_or(|x| x == team)
        };
        self.users
            .iter()
            .filter(|u| u.user.is_some())
            .find(matches)
            .or_else(|| self.users.iter().filter(|u| u.user.is_none()).find(matches))
            .map(|u| &u.principal)
    }

    /// Whether a `response_url` may be posted to: `https://hooks.slack.com/…` on port 443, or a
    /// host and port the config allows (over http or https). The port counts: a host allowed
    /// for its web server does not open its other services.
    pub fn response_url_allowed(&self, url: &str) -> bool {
        let Ok(uri) = url.parse::<axum::http::Uri>() else {
            return false;
        };
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return false;
        };
        if authority.as_str().contains('@') {
            return false;
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            "https" => 443,
            _ => 80,
        });
        let host = authority.host();
        if host.eq_ignore_ascii_case(SLACK_RESPONSE_HOST) {
            return scheme == "https" && port == 443;
        }
        matches!(scheme, "http" | "https")
            && self.response_hosts.iter().any(|h| h.matches(host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<SlackConfig, String> {
        let text = format!("signing_secret = \"s\"\n{extra}");
        let raw: RawSlack = toml::from_str(&text).map_err(|e| e.to_string())?;
        raw.check(|_| None)
    }

    #[test]
    fn response_urls_go_only_to_slack_or_allowed_hosts() {
        let c = config("response_hosts = [\"127.0.0.1:4000\", \"hooks.example.com\"]").unwrap();
        assert!(c.response_url_allowed("https://hooks.slack.com/commands/T1/2/x"));
        assert!(!c.response_url_allowed("http://hooks.slack.com/commands/T1/2/x"));
        assert!(!c.response_url_allowed("https://hooks.slack.com:8443/commands/T1/2/x"));
        assert!(!c.response_url_allowed("https://hooks.slack.com.evil.example/x"));
        assert!(!c.response_url_allowed("https://evil.example/hooks.slack.com"));
        assert!(!c.response_url_allowed("https://evil.example@hooks.slack.com/x"));
        assert!(c.response_url_allowed("http://127.0.0.1:4000/r"));
        // Host and port together: the same host on another port is another service.
        assert!(!c.response_url_allowed("http://127.0.0.1:4001/r"));
        assert!(!c.response_url_allowed("http://127.0.0.2:4000/r"));
        assert!(c.response_url_allowed("https://hooks.example.com/r"));
        assert!(!c.response_url_allowed("http://hooks.example.com:22/r"));
        assert!(!c.response_url_allowed("file:///etc/passwd"));
        let err = config("response_hosts = [\"https://x.example\"]").unwrap_err();
        assert!(err.contains("without a scheme"), "{err}");
    }

    #[test]
    fn users_map_to_principals_by_user_then_team() {
        let c = config(
            "[[users]]\nteam = \"T1\"\nname = \"everyone\"\nroles = [\"viewer\"]\n\
             [[users]]\nuser = \"U1\"\nteam = \"T1\"\nname = \"alice\"\nroles = [\"deployer\"]",
        )
        .unwrap();
        assert_eq!(c.principal("U1", "T1").unwrap().name, "alice");
        assert_eq!(c.principal("U2", "T1").unwrap().name, "everyone");
        assert!(c.principal("U1", "T2").is_none());
        let err = config("[[users]]\nname = \"x\"\nroles = []").unwrap_err();
        assert!(err.contains("give `user`, `team` or both"), "{err}");
        let err = config("signing_secret_env = \"X\"").unwrap_err();
        assert!(err.contains("not both"), "{err}");
    }
}
