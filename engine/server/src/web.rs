//! The web page: its assets, built into the binary, and the browser sessions behind it.
//!
//! A person signs in with an API token once; the daemon answers with a random session id in
//! an `HttpOnly`, `SameSite=Strict` cookie and a CSRF token that the page sends back in
//! `X-CSRF-Token` on every mutating call. The session keeps only the token's SHA-256, so the
//! caller's roles are looked up again on each request: deleting the token signs its sessions
//! out. Sessions live in memory; a restarted daemon asks people to sign in again, which loses
//! nothing but a click.
//!
//! The page itself (`web/`) is plain HTML, CSS and JavaScript with no build step and nothing
//! fetched from elsewhere, so it works offline and the binary is all there is to deploy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::{new_token, token_hash};

/// The cookie that carries a browser's session id.
pub const COOKIE: &str = "shiphat_session";
/// The header in which the page returns its CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts after sign-in: a working day, so nobody signs in twice a day,
/// and a cookie left on a shared machine is dead by the next morning.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept at once, all tokens together: a bound on the daemon's memory. When
/// it is reached, expired sessions go; if none has, a new sign-in is refused (503) rather than
/// signing anyone out. One token holds at most [`MAX_SESSIONS_PER_TOKEN`], so filling it takes
/// hundreds of tokens.
const MAX_SESSIONS: usize = 10_000;
/// The most sessions one token holds. Past it that token's oldest session goes, never another
/// token's: a person has a browser or three, and a script signing in again and again signs
/// only itself out.
pub const MAX_SESSIONS_PER_TOKEN: usize = 16;

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
    pub csrf: String,
    expires_ms: i64,
}

/// The live sessions, keyed by the SHA-256 of their id (the id itself is only in the cookie).
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session for a token already checked; returns its id and CSRF token, or `None`
    /// when the daemon holds [`MAX_SESSIONS`] live sessions of other tokens.
    pub fn open(&self, hash: String) -> Result<Option<(String, Session)>, getrandom::Error> {
        let id = new_token()?;
        let now = shiphat_store::now_ms();
        let session = Session {
            token_hash: hash,
            csrf: new_token()?,
            expires_ms: now + SESSION_TTL.as_millis() as i64,
        };
        let mut by_id = self.by_id.lock().unwrap();
        let mine = |s: &Session| s.token_hash == session.token_hash;
        // This token's oldest sessions make room for its new one; nobody else's do.
        loop {
            let own = by_id.values().filter(|s| mine(s)).count();
            if own < MAX_SESSIONS_PER_TOKEN {
                break;
            }
            let oldest = by_id
                .iter()
                .filter(|(_, s)| mine(s))
                .min_by_key(|(_, s)| s.expires_ms)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => by_id.remove(&k),
                None => break,
            };
        }
        if by_id.len() >= MAX_SESSIONS {
            by_id.retain(|_, s| s.expires_ms > now);
        }
        if by_id.len() >= MAX_SESSIONS {
            return Ok(None);
        }
        by_id.insert(token_hash(&id), session.clone());
        Ok(Some((id, session)))
    }

    /// The session a request's cookie names, if it is live.
    pub fn find(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let key = token_hash(id);
        let mut by_id = self.by_id.lock().unwrap();
        match by_id.get(&key) {
            Some(s) if s.expires_ms > shiphat_store::now_ms() => Some(s.clone()),
            Some(_) => {
                by_id.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session a request's cookie names.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.by_id.lock().unwrap().remove(&token_hash(id));
        }
    }
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

    #[test]
    fn a_session_needs_its_own_csrf_token() {
        let sessions = Sessions::default();
        let (id, session) = sessions.open("hash".into()).unwrap().unwrap();
        let found = sessions
            .find(&headers(&[("cookie", &format!("{COOKIE}={id}"))]))
            .expect("the session is live");
        assert_eq!(found.token_hash, "hash");
        assert!(found.csrf_ok(&headers(&[(CSRF_HEADER, &session.csrf)])));
        assert!(!found.csrf_ok(&headers(&[(CSRF_HEADER, "0000")])));
        assert!(!found.csrf_ok(&HeaderMap::new()));
        sessions.close(&headers(&[("cookie", &format!("{COOKIE}={id}"))]));
        assert!(
            sessions
                .find(&headers(&[("cookie", &format!("{COOKIE}={id}"))]))
                .is_none()
        );
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
