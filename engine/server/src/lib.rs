//! The shiphat daemon: an HTTP API (axum) over the same runner as `shiphat run`, with durable
//! run history, bearer-token auth with roles, an audit log, deploy locks, a FIFO queue per
//! concurrency key, live event streams (SSE), Prometheus metrics, crash recovery, and the web
//! page (`web`: assets built in, token sign-in for a session cookie, CSRF tokens).
//!
//! It takes a [`Runner`] and an [`AsyncStore`] and knows neither wasmtime nor SQLite. It never
//! prints: what a person should see goes to `tracing`, and [`Daemon::local_addr`] tells the
//! binary where it listens.

mod api;
mod approvals;
mod auth;
mod chat;
mod config;
mod environments;
mod limits;
mod metrics;
mod scheduler;
mod service;
#[cfg(test)]
mod testing;
mod web;
pub mod windows;
mod workflows;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shiphat_runner::Runner;
use shiphat_store::AsyncStore;
use tokio_util::sync::CancellationToken;

pub use crate::auth::{Principal, Role, glob, new_token, token_hash};
pub use crate::config::{Config, DEFAULT_LISTEN};

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the config `{file}`: {source}")]
    ConfigRead {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config `{file}`: {message}")]
    Config { file: PathBuf, message: String },
    #[error("cannot listen on `{addr}`: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Store(#[from] shiphat_store::Error),
    /// Two principals share a name: tokens made before names were unique, or a token named
    /// like a principal of the config file.
    #[error(
        "two principals are named `{name}` ({sources}); runs belong to a principal by name, so delete one (`shiphat token delete {name}`) and create it again under another name"
    )]
    DuplicatePrincipal { name: String, sources: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How often the workflow directories are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How often old runs are pruned when a retention is set. Pruning is cheap and retention is
/// counted in days, so hourly is precise enough.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// A daemon bound to its address, its workflow files checked and its interrupted runs
/// recovered; the workflows' plugins load in the background (see `workflows.rs`).
pub struct Daemon {
    app: Arc<scheduler::App>,
    listener: tokio::net::TcpListener,
    /// Ends the background work (claims, leases, reloads, pruning) when the daemon stops.
    background: CancellationToken,
}

impl Daemon {
    /// Checks the workflow files and starts loading their plugins, recovers what a previous
    /// life left (runs found `running` become `interrupted`; those that may resume by
    /// themselves are queued again, as are runs that were queued) and binds the address. It
    /// does not wait for plugins to compile: a large one takes many seconds the first time,
    /// and the daemon answers meanwhile (`GET /readyz` says when every workflow is ready);
    /// runs of a workflow still loading, recovered ones included, wait for it.
    pub async fn start(
        config: Config,
        runner: Runner,
        store: Arc<dyn AsyncStore>,
    ) -> Result<Daemon> {
        check_principal_names(&config, store.as_ref()).await?;
        let app = scheduler::App::new(config, runner, store);
        app.workflows
            .start(&app.runner, &app.config.workflow_dirs)
            .await;
        app.recover().await?;
        // Claims, leases and other daemons' news, from now until the daemon stops.
        let background = CancellationToken::new();
        app.spawn_background(background.clone())?;
        let listener = tokio::net::TcpListener::bind(app.config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: app.config.listen,
                source,
            })?;
        Ok(Daemon {
            app,
            listener,
            background,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until SIGTERM or SIGINT. Then it stops accepting runs, gives running steps the
    /// configured grace period to finish, and records the runs still going as `interrupted`.
    /// SIGHUP reloads the workflows at once.
    pub async fn run(self) -> Result<()> {
        let Daemon {
            app,
            listener,
            background,
        } = self;
        // Said once the daemon listens, so whoever started it sees it beside the address.
        if let Some(slack) = &app.config.slack {
            for problem in chat::check_targets(slack, &app.workflows) {
                tracing::warn!("{problem}");
            }
        }
        let stop = CancellationToken::new();
        spawn_signals(app.clone(), stop.clone())?;
        spawn_reloads(app.clone(), background.clone());
        spawn_pruning(app.clone(), background.clone());

        let router = api::router(app.clone(), stop.clone());
        let server = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown({
            let stop = stop.clone();
            let app = app.clone();
            async move {
                stop.cancelled().await;
                app.drain().await;
            }
        });
        let result = server.await.map_err(Error::Serve);
        // The lease keeper stops with the rest: the leases are handed over below, not renewed.
        background.cancel();
        app.hand_over().await?;
        result
    }
}

/// Refuses to start when two principals share a name: a database older than the rule that
/// names are unique, or a token created without the config file that names the same principal.
async fn check_principal_names(config: &Config, store: &dyn AsyncStore) -> Result<()> {
    let mut seen: std::collections::HashMap<String, &str> = config
        .principal_names()
        .map(|n| (n.to_owned(), "the config file"))
        .collect();
    for token in store.tokens().await? {
        if let Some(first) = seen.insert(token.name.clone(), "the database") {
            return Err(Error::DuplicatePrincipal {
                name: token.name,
                sources: format!("in {first} and in the database"),
            });
        }
    }
    Ok(())
}

fn spawn_signals(app: Arc<scheduler::App>, stop: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let io = |source| Error::Listen {
        addr: app.config.listen,
        source,
    };
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    let mut hup = signal(SignalKind::hangup()).map_err(io)?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading workflows");
                    // Their plugins load in the background, as at start.
                    drop(app.workflows.reload(&app.runner, &app.config.workflow_dirs).await);
                }
            }
        }
        tracing::warn!(
            "shutting down: no new runs; running steps get {} to finish",
            humantime::format_duration(app.config.shutdown_grace)
        );
        stop.cancel();
    });
    Ok(())
}

fn spawn_reloads(app: Arc<scheduler::App>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(RELOAD_INTERVAL) => {}
                () = stop.cancelled() => return,
            }
            // Not waited for: a new version's plugins load beside the old version, which
            // serves meanwhile, and other files' changes are not held up behind them.
            drop(
                app.workflows
                    .reload(&app.runner, &app.config.workflow_dirs)
                    .await,
            );
        }
    });
}

/// Prunes, hourly, finished runs past `retention.keep` (when set), audit entries past
/// `retention.audit`, each table by its own retention, and expired sessions.
fn spawn_pruning(app: Arc<scheduler::App>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let ago = |d: Duration| shiphat_store::now_ms() - d.as_millis() as i64;
            if let Some(keep) = app.config.retention {
                match app.store.prune(ago(keep)).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("pruned {n} runs past the retention"),
                    Err(e) => tracing::warn!("cannot prune old runs: {e}"),
                }
            }
            match app.store.prune_audit(ago(app.config.audit_retention)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("pruned {n} audit entries past their retention"),
                Err(e) => tracing::warn!("cannot prune the audit log: {e}"),
            }
            // An expired session is never found again; its row only takes room until then.
            match app.store.prune_sessions(shiphat_store::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!("pruned {n} expired sessions"),
                Err(e) => tracing::warn!("cannot prune expired sessions: {e}"),
            }
            tokio::select! {
                () = tokio::time::sleep(PRUNE_INTERVAL) => {}
                () = stop.cancelled() => return,
            }
        }
    });
}
