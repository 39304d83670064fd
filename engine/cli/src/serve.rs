//! `shiphat serve` and `shiphat token create | delete`: starting the daemon and minting its
//! tokens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shiphat_server::{Config, Daemon, Role};
use shiphat_store::{SqliteStore, Store, TokenRecord};

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
        Ok(config)
    }
}

fn open_store(config: &Config) -> anyhow::Result<SqliteStore> {
    Ok(SqliteStore::open(&config.database())?)
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
    let store: Arc<dyn shiphat_store::AsyncStore> = Arc::new(open_store(&config)?);
    let runner = engine.daemon_runner()?;
    output::note(&format!(
        "data in {}; workflows from {}",
        config.data_dir.display(),
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
    let store = open_store(&config)?;
    let token = shiphat_server::new_token()
        .map_err(|e| anyhow::anyhow!("cannot draw a random token: {e}"))?;
    let added = store.add_token(
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
        display(&config.database())
    ));
    outln!("{token}");
    Ok(exit::OK)
}

pub fn token_delete(daemon: &DaemonArgs, name: &str) -> anyhow::Result<u8> {
    let config = daemon.config()?;
    let store = open_store(&config)?;
    if !store.delete_token(name)? {
        return Err(Invalid(format!(
            "no token named `{name}` in {}",
            display(&config.database())
        ))
        .into());
    }
    output::note(&format!("deleted the token of `{name}`"));
    Ok(exit::OK)
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
