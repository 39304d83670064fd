//! Filesystem and network grants: lexical path handling and host patterns. Nothing here touches
//! the filesystem or the network; the host crate turns these into WASI capabilities.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A directory a step may read or write: where it is on the host, and the path the plugin
/// uses for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub host_path: PathBuf,
    pub guest_path: String,
    /// For a grant written as a path that climbs out of the workflow's directory (`../x`):
    /// that path, normalised, under which the plugin sees the directory too, so a `with:`
    /// value written the same way as the grant finds it.
    pub alias: Option<String>,
    /// The directory `host_path` must stay beneath when it is opened: no symlink on the way
    /// may lead out of it. The workflow's directory for a grant inside it; for a grant the
    /// workflow names outside its directory, the directory that holds it.
    pub root: PathBuf,
}

impl Grant {
    /// Every name the plugin sees the directory under.
    pub fn guest_paths(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.guest_path.as_str()).chain(self.alias.as_deref())
    }
}

/// Removes `.` and resolves `..` without touching the filesystem. `..` at the root stays at the
/// root, as the kernel does.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let climbable = matches!(out.components().next_back(), Some(Component::Normal(_)));
                if climbable {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Builds the grant for `written`, relative to `base_dir` (absolute and normalised).
pub(crate) fn grant(written: &str, base_dir: &Path) -> Result<Grant, String> {
    if written.trim().is_empty() {
        return Err("empty path; write `.` for the workflow's directory".into());
    }
    let written_path = Path::new(written);
    let host_path = normalize(&base_dir.join(written_path));
    let lexical = normalize(written_path);
    let climbs = matches!(lexical.components().next(), Some(Component::ParentDir));
    let guest_path = if written_path.is_absolute() || climbs {
        // A guest path that climbs out of its root means nothing to the plugin, so paths outside
        // the workflow's directory appear to it where they are on the host.
        host_path.display().to_string()
    } else if lexical.as_os_str().is_empty() {
        ".".to_string()
    } else {
        lexical.display().to_string()
    };
    let alias = (climbs && !written_path.is_absolute()).then(|| lexical.display().to_string());
    let root = if host_path.starts_with(base_dir) {
        base_dir.to_owned()
    } else {
        host_path.parent().unwrap_or(&host_path).to_owned()
    };
    Ok(Grant {
        host_path,
        guest_path,
        alias,
        root,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any subdomain, not the domain itself.
    Suffix(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortMatch {
    /// No port written: the web's ports only, so `api.example.com` does not open its SSH port.
    Web,
    Any,
    Exact(u16),
}

/// One entry of a step's `allow.http`: `host`, `host:port`, `*.example.com`, `host:*`,
/// `[::1]:8080`. Hosts compare case-insensitively. Without a port only 80 and 443 match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    host: HostMatch,
    port: PortMatch,
    source: String,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let bad = |why: &str| format!("invalid host pattern `{text}`; {why}");
        let t = text.trim();
        if t.contains("://") {
            return Err(bad(
                "write the host without a scheme, e.g. `api.example.com`",
            ));
        }
        if t.contains('/') {
            return Err(bad("write the host without a path"));
        }
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let end = rest
                .find(']')
                .ok_or_else(|| bad("missing `]` after the IPv6 address"))?;
            let addr = &rest[..end];
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address inside `[]`"));
            }
            let after = &rest[end + 1..];
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("expected `:port` after `]`"))?,
                ),
            };
            (addr.to_ascii_lowercase(), port)
        } else {
            match t.rsplit_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                None => (t.to_ascii_lowercase(), None),
            }
        };
        let port = match port {
            None => PortMatch::Web,
            Some("*") => PortMatch::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => PortMatch::Exact(n),
                _ => return Err(bad("the port must be a number from 1 to 65535, or `*`")),
            },
        };
        let host = if host.contains(':') {
            // Only the bracketed branch produces colons, and it has checked the address.
            HostMatch::Exact(host)
        } else if let Some(domain) = host.strip_prefix("*.") {
            check_domain(domain).map_err(|w| bad(&w))?;
            HostMatch::Suffix(format!(".{domain}"))
        } else {
            if host == "*" {
                return Err(bad(
                    "a bare `*` would allow every host; name the hosts, or use `*.example.com`",
                ));
            }
            check_domain(&host).map_err(|w| bad(&w))?;
            HostMatch::Exact(host)
        };
        Ok(HostPattern {
            host,
            port,
            source: t.to_string(),
        })
    }

    /// Whether a connection to `host:port` is allowed. `host` may be an IPv6 address with or
    /// without brackets.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        let host_ok = match &self.host {
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        };
        let port_ok = match self.port {
            PortMatch::Web => port == 80 || port == 443,
            PortMatch::Any => true,
            PortMatch::Exact(p) => p == port,
        };
        host_ok && port_ok
    }
}

fn check_domain(domain: &str) -> Result<(), String> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.is_empty() || !domain.split('.').all(ok_label) {
        return Err(
            "expected a host name of letters, digits, `-` and `.`, with `*.` only at the start"
                .into(),
        );
    }
    Ok(())
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let p = HostPattern::parse("API.example.com").unwrap();
        assert!(p.matches("api.example.com", 443));
        assert!(p.matches("Api.Example.Com", 80));
        assert!(!p.matches("api.example.com", 22));
        assert!(!p.matches("example.com", 443));

        let p = HostPattern::parse("*.example.com").unwrap();
        assert!(p.matches("a.example.com", 443));
        assert!(p.matches("a.b.example.com", 80));
        assert!(!p.matches("example.com", 443));
        assert!(!p.matches("badexample.com", 443));

        let p = HostPattern::parse("localhost:8080").unwrap();
        assert!(p.matches("localhost", 8080));
        assert!(!p.matches("localhost", 80));

        let p = HostPattern::parse("internal:*").unwrap();
        assert!(p.matches("internal", 1));
        assert!(p.matches("INTERNAL", 65535));

        let p = HostPattern::parse("[::1]:9000").unwrap();
        assert!(p.matches("[::1]", 9000));
        assert!(p.matches("::1", 9000));
        assert!(!p.matches("::1", 9001));
        let p = HostPattern::parse("[::1]").unwrap();
        assert!(p.matches("::1", 443));

        for bad in [
            "https://example.com",
            "example.com/x",
            "*",
            "a.*.com",
            "host:0",
            "host:99999",
            "host:x",
            "[::1",
            "[nope]",
            "",
            "bad_host",
        ] {
            let err = HostPattern::parse(bad).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn grant_paths() {
        let base = Path::new("/work/app");
        let g = grant("./reports/", base).unwrap();
        assert_eq!(g.host_path, PathBuf::from("/work/app/reports"));
        assert_eq!(g.guest_path, "reports");
        assert_eq!(g.root, base);
        let g = grant("/srv/www", base).unwrap();
        assert_eq!(g.guest_path, "/srv/www");
        assert_eq!(g.root, PathBuf::from("/srv"));
        let g = grant("/work/app/releases/r1", base).unwrap();
        assert_eq!(g.root, base);
        let g = grant("../build", base).unwrap();
        assert_eq!(g.host_path, PathBuf::from("/work/build"));
        assert_eq!(g.guest_path, "/work/build");
        let g = grant(".", base).unwrap();
        assert_eq!(g.guest_path, ".");
        let g = grant("a/../b", base).unwrap();
        assert_eq!(g.guest_path, "b");
        assert!(grant("", base).is_err());
    }
}
