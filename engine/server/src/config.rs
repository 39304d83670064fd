//! The daemon's configuration file (`shiphat.toml`), parsed with serde at this boundary and
//! checked into [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{Principal, Role};
use crate::{Error, Result};

/// Where the daemon listens when nothing says otherwise: loopback only, so a daemon started
/// by hand is never reachable from the network by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7300";
/// How long running steps get to finish after SIGTERM. Most deploy steps finish in well under
/// a minute; a service manager usually waits about this long before sending SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// The largest request body accepted. Run requests are a workflow name and a few inputs;
/// 64 KiB is generous for them and small enough that nobody can fill memory with a body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// How many runs one principal may have queued at once. A CI burst or a bench queues a
/// thousand; past ten thousand a client is looping, and each queued run is a row on disk and
/// an entry in memory.
pub const DEFAULT_MAX_QUEUED_PER_PRINCIPAL: u64 = 10_000;
/// How often a daemon renews the leases of its running runs. Each renewal is one write for
/// all of them; every two seconds costs nothing and leaves four renewals inside a lease.
pub const DEFAULT_LEASE_RENEW: Duration = Duration::from_secs(2);
/// How long a lease lasts unrenewed: how long a dead daemon's runs wait before another daemon
/// takes them over. Long enough that a daemon busy for a few seconds (a stall of its disk or
/// of the database) keeps its runs, short enough that a deploy waits seconds, not minutes.
pub const DEFAULT_LEASE_EXPIRES: Duration = Duration::from_secs(10);
/// How long audit entries are kept when the config says nothing: a quarter, long enough to
/// look into anything noticed late, and the table cannot grow for ever. Set
/// `retention.audit` for longer.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(90 * 86400);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    store_password_file: Option<PathBuf>,
    workflows: Option<Vec<PathBuf>>,
    shutdown_grace: Option<String>,
    max_body_bytes: Option<usize>,
    max_queued_per_principal: Option<u64>,
    retention: Option<RawRetention>,
    lease: Option<RawLease>,
    #[serde(default)]
    principals: Vec<RawPrincipal>,
    slack: Option<crate::chat::RawSlack>,
    #[serde(default)]
    windows: Vec<crate::windows::RawWindow>,
    #[serde(default)]
    freezes: Vec<crate::windows::RawFreeze>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    /// Finished runs older than this are deleted, e.g. `30d`.
    keep: Option<String>,
    /// Audit entries older than this are deleted, e.g. `1year`.
    audit: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLease {
    /// How often a daemon renews its leases, e.g. `2s`.
    renew: Option<String>,
    /// How long a lease lasts unrenewed, e.g. `10s`.
    expires: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    name: String,
    roles: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
    /// The SHA-256 (hex) of the principal's bearer token.
    token_sha256: String,
}

/// A checked configuration. Relative paths are resolved against the config file's directory
/// (or the current directory when there is no file).
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The database server to keep the daemon's state in (`postgres://USER@HOST/DATABASE`,
    /// no password in it); `None` keeps it in a file in `data_dir`.
    pub store: Option<String>,
    /// A file holding the store's password.
    pub store_password_file: Option<PathBuf>,
    pub workflow_dirs: Vec<PathBuf>,
    pub shutdown_grace: Duration,
    pub max_body_bytes: usize,
    /// Past this many queued runs of one principal, a new run is refused (429).
    pub max_queued_per_principal: u64,
    /// Finished runs older than this are pruned; `None` keeps them forever.
    pub retention: Option<Duration>,
    /// Audit entries older than this are pruned.
    pub audit_retention: Duration,
    /// How often the daemon renews the leases of its running runs.
    pub lease_renew: Duration,
    /// How long a lease lasts unrenewed: after that another daemon takes the run over.
    pub lease_expires: Duration,
    /// Principals declared in the file, by the SHA-256 (hex) of their token.
    pub principals: Vec<(String, Principal)>,
    /// Slack slash commands (docs/chat.md); `None` answers them with 404.
    pub slack: Option<crate::chat::SlackConfig>,
    /// When runs may start (`[[windows]]` and `[[freezes]]`, docs/daemon.md).
    pub windows: crate::windows::Windows,
}

impl Config {
    /// The configuration with no file: loopback, the user's data directory, `./workflows`.
    pub fn defaults() -> Config {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("a valid default address"),
            data_dir: default_data_dir(),
            store: None,
            store_password_file: None,
            workflow_dirs: vec![PathBuf::from("workflows")],
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            lease_renew: DEFAULT_LEASE_RENEW,
            lease_expires: DEFAULT_LEASE_EXPIRES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_queued_per_principal: DEFAULT_MAX_QUEUED_PER_PRINCIPAL,
            retention: None,
            audit_retention: DEFAULT_AUDIT_RETENTION,
            principals: Vec::new(),
            slack: None,
            windows: crate::windows::Windows::default(),
        }
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(|message| {
            Error::Config {
                file: path.to_path_buf(),
                message,
            }
        })
    }

    /// Checks config `text`, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> std::result::Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut config = Config::defaults();
        if let Some(listen) = raw.listen {
            config.listen = listen
                .parse()
                .map_err(|e| format!("`listen`: `{listen}` is not an address: {e}"))?;
        }
        if let Some(dir) = raw.data_dir {
            config.data_dir = base.join(dir);
        }
        if let Some(url) = raw.store {
            // Checked here, so that the error names the file; a URL with a password in it is
            // refused without the password being shown.
            shiphat_store::Location::server(&url, None).map_err(|e| format!("`store`: {e}"))?;
            config.store = Some(url);
        }
        if let Some(file) = raw.store_password_file {
            config.store_password_file = Some(base.join(file));
        }
        if let Some(dirs) = raw.workflows {
            config.workflow_dirs = dirs.into_iter().map(|d| base.join(d)).collect();
        } else {
            config.workflow_dirs = vec![base.join("workflows")];
        }
        if let Some(grace) = raw.shutdown_grace {
            config.shutdown_grace = humantime::parse_duration(&grace)
                .map_err(|e| format!("`shutdown_grace`: `{grace}`: {e}"))?;
        }
        if let Some(max) = raw.max_body_bytes {
            config.max_body_bytes = max;
        }
        if let Some(lease) = &raw.lease {
            let duration = |field: &str, text: &str| {
                humantime::parse_duration(text)
                    .map_err(|e| format!("`lease.{field}`: `{text}`: {e}; e.g. `2s`"))
            };
            if let Some(renew) = &lease.renew {
                config.lease_renew = duration("renew", renew)?;
            }
            if let Some(expires) = &lease.expires {
                config.lease_expires = duration("expires", expires)?;
            }
            // A lease that expires before it is renewed twice is lost to one slow renewal.
            if config.lease_expires < config.lease_renew * 2 || config.lease_renew.is_zero() {
                return Err(format!(
                    "`lease.expires` ({}) must be at least twice `lease.renew` ({}), which must not be 0",
                    humantime::format_duration(config.lease_expires),
                    humantime::format_duration(config.lease_renew)
                ));
            }
        }
        if let Some(max) = raw.max_queued_per_principal {
            config.max_queued_per_principal = max;
        }
        let retention = raw.retention.unwrap_or(RawRetention {
            keep: None,
            audit: None,
        });
        let duration = |field: &str, text: &str| {
            humantime::parse_duration(text)
                .map_err(|e| format!("`retention.{field}`: `{text}`: {e}; e.g. `30days`"))
        };
        if let Some(keep) = &retention.keep {
            config.retention = Some(duration("keep", keep)?);
        }
        if let Some(audit) = &retention.audit {
            config.audit_retention = duration("audit", audit)?;
        }
        for p in raw.principals {
            let roles = p
                .roles
                .iter()
                .map(|r| {
                    Role::parse(r).ok_or_else(|| {
                        format!(
                            "principal `{}`: unknown role `{r}`; roles are `viewer`, `deployer` and `admin`",
                            p.name
                        )
                    })
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let hash = p.token_sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "principal `{}`: `token_sha256` must be 64 hex digits",
                    p.name
                ));
            }
            config.principals.push((
                hash,
                Principal {
                    name: p.name,
                    roles,
                    patterns: p.patterns,
                },
            ));
        }
        if let Some(slack) = raw.slack {
            config.slack = Some(slack.check(|var| std::env::var(var).ok())?);
        }
        config.windows = crate::windows::Windows::check(raw.windows, raw.freezes)?;
        // Runs, locks and cancellations go by the principal's name: two principals of one
        // name (with other roles or patterns) could act on each other's runs.
        let mut seen = std::collections::HashSet::new();
        if let Some(name) = config.principal_names().find(|n| !seen.insert(*n)) {
            return Err(format!(
                "two principals are named `{name}` (in `principals` or `slack.users`); give each its own name"
            ));
        }
        Ok(config)
    }

    /// The names of the principals this file declares: `principals` and `slack.users`.
    pub fn principal_names(&self) -> impl Iterator<Item = &str> {
        let slack = self.slack.iter().flat_map(|s| s.users.iter());
        self.principals
            .iter()
            .map(|(_, p)| p.name.as_str())
            .chain(slack.map(|u| u.principal.name.as_str()))
    }

    /// The database file inside the data directory, where the daemon's state is kept when no
    /// `store` is named.
    pub fn database(&self) -> PathBuf {
        self.data_dir.join("shiphat.sqlite")
    }
}

/// `$XDG_DATA_HOME/shiphat` or its platform equivalent.
fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("shiphat")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_roles_are_refused() {
        let err = Config::parse("listn = \"x\"", Path::new("/"))
            .err()
            .unwrap();
        assert!(err.contains("listn"), "{err}");
        let text = format!(
            "[[principals]]\nname = \"ci\"\nroles = [\"deployr\"]\ntoken_sha256 = \"{}\"",
            "a".repeat(64)
        );
        let err = Config::parse(&text, Path::new("/")).err().unwrap();
        assert!(err.contains("unknown role `deployr`"), "{err}");
    }

    #[test]
    fn two_principals_of_one_name_are_refused() {
        let one = |name: &str, role: &str| {
            format!(
                "[[principals]]\nname = \"{name}\"\nroles = [\"{role}\"]\ntoken_sha256 = \"{}\"\n",
                "a".repeat(64)
            )
        };
        let text = one("ci", "viewer") + &one("ci", "admin");
        let err = Config::parse(&text, Path::new("/")).err().unwrap();
        assert!(err.contains("two principals are named `ci`"), "{err}");
        let text = one("ci", "viewer")
            + "[slack]\nsigning_secret = \"s\"\n[[slack.users]]\nteam = \"T1\"\nname = \"ci\"\nroles = [\"admin\"]\n";
        let err = Config::parse(&text, Path::new("/")).err().unwrap();
        assert!(err.contains("two principals are named `ci`"), "{err}");
    }

    #[test]
    fn a_store_url_with_a_password_is_refused() {
        let err = Config::parse(
            "store = \"postgres://shiphat:hunter2@db/shiphat\"",
            Path::new("/"),
        )
        .err()
        .unwrap();
        assert!(err.starts_with("`store`: "), "{err}");
        assert!(err.contains("SHIPHAT_STORE_PASSWORD"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let config = Config::parse(
            "store = \"postgres://shiphat@db/shiphat\"\nstore_password_file = \"secret\"",
            Path::new("/etc/shiphat"),
        )
        .unwrap();
        assert_eq!(
            config.store.as_deref(),
            Some("postgres://shiphat@db/shiphat")
        );
        assert_eq!(
            config.store_password_file,
            Some(PathBuf::from("/etc/shiphat/secret"))
        );
    }

    #[test]
    fn deploy_windows_are_checked_with_the_file() {
        let config = Config::parse(
            "[[windows]]\napplies_to = [\"deploy\"]\ntimezone = \"Europe/Paris\"\nfrom = \"09:00\"\nuntil = \"16:00\"\n[[freezes]]\napplies_to = [\"*\"]\ntimezone = \"UTC\"\nfrom = \"2026-12-24T00:00\"\nuntil = \"2027-01-03T00:00\"\nreason = \"holiday freeze\"",
            Path::new("/"),
        )
        .unwrap();
        assert!(!config.windows.is_empty());
        let err = Config::parse("[[freezes]]\napplies_to = [\"*\"]", Path::new("/"))
            .err()
            .unwrap();
        assert!(err.contains("missing field `timezone`"), "{err}");
    }

    #[test]
    fn paths_are_relative_to_the_file() {
        let config = Config::parse(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"state\"\nworkflows = [\"wf\"]\n[retention]\nkeep = \"30days\"\naudit = \"1year\"",
            Path::new("/etc/shiphat"),
        )
        .unwrap();
        assert_eq!(config.data_dir, Path::new("/etc/shiphat/state"));
        assert_eq!(config.workflow_dirs, vec![PathBuf::from("/etc/shiphat/wf")]);
        assert_eq!(config.retention, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(config.audit_retention, Duration::from_secs(31_557_600));
    }
}
