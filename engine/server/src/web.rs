//! The web page: its assets, built into the binary, and the browser sessions behind it.
//!
//! A person signs in with an API token once; the daemon answers with a random session id in
//! an `HttpOnly`, `SameSite=Strict` cookie and a CSRF token that the page sends back in
//! `X-CSRF-Token` on every mutating call. Sessions live in the store, by hashes only: the
//! SHA-256 of the id and of the token, so the caller's roles are looked up again on each
//! request and deleting the token signs its sessions out. They survive a restart, and daemons
//! that share one database behind a load balancer share them: any of them serves any request
//! of a browser, with no sticky sessions. The CSRF token is derived from the session id
//! (see [`csrf_of`]), so it is stored nowhere and any daemon can check it.
//!
//! The page itself (`web/`) is plain HTML, CSS and JavaScript with no build step and nothing
//! fetched from elsewhere, so it works offline and the binary is all there is to deploy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use shiphat_store::{AsyncStore, SessionRecord};

use crate::auth::{new_token, token_hash};
use crate::service::{Error, Result};

/// The cookie that carries a browser's session id.
pub const COOKIE: &str = "shiphat_session";
/// The header in which the page returns its CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts after sign-in: a working day, so nobody signs in twice a day,
/// and a cookie left on a shared machine is dead by the next morning.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept at once, all tokens together: a bound on the store's table, which
/// a sign-in counts. When it is reached, expired sessions go; if none has, a new sign-in is
/// refused (503) rather than signing anyone out. One token holds at most
/// [`MAX_SESSIONS_PER_TOKEN`], so filling it takes hundreds of tokens.
const MAX_SESSIONS: u64 = 10_000;
/// The most sessions one token holds. Past it that token's oldest session goes, never another
/// token's: a person has a browser or three, and a script signing in again and again signs
/// only itself out.
pub const MAX_SESSIONS_PER_TOKEN: u64 = 16;

/// The policy for every asset: only this origin's scripts, styles, connections and images
/// (`data:` for the inline favicon fallback), and no framing (clickjacking).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The assets, as `(name, content type, bytes)`; `index.html` is served at `/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../web/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../web/favicon.svg"),
    ),
];

/// One asset, with the headers that keep the page safe: the CSP, no sniffing, no referrer.
/// `SHIPHAT_WEB_DIR` serves the files from that folder instead, read on every request, so
/// someone working on the page reloads the browser rather than rebuilding the daemon.
pub fn asset(name: &str) -> Response {
    let Some(&(name, content_type, embedded)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    // The embedded text is served as is, without a copy per request.
    let body = match std::env::var_os("SHIPHAT_WEB_DIR") {
        Some(dir) => match std::fs::read_to_string(PathBuf::from(dir).join(name)) {
            Ok(text) => Body::from(text),
            Err(e) => {
                tracing::warn!("SHIPHAT_WEB_DIR: cannot read `{name}`: {e}");
                Body::from(embedded)
            }
        },
        None => Body::from(embedded),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // The assets change with the binary; `no-cache` revalidates on every load, which
            // on loopback or a LAN costs nothing next to a stale page after an upgrade.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A signed-in browser.
#[derive(Clone)]
pub struct Session {
    /// The SHA-256 of the token it signed in with: the principal is looked up from it on
    /// every request.
    pub token_hash: String,
    /// The token the page returns in [`CSRF_HEADER`]: [`csrf_of`] the session id.
    pub csrf: String,
}

/// The browser sessions, kept by the store (the id itself is only in the cookie).
pub struct Sessions {
    store: Arc<dyn AsyncStore>,
}

impl Sessions {
    pub fn new(store: Arc<dyn AsyncStore>) -> Sessions {
        Sessions { store }
    }

    /// Opens a session for a token already checked; returns its id and the session, or
    /// `None` when the store holds [`MAX_SESSIONS`] live sessions of other tokens.
    pub async fn open(&self, token_sha256: String) -> Result<Option<(String, Session)>> {
        let id = new_token().map_err(|e| Error::Internal(format!("cannot open a session: {e}")))?;
        let now = shiphat_store::now_ms();
        let record = SessionRecord {
            id_sha256: token_hash(&id),
            token_sha256,
            created_ms: now,
            expires_ms: now + SESSION_TTL.as_millis() as i64,
        };
        let opened = self
            .store
            .open_session(&record, MAX_SESSIONS, MAX_SESSIONS_PER_TOKEN)
            .await?;
        Ok(opened.then(|| {
            let session = Session {
                token_hash: record.token_sha256,
                csrf: csrf_of(&id),
            };
            (id, session)
        }))
    }

    /// The session a request's cookie names, if it is live.
    pub async fn find(&self, headers: &HeaderMap) -> Result<Option<Session>> {
        let Some(id) = cookie(headers, COOKIE) else {
            return Ok(None);
        };
        let found = self
            .store
            .session(&token_hash(id), shiphat_store::now_ms())
            .await?;
        Ok(found.map(|record| Session {
            token_hash: record.token_sha256,
            csrf: csrf_of(id),
        }))
    }

    /// Ends the session a request's cookie names, on every daemon that shares the store.
    pub async fn close(&self, headers: &HeaderMap) -> Result<()> {
        if let Some(id) = cookie(headers, COOKIE) {
            self.store.close_session(&token_hash(id)).await?;
        }
        Ok(())
    }
}

/// The CSRF token of the session `id`: HMAC-SHA-256 keyed with the id. Deriving it rather
/// than drawing it stores no secret besides the id's hash, lets `GET /api/v1/session` give a
/// reloaded page its token again, and lets every daemon on the store check it. Knowing it
/// tells nothing of the id (what the cookie keeps from scripts), and the store's hash of the
/// id does not give it.
pub fn csrf_of(id: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(id.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(b"shiphat csrf token");
    hex::encode(mac.finalize().into_bytes())
}

impl Session {
    /// Whether `headers` carry this session's CSRF token. Both sides are hashed first, so
    /// the comparison's timing says nothing about the token.
    pub fn csrf_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|given| token_hash(given.trim()) == token_hash(&self.csrf))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value for a new session, or (with `None`) one that clears it. `Secure`
/// is added when a TLS proxy in front says the page came over HTTPS; on plain loopback a
/// `Secure` cookie would never come back.
pub fn set_cookie(id: Option<&str>, request: &HeaderMap) -> HeaderValue {
    let secure = request
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let (value, max_age) = match id {
        Some(id) => (id, SESSION_TTL.as_secs()),
        None => ("", 0),
    };
    let text = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&text).expect("session ids are hex")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[
            ("cookie", "a=1; shiphat_session=abc ; b=2"),
            ("cookie", "c=3"),
        ]);
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(cookie(&h, "missing"), None);
        assert_eq!(
            cookie(&headers(&[("cookie", "shiphat_session=")]), COOKIE),
            None
        );
    }

    #[tokio::test]
    async fn a_session_needs_its_own_csrf_token() {
        let test = crate::testing::app();
        let sessions = &test.app.sessions;
        let (id, session) = sessions.open("hash".into()).await.unwrap().unwrap();
        let cookie = headers(&[("cookie", &format!("{COOKIE}={id}"))]);
        let found = sessions
            .find(&cookie)
            .await
            .unwrap()
            .expect("the session is live");
        assert_eq!(found.token_hash, "hash");
        assert_eq!(
            found.csrf, session.csrf,
            "a reloaded page gets its token again"
        );
        assert!(found.csrf_ok(&headers(&[(CSRF_HEADER, &session.csrf)])));
        assert!(!found.csrf_ok(&headers(&[(CSRF_HEADER, "0000")])));
        assert!(!found.csrf_ok(&HeaderMap::new()));
        // Another session's token is no good here.
        let (_, other) = sessions.open("hash".into()).await.unwrap().unwrap();
        assert!(!found.csrf_ok(&headers(&[(CSRF_HEADER, &other.csrf)])));
        sessions.close(&cookie).await.unwrap();
        assert!(sessions.find(&cookie).await.unwrap().is_none());
    }

    #[test]
    fn the_store_keeps_neither_the_session_id_nor_its_csrf_token() {
        let id = new_token().unwrap();
        let csrf = csrf_of(&id);
        assert_eq!(csrf.len(), 64);
        assert_ne!(csrf, id);
        assert_ne!(csrf, token_hash(&id), "the stored hash would give it away");
        assert_eq!(csrf, csrf_of(&id), "every daemon derives the same token");
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let plain = set_cookie(Some("abc"), &HeaderMap::new());
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        let tls = set_cookie(Some("abc"), &headers(&[("x-forwarded-proto", "https")]));
        assert!(tls.to_str().unwrap().ends_with("; Secure"));
        assert!(
            set_cookie(None, &HeaderMap::new())
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
    }
}
