//! Plugins in OCI registries: `shiphat plugin push` and `pull`, the content-addressed cache a
//! pulled plugin runs from with no network, and `shiphat.lock`, which pins every `oci://`
//! reference of the workflows beside it to a digest.
//!
//! A plugin is stored in the layout of the CNCF TAG Runtime "Wasm OCI Artifact" spec, as
//! `wkg oci`, Spin and wasmCloud store components: a manifest whose config has the media type
//! `application/vnd.wasm.config.v0+json` and whose one layer is the component,
//! `application/wasm`. Any tool that writes that layout can publish a plugin shiphat runs,
//! and `oras` can pull what shiphat pushes.
//!
//! The registry protocol, its token flow and the digest checks of transfers are the ORAS
//! project's `oci-client`. This crate does not compile or run anything: the host loads the
//! component file this crate hands over, and checks it against the layer's digest as it does
//! every pinned plugin.

mod auth;
mod cache;
pub mod lock;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use shiphat_workflow::OciRef;

pub use auth::Credentials;
pub use lock::{Entry, Lock};

/// The config media type of a Wasm artifact.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The media type of its one layer: the component's bytes.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The manifest media type the registry is asked for.
const MANIFEST_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How long to wait for a registry to accept a connection: a registry that is down must not
/// hold a deploy for long, since the plugins it had are in the cache.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one read may stall; a 19 MB Python plugin arrives in well under this on any link a
/// deploy box has.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest component a pull takes: the Python example is 19 MB, and a registry that
/// declares or sends more than this is refused before it can fill the machine's memory.
const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// The manifest annotations a plugin is published with, from its own `describe()`.
pub const TITLE: &str = "org.opencontainers.image.title";
pub const VERSION: &str = "org.opencontainers.image.version";
pub const DESCRIPTION: &str = "org.opencontainers.image.description";
pub const CREATED: &str = "org.opencontainers.image.created";

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry could not be reached, refused, or answered something unusable.
    #[error("registry `{registry}`: {message}")]
    Registry { registry: String, message: String },
    /// The artifact is not a component in the Wasm OCI layout.
    #[error("`{reference}` is not a Wasm component artifact: {why}")]
    NotWasm { reference: String, why: String },
    /// A blob's content does not hash to its name.
    #[error(
        "the cached blob `{digest}` is corrupt (its content hashes to `{actual}`); it was removed, so the next pull fetches it again"
    )]
    Corrupt { digest: String, actual: String },
    #[error("`{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `shiphat.lock` cannot be read or written.
    #[error("`{}`: {message}", path.display())]
    Lock { path: PathBuf, message: String },
    /// The credentials configured cannot be used.
    #[error("{0}")]
    Credentials(String),
    /// A reference the lock file does not pin, where one must be pinned.
    #[error(
        "`{reference}` is not pinned in `{}`; run `shiphat plugin lock {}` to pin it",
        lock.display(),
        lock.parent().map_or(".".into(), |d| d.display().to_string())
    )]
    NotLocked { reference: String, lock: PathBuf },
    /// The registry's tag now names another digest than the lock file.
    #[error(
        "`{reference}` drifted: `{}` pins `{locked}`, but the registry's tag now names `{current}`; run `shiphat plugin lock` to review the change and take it, or move the tag back",
        lock.display()
    )]
    Drift {
        reference: String,
        lock: PathBuf,
        locked: String,
        current: String,
    },
    /// The workflow pins one digest and the lock file another.
    #[error(
        "`{reference}` is pinned to `{pinned}` in the workflow but to `{locked}` in `{}`; run `shiphat plugin lock` to update the lock file",
        lock.display()
    )]
    Disagree {
        reference: String,
        lock: PathBuf,
        pinned: String,
        locked: String,
    },
}

/// A component in the cache, pulled from a registry.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The reference, pinned to the manifest's digest.
    pub reference: OciRef,
    /// The component's file in the cache.
    pub path: PathBuf,
    /// The layer's digest: the SHA-256 of the component's bytes, which the host checks on load.
    pub component: [u8; 32],
    pub size: u64,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
}

impl Fetched {
    /// `sha256:HEX` of the component's bytes.
    pub fn component_digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.component))
    }

    pub fn annotation(&self, key: &str) -> &str {
        self.annotations.get(key).map_or("", String::as_str)
    }
}

/// The config blob of the Wasm OCI Artifact spec.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// RFC 3339.
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip2` for a component.
    pub os: String,
    /// The digests of the manifest's layers, in order.
    pub layer_digests: Vec<String>,
    pub component: Option<ComponentInfo>,
}

/// What a component imports and exports, as the spec's config lists it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ComponentInfo {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    #[serde(default)]
    pub target: Option<String>,
}

/// When a workflow runs: whether the registry's tags may decide what runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The lock file pins what it pins; a reference it does not pin is resolved at the
    /// registry (or from the cache when the registry is down).
    Normal,
    /// `--locked` and the daemon: every tag must be pinned by the lock file, and a tag the
    /// registry has moved since is refused, naming both digests.
    Locked,
}

/// A registry client and the cache beside it.
pub struct Registry {
    /// Made on first use: building an HTTPS client loads the machine's root certificates,
    /// some 25 ms, which a run whose plugins are all files or cached must not pay.
    https: OnceLock<Client>,
    /// Plain HTTP, for a registry on a loopback address.
    http: OnceLock<Client>,
    credentials: Credentials,
    cache: cache::Cache,
}

impl Registry {
    /// A client with the credentials of the environment and Docker's `config.json`, caching
    /// under `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> Result<Registry> {
        Ok(Registry::with_credentials(
            cache_dir,
            Credentials::from_env()?,
        ))
    }

    pub fn with_credentials(cache_dir: PathBuf, credentials: Credentials) -> Registry {
        Registry {
            https: OnceLock::new(),
            http: OnceLock::new(),
            credentials,
            cache: cache::Cache::new(cache_dir),
        }
    }

    pub fn cache_dir(&self) -> &Path {
        self.cache.dir()
    }

    fn error(r: &OciRef, e: impl std::fmt::Display) -> Error {
        let mut message = e.to_string();
        if message.contains("https://") && message.contains("error sending request") {
            message.push_str(" (shiphat talks HTTPS to registries, and plain HTTP only to one on a loopback address)");
        }
        Error::Registry {
            registry: r.registry.clone(),
            message,
        }
    }

    /// The oci-client reference. (Plain HTTP goes to a registry on a loopback address only, a
    /// test or development registry, as Docker allows: see `client_for`.)
    fn reference(&self, r: &OciRef) -> Reference {
        let registry = r.registry.clone();
        let repository = r.repository.clone();
        match (&r.tag, &r.digest) {
            (Some(tag), Some(digest)) => {
                Reference::with_tag_and_digest(registry, repository, tag.clone(), digest.clone())
            }
            (None, Some(digest)) => Reference::with_digest(registry, repository, digest.clone()),
            (Some(tag), None) => Reference::with_tag(registry, repository, tag.clone()),
            (None, None) => Reference::with_tag(registry, repository, "latest".into()),
        }
    }

    fn client_for(&self, r: &OciRef) -> Client {
        let (cell, protocol) = if is_loopback(&r.registry) {
            (&self.http, ClientProtocol::Http)
        } else {
            (&self.https, ClientProtocol::Https)
        };
        cell.get_or_init(|| {
            // reqwest is built without a crypto provider of its own; rustls's ring one is
            // already in the build for ureq. Installing it twice is refused harmlessly.
            let _ = rustls::crypto::ring::default_provider().install_default();
            Client::new(ClientConfig {
                protocol,
                connect_timeout: Some(CONNECT_TIMEOUT),
                read_timeout: Some(READ_TIMEOUT),
                // One PUT per blob: the components are a few megabytes, and `distribution`
                // and every hosted registry take them whole.
                use_monolithic_push: true,
                ..ClientConfig::default()
            })
        })
        .clone()
    }

    /// The digest the registry's tag names now.
    pub async fn current_digest(&self, r: &OciRef) -> Result<String> {
        let unpinned = r.unpinned();
        let auth = self.credentials.for_registry(&r.registry)?;
        let client = self.client_for(r);
        let (_, digest) = client
            .pull_manifest_raw(&self.reference(&unpinned), &auth, &MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| Registry::error(r, e))?;
        Ok(digest)
    }

    /// The component `r` names, pinned by its digest: from the cache when it is there, else
    /// pulled (manifest, then the component layer, each checked against its digest) into it.
    pub async fn fetch(&self, r: &OciRef) -> Result<Fetched> {
        let digest = match &r.digest {
            Some(d) => d.clone(),
            None => self.current_digest(r).await?,
        };
        let pinned = r.pinned(&digest);
        // A pull is where a damaged cache is mended: the component is hashed here (it is
        // not on a deploy's path), and fetched again when it does not match.
        if let Some(found) = self.cached(&pinned)? {
            match self.cache.read_blob(&found.component_digest()) {
                Ok(Some(_)) => return Ok(found),
                Ok(None) | Err(Error::Corrupt { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let auth = self.credentials.for_registry(&r.registry)?;
        let client = self.client_for(r);
        let reference = self.reference(&pinned);
        let (raw, got) = client
            .pull_manifest_raw(&reference, &auth, &MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| Registry::error(r, e))?;
        let actual = sha256_digest(&raw);
        if actual != digest || got != digest {
            return Err(Error::Registry {
                registry: r.registry.clone(),
                message: format!(
                    "asked for the manifest `{digest}`, got one whose content hashes to `{actual}`"
                ),
            });
        }
        let (manifest, layer) = wasm_layer(&pinned, &raw)?;
        if self.cache.blob(&layer.digest).is_none() {
            // A registry is not trusted with memory: the component may be no larger than
            // the limit, and no larger than the manifest says.
            let declared = u64::try_from(layer.size).unwrap_or(u64::MAX);
            if declared > MAX_COMPONENT_BYTES {
                return Err(Error::NotWasm {
                    reference: pinned.to_string(),
                    why: format!(
                        "its component is {declared} bytes; a plugin may be at most {MAX_COMPONENT_BYTES}"
                    ),
                });
            }
            let mut stream = client
                .pull_blob_stream(&reference, &layer)
                .await
                .map_err(|e| Registry::error(r, e))?;
            let mut bytes = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| Registry::error(r, e))?;
                if (bytes.len() + chunk.len()) as u64 > declared {
                    return Err(Registry::error(
                        r,
                        format!(
                            "it sent more of `{}` than the {declared} bytes its manifest declares",
                            layer.digest
                        ),
                    ));
                }
                bytes.extend_from_slice(&chunk);
            }
            self.cache.put_blob(&layer.digest, &bytes)?;
        }
        self.cache.put_blob(&digest, &raw)?;
        self.cache.remember_tag(&pinned, &digest)?;
        self.found(pinned, &manifest, &layer)
    }

    /// The component `r` (which must carry a digest) names, if the cache has it. The manifest
    /// is checked against its digest; the component is checked by the host when it loads it.
    pub fn cached(&self, r: &OciRef) -> Result<Option<Fetched>> {
        let Some(digest) = &r.digest else {
            return Ok(None);
        };
        let Some(raw) = self.cache.read_blob(digest)? else {
            return Ok(None);
        };
        let (manifest, layer) = wasm_layer(r, &raw)?;
        if self.cache.blob(&layer.digest).is_none() {
            return Ok(None);
        }
        self.found(r.clone(), &manifest, &layer).map(Some)
    }

    fn found(
        &self,
        reference: OciRef,
        manifest: &OciImageManifest,
        layer: &OciDescriptor,
    ) -> Result<Fetched> {
        let path = self
            .cache
            .blob(&layer.digest)
            .expect("the layer is in the cache");
        let mut component = [0u8; 32];
        let hex_digits = layer.digest.strip_prefix("sha256:").unwrap_or_default();
        hex::decode_to_slice(hex_digits, &mut component).map_err(|_| Error::NotWasm {
            reference: reference.to_string(),
            why: format!("its layer digest `{}` is not a sha256", layer.digest),
        })?;
        Ok(Fetched {
            reference,
            path,
            component,
            size: u64::try_from(layer.size).unwrap_or(0),
            annotations: manifest.annotations.clone().unwrap_or_default(),
        })
    }

    /// The digest a tag named when it was last pulled here, for a run with no network and no
    /// lock file entry.
    pub fn recalled_digest(&self, r: &OciRef) -> Option<String> {
        self.cache.recall_tag(r)
    }

    /// Removes a cached blob found corrupt, so that the next pull fetches it again.
    pub fn evict(&self, digest: &str) {
        self.cache.remove_blob(digest);
    }

    /// Pushes a component in the Wasm OCI layout; returns the manifest's digest.
    pub async fn push(
        &self,
        r: &OciRef,
        component: Vec<u8>,
        info: ComponentInfo,
        annotations: BTreeMap<String, String>,
    ) -> Result<String> {
        let layer_digest = sha256_digest(&component);
        let config = WasmConfig {
            created: annotations.get(CREATED).cloned().unwrap_or_default(),
            author: None,
            architecture: "wasm".into(),
            os: "wasip2".into(),
            layer_digests: vec![layer_digest],
            component: Some(info),
        };
        let config = Config {
            data: serde_json::to_vec(&config)
                .expect("the config serialises")
                .into(),
            media_type: WASM_CONFIG_MEDIA_TYPE.into(),
            annotations: None,
        };
        let layers = [ImageLayer {
            data: component.into(),
            media_type: WASM_LAYER_MEDIA_TYPE.into(),
            annotations: None,
        }];
        let manifest = OciImageManifest::build(&layers, &config, Some(annotations));
        let raw = serde_json::to_vec(&OciManifest::Image(manifest.clone()))
            .expect("the manifest serialises");
        let auth = self.credentials.for_registry(&r.registry)?;
        let client = self.client_for(r);
        // Pushed by tag when there is one; the digest is the manifest's either way.
        let target = self.reference(&r.unpinned());
        client
            .push(&target, &layers, config, &auth, Some(manifest))
            .await
            .map_err(|e| Registry::error(r, e))?;
        // The registry stores the manifest as oci-client serialised it; ask it for the digest
        // rather than trusting a second serialisation to be byte-identical.
        let digest = match &r.tag {
            Some(_) => self.current_digest(r).await?,
            None => sha256_digest(&raw),
        };
        Ok(digest)
    }
}

/// The manifest in `raw`, and its one component layer.
fn wasm_layer(r: &OciRef, raw: &[u8]) -> Result<(OciImageManifest, OciDescriptor)> {
    let not_wasm = |why: String| Error::NotWasm {
        reference: r.to_string(),
        why,
    };
    let manifest: OciImageManifest = serde_json::from_slice(raw)
        .map_err(|e| not_wasm(format!("its manifest is not an image manifest ({e})")))?;
    if manifest.config.media_type != WASM_CONFIG_MEDIA_TYPE {
        return Err(not_wasm(format!(
            "its config is `{}`, not `{WASM_CONFIG_MEDIA_TYPE}` (is it a container image?)",
            manifest.config.media_type
        )));
    }
    let wasm: Vec<&OciDescriptor> = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == WASM_LAYER_MEDIA_TYPE)
        .collect();
    let [layer] = wasm.as_slice() else {
        return Err(not_wasm(format!(
            "it has {} `{WASM_LAYER_MEDIA_TYPE}` layers; a plugin has exactly one",
            wasm.len()
        )));
    };
    let layer = (*layer).clone();
    Ok((manifest, layer))
}

/// `sha256:HEX` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `registry` (`host` or `host:port`) is on a loopback address.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where a workflow runs a reference from: the digest to fetch, given the lock file and the
/// registry's answer for its tag (`None` when it was not asked or could not be reached).
/// Pure, so that every rule is tested without a registry.
pub fn choose(
    r: &OciRef,
    lock: &Lock,
    mode: Mode,
    current: Option<&str>,
    recalled: Option<&str>,
) -> Result<String> {
    let locked = lock.get(r).map(|e| e.digest.clone());
    match (&r.digest, &locked) {
        (Some(pinned), Some(locked)) if pinned != locked => {
            return Err(Error::Disagree {
                reference: r.unpinned().to_string(),
                lock: lock.path().to_owned(),
                pinned: pinned.clone(),
                locked: locked.clone(),
            });
        }
        _ => {}
    }
    // A digest in the workflow is the strongest pin, and never drifts.
    if let Some(pinned) = &r.digest {
        return Ok(pinned.clone());
    }
    match (locked, mode) {
        (Some(locked), Mode::Locked) => match current {
            Some(current) if current != locked => Err(Error::Drift {
                reference: r.to_string(),
                lock: lock.path().to_owned(),
                locked,
                current: current.to_owned(),
            }),
            _ => Ok(locked),
        },
        // A moved tag changes nothing until the lock file is updated.
        (Some(locked), Mode::Normal) => Ok(locked),
        (None, Mode::Locked) => Err(Error::NotLocked {
            reference: r.to_string(),
            lock: lock.path().to_owned(),
        }),
        (None, Mode::Normal) => current
            .or(recalled)
            .map(str::to_owned)
            .ok_or_else(|| Error::Registry {
                registry: r.registry.clone(),
                message: format!(
                    "cannot find out what `{r}` names now, and neither `{}` nor the cache pins it; run `shiphat plugin lock` while the registry is reachable",
                    lock.path().display()
                ),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn lock_with(r: &OciRef, digest: &str) -> Lock {
        let mut lock = Lock::empty(PathBuf::from("/w/shiphat.lock"));
        lock.set(Entry {
            reference: r.unpinned().to_string(),
            digest: digest.to_owned(),
            component: B.to_owned(),
            name: "notify".into(),
            version: "1.0.0".into(),
        });
        lock
    }

    #[test]
    fn what_runs_is_what_the_lock_pins_until_it_is_updated() {
        let r = OciRef::parse("oci://r.io/acme/notify:1").unwrap();
        let lock = lock_with(&r, A);
        // The tag moved to B: a normal run still runs A; a locked one refuses, naming both.
        assert_eq!(choose(&r, &lock, Mode::Normal, Some(B), None).unwrap(), A);
        let e = choose(&r, &lock, Mode::Locked, Some(B), None).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("drifted") && e.contains(A) && e.contains(B),
            "{e}"
        );
        // The registry down: the lock's digest runs.
        assert_eq!(choose(&r, &lock, Mode::Locked, None, None).unwrap(), A);
        assert_eq!(choose(&r, &lock, Mode::Locked, Some(A), None).unwrap(), A);
    }

    #[test]
    fn an_unlocked_tag_is_refused_when_locked_and_resolved_otherwise() {
        let r = OciRef::parse("oci://r.io/acme/notify:1").unwrap();
        let lock = Lock::empty(PathBuf::from("/w/shiphat.lock"));
        let e = choose(&r, &lock, Mode::Locked, Some(A), None).unwrap_err();
        assert!(e.to_string().contains("shiphat plugin lock /w"), "{e}");
        assert_eq!(choose(&r, &lock, Mode::Normal, Some(A), None).unwrap(), A);
        assert_eq!(choose(&r, &lock, Mode::Normal, None, Some(B)).unwrap(), B);
        let e = choose(&r, &lock, Mode::Normal, None, None).unwrap_err();
        assert!(e.to_string().contains("run `shiphat plugin lock`"), "{e}");
    }

    #[test]
    fn a_digest_in_the_workflow_wins_but_must_agree_with_the_lock() {
        let r = OciRef::parse(&format!("oci://r.io/acme/notify:1@{A}")).unwrap();
        let lock = Lock::empty(PathBuf::from("/w/shiphat.lock"));
        assert_eq!(choose(&r, &lock, Mode::Locked, Some(B), None).unwrap(), A);
        let e = choose(&r, &lock_with(&r, B), Mode::Normal, None, None).unwrap_err();
        assert!(e.to_string().contains("pinned to"), "{e}");
    }

    #[test]
    fn loopback_registries_are_told_apart() {
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["ghcr.io", "10.0.0.1:5000", "localhost.evil.example"] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
