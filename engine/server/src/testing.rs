//! What the crate's in-process tests share: an [`App`] over a store in a temporary directory,
//! no workflow loaded, and one principal per role, each named after its role and with its name
//! as its token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::MockConnectInfo;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::auth::{Principal, Role, token_hash};
use crate::scheduler::App;

pub struct TestApp {
    pub app: Arc<App>,
    _dir: tempfile::TempDir,
}

pub fn app() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let location = shiphat_store::Location::File(dir.path().join("shiphat.db"));
    let store = shiphat_store::open(&location).unwrap();
    let host = shiphat_host::Host::new(shiphat_host::HostConfig::default()).unwrap();
    let runner = shiphat_runner::Runner::new(
        host,
        shiphat_runner::PluginPath::new(Vec::new()),
        shiphat_runner::Secrets::none(),
    );
    let mut config = Config::defaults();
    config.data_dir = dir.path().to_owned();
    config.workflow_dirs = Vec::new();
    config.principals = [Role::Viewer, Role::Deployer, Role::Admin]
        .into_iter()
        .map(|role| (token_hash(role.as_str()), principal(role)))
        .collect();
    TestApp {
        app: App::new(config, runner, Arc::from(store)),
        _dir: dir,
    }
}

/// The principal of the fixture with `role`, named after it.
pub fn principal(role: Role) -> Principal {
    Principal {
        name: role.as_str().to_owned(),
        roles: vec![role],
        patterns: vec!["*".to_owned()],
    }
}

impl TestApp {
    /// The daemon's router, as a client on the loopback would call it.
    pub fn router(&self) -> Router {
        crate::api::router(self.app.clone(), CancellationToken::new())
            .layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
    }

    /// A queued run of `owner` recorded straight in the store, as if admitted while a lock
    /// held it: the tests load no workflow, so none could be admitted.
    pub async fn queued_run(&self, owner: &str) -> String {
        let id = shiphat_runner::new_run_id();
        let run = shiphat_store::NewRun {
            id: id.clone(),
            workflow: "web".into(),
            inputs: serde_json::json!({}),
            principal: owner.into(),
            source: shiphat_protocol::RunSource::Api,
            dry_run: false,
            concurrency_key: None,
            idempotency_key: None,
            exclusive: false,
            forced: false,
            not_before_ms: None,
        };
        self.app.store.create_run(&run, 100).await.unwrap();
        id
    }
}
