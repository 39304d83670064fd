//! `uses: oci://REGISTRY/REPOSITORY:TAG@sha256:DIGEST`: a plugin published to an OCI registry.
//! Only the text is read here; the registry is the `shiphat-oci` crate's.

use std::fmt;

/// The scheme that marks a registry reference. No plugin name contains `:` and no path starts
/// with it, so a `uses:` that starts with it can be nothing else.
pub const OCI_SCHEME: &str = "oci://";

/// A component in an OCI registry: a tag, a digest (of the manifest, as registries and `oras`
/// print it), or both. With both, the digest is what runs and the tag says where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OciRef {
    /// `host`, `host:port` or `localhost`.
    pub registry: String,
    /// `team/notify`: lowercase path components.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:` and 64 lowercase hex digits.
    pub digest: Option<String>,
}

impl OciRef {
    /// Parses `oci://REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]`, with an error that says what to
    /// fix.
    pub fn parse(text: &str) -> Result<OciRef, String> {
        let rest = text.strip_prefix(OCI_SCHEME).ok_or_else(|| {
            format!("`{text}` is not an OCI reference; write `oci://REGISTRY/REPOSITORY:TAG`")
        })?;
        let (rest, digest) = match rest.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(digest)?)),
            None => (rest, None),
        };
        let (registry, path) = rest.split_once('/').ok_or_else(|| {
            format!(
                "`{text}` names no repository; write `oci://REGISTRY/REPOSITORY:TAG`, e.g. `oci://ghcr.io/acme/notify:1.2.0`"
            )
        })?;
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(format!(
                "invalid registry `{registry}` in `{text}`; expected a host name with an optional `:PORT`"
            ));
        }
        // A `:` after the last `/` starts the tag (one before it is the registry's port).
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (path, None),
        };
        if !repository.split('/').all(is_path_component) {
            return Err(format!(
                "invalid repository `{repository}` in `{text}`; expected lowercase letters, digits and `.`, `_`, `-` between them, in `/`-separated parts"
            ));
        }
        if let Some(tag) = tag
            && !is_tag(tag)
        {
            return Err(format!(
                "invalid tag `{tag}` in `{text}`; expected up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`"
            ));
        }
        if tag.is_none() && digest.is_none() {
            return Err(format!(
                "`{text}` names no tag and no digest; add one (`{text}:1.2.0` or `{text}@sha256:…`) so that what runs is what you meant, not whatever `latest` is today"
            ));
        }
        Ok(OciRef {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// The reference without its digest: how the lock file knows it.
    pub fn unpinned(&self) -> OciRef {
        OciRef {
            digest: None,
            ..self.clone()
        }
    }

    /// The same component pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> OciRef {
        OciRef {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }

    /// The last part of the repository: `notify` for `acme/notify`.
    pub fn short_name(&self) -> &str {
        self.repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository)
    }
}

impl fmt::Display for OciRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{OCI_SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn parse_digest(text: &str) -> Result<String, String> {
    let hex = text.strip_prefix("sha256:").ok_or_else(|| {
        format!("invalid digest `@{text}`; expected `@sha256:` followed by 64 hex digits")
    })?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("invalid sha256 `{hex}`; expected 64 hex digits"));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// A repository path component, as the OCI distribution spec writes it:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_path_component(part: &str) -> bool {
    let bytes = part.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return false;
    }
    let mut run = String::new();
    for &b in bytes {
        if alnum(&b) {
            if !(run.is_empty()
                || run == "."
                || run == "_"
                || run == "__"
                || run.bytes().all(|c| c == b'-'))
            {
                return false;
            }
            run.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            run.push(b as char);
        } else {
            return false;
        }
    }
    true
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn tags_digests_and_ports_are_told_apart() {
        let r = OciRef::parse("oci://127.0.0.1:5000/acme/notify:1.2.0").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "acme/notify");
        assert_eq!(r.tag.as_deref(), Some("1.2.0"));
        assert_eq!(r.digest, None);
        assert_eq!(r.short_name(), "notify");
        assert_eq!(r.to_string(), "oci://127.0.0.1:5000/acme/notify:1.2.0");

        let r = OciRef::parse(&format!("oci://ghcr.io/acme/notify@{D}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (None, Some(D)));
        let both = format!(
            "oci://localhost:5000/notify:v1@{}",
            D.to_uppercase().replace("SHA256", "sha256")
        );
        let r = OciRef::parse(&both).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(
            r.digest.as_deref(),
            Some(D),
            "the digest is kept in lowercase"
        );
        assert_eq!(r.unpinned().to_string(), "oci://localhost:5000/notify:v1");
        assert_eq!(r.unpinned().pinned(D), r);
    }

    #[test]
    fn a_bad_reference_says_what_to_fix() {
        for (text, says) in [
            ("oci://ghcr.io/acme/notify", "names no tag and no digest"),
            ("oci://ghcr.io", "names no repository"),
            ("oci:///notify:1", "invalid registry"),
            (
                "oci://ghcr.io/Acme/notify:1",
                "invalid repository `Acme/notify`",
            ),
            ("oci://ghcr.io/acme//notify:1", "invalid repository"),
            ("oci://ghcr.io/acme/notify-:1", "invalid repository"),
            ("oci://ghcr.io/acme/notify:.1", "invalid tag `.1`"),
            (
                "oci://ghcr.io/acme/notify:1@sha1:abc",
                "expected `@sha256:`",
            ),
            (
                "oci://ghcr.io/acme/notify@sha256:abc",
                "expected 64 hex digits",
            ),
        ] {
            let e = OciRef::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert!(OciRef::parse("oci://r.io/a__b/c.d/e--f:x_1").is_ok());
        assert!(OciRef::parse(&format!("oci://r.io/a:{}", "t".repeat(129))).is_err());
    }
}
