//! `shiphat serve` and `shiphat token create | delete`: starting the daemon and minting its
//! tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use shiphat_server::{Config, Daemon, Role};
use shiphat_store::{AsyncStore, Location, Store, TokenRecord};

use crate::{EngineArgs, Invalid, exit, output};

/// Where the daemon's settings come from: the config file, then the flags.
#[derive(clap::Args)]
pub struct DaemonArgs {
    /// The daemon's config file (TOML; see docs/daemon.md). Without it: 127.0.0.1:7300, the
    /// user's data directory, ./workflows.
    #[arg(long, value_name = "FILE", env = "SHIPHAT_CONFIG")]
    config: Option<PathBuf>,
    /// Where the daemon keeps its database, instead of the config's or the default.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the daemon's state in this PostgreSQL database instead of a file in the data
    /// directory (`postgres://USER@HOST[:PORT]/DATABASE`, without a password: the password
    /// comes from SHIPHAT_STORE_PASSWORD or --store-password-file). Instead of the config's
    /// `store`.
    #[arg(long, value_name = "URL", env = "SHIPHAT_STORE")]
    store: Option<String>,
    /// A file holding the password of the `--store` database (its first line), instead of
    /// the config's `store_password_file`.
    #[arg(long, value_name = "FILE")]
    store_password_file: Option<PathBuf>,
}

impl DaemonArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(file) => Config::load(file).map_err(|e| Invalid(e.to_string()))?,
            None => Config::defaults(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(url) = &self.store {
            config.store = Some(url.clone());
        }
        if let Some(file) = &self.store_password_file {
            config.store_password_file = Some(file.clone());
        }
        Ok(config)
    }
}

/// The environment variable that may hold the store's password.
const PASSWORD_VAR: &str = "SHIPHAT_STORE_PASSWORD";

/// Where the config keeps the daemon's state: its `store`, with the password from its file or
/// from [`PASSWORD_VAR`], or else the database file in the data directory.
fn location(config: &Config) -> anyhow::Result<Location> {
    let Some(url) = &config.store else {
        return Ok(Location::File(config.database()));
    };
    let password = match &config.store_password_file {
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| {
                Invalid(format!(
                    "cannot read the store's password from `{}`: {e}",
                    file.display()
                ))
            })?;
            Some(text.lines().next().unwrap_or_default().to_owned())
        }
        None => std::env::var(PASSWORD_VAR).ok().filter(|p| !p.is_empty()),
    };
    Location::server(url, password).map_err(|e| Invalid(e.to_string()).into())
}

/// Opens the daemon's store. Nothing here knows which database it is.
fn open_store(location: &Location) -> anyhow::Result<Arc<dyn AsyncStore>> {
    Ok(Arc::from(shiphat_store::open(location)?))
}

pub async fn serve(
    daemon: &DaemonArgs,
    listen: Option<SocketAddr>,
    workflows: &[PathBuf],
    engine: &EngineArgs,
) -> anyhow::Result<u8> {
    let mut config = daemon.config()?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if !workflows.is_empty() {
        config.workflow_dirs = workflows.to_vec();
    }
    // The daemon's interface, never blocking its runtime; the token commands below use the
    // blocking one (`Store`).
    let location = location(&config)?;
    let store = open_store(&location)?;
    let runner = engine.daemon_runner()?;
    output::note(&format!(
        "data in {location}; workflows from {}",
        config
            .workflow_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let daemon = Daemon::start(config, runner, store).await?;
    let addr = daemon.local_addr()?;
    output::note(&format!("listening on {addr}"));
    output::note(&format!(
        "web page: http://{addr}/ (sign in with a token from `shiphat token create`)"
    ));
    daemon.run().await?;
    output::note("stopped");
    Ok(exit::OK)
}

pub fn token_create(
    daemon: &DaemonArgs,
    name: &str,
    roles: &[String],
    patterns: &[String],
) -> anyhow::Result<u8> {
    let config = daemon.config()?;
    let roles = roles
        .iter()
        .map(|r| {
            Role::parse(r).ok_or_else(|| {
                Invalid(format!(
                    "unknown role `{r}`; roles are `viewer`, `deployer` and `admin`"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(problem) = shiphat_protocol::principal_name_problem(name) {
        return Err(Invalid(problem).into());
    }
    // Runs belong to a principal by name: a second principal of the same name could cancel
    // the first one's runs.
    if config.principal_names().any(|n| n == name) {
        return Err(Invalid(format!(
            "`{name}` is a principal of the config file; pick another name"
        ))
        .into());
    }
    let location = location(&config)?;
    let store = open_store(&location)?;
    let token = shiphat_server::new_token()
        .map_err(|e| anyhow::anyhow!("cannot draw a random token: {e}"))?;
    let added = Store::add_token(
        &*store,
        &shiphat_server::token_hash(&token),
        &TokenRecord {
            name: name.to_owned(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            patterns: patterns.to_vec(),
            created_ms: shiphat_store::now_ms(),
        },
    );
    match added {
        Err(e @ shiphat_store::Error::NameTaken { .. }) => {
            return Err(Invalid(e.to_string()).into());
        }
        other => other?,
    }
    output::note(&format!(
        "token for `{name}` ({}) stored in {}; it is shown once:",
        roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        location
    ));
    outln!("{token}");
    Ok(exit::OK)
}

pub fn token_delete(daemon: &DaemonArgs, name: &str) -> anyhow::Result<u8> {
    let location = location(&daemon.config()?)?;
    let store = open_store(&location)?;
    if !Store::delete_token(&*store, name)? {
        return Err(Invalid(format!("no token named `{name}` in {location}")).into());
    }
    output::note(&format!("deleted the token of `{name}`"));
    Ok(exit::OK)
}
