//! Slack's v0 request signature: `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{raw body}` with
//! the app's signing secret, checked over the bytes as received, in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a request's timestamp may be from now: Slack's own recommendation, which bounds
/// how long a captured request could be replayed.
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a request was refused (always 401).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Unverified {
    #[error("the `{0}` header is missing")]
    MissingHeader(&'static str),
    #[error("`X-Slack-Request-Timestamp` is not a number of seconds: `{0}`")]
    BadTimestamp(String),
    #[error("`X-Slack-Signature` must be `v0=` and 64 hex digits")]
    BadSignatureFormat,
    #[error("the signature does not match the body; is `slack.signing_secret` the app's?")]
    Mismatch,
    #[error(
        "the request timestamp `{timestamp}` is {skew} s from now (at most {MAX_SKEW_SECS} s); check the clock"
    )]
    Stale { timestamp: i64, skew: i64 },
}

/// Checks the signature first, then the timestamp, so that a refusal says which was wrong.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), Unverified> {
    let timestamp = timestamp.ok_or(Unverified::MissingHeader("X-Slack-Request-Timestamp"))?;
    let signature = signature.ok_or(Unverified::MissingHeader("X-Slack-Signature"))?;
    let expected = signature
        .strip_prefix("v0=")
        .filter(|h| h.len() == 64)
        .and_then(|h| hex::decode(h).ok())
        .ok_or(Unverified::BadSignatureFormat)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| Unverified::Mismatch)?;
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Unverified::BadTimestamp(timestamp.to_owned()))?;
    let skew = (now_secs - ts).abs();
    if skew > MAX_SKEW_SECS {
        return Err(Unverified::Stale {
            timestamp: ts,
            skew,
        });
    }
    Ok(())
}

/// The signature Slack would send; for tests and for documentation of the scheme.
#[cfg(test)]
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Slack's published example (api.slack.com/authentication/verifying-requests-from-slack).
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TIMESTAMP: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slacks_known_answer() {
        assert_eq!(
            sign(SECRET.as_bytes(), TIMESTAMP, BODY.as_bytes()),
            SIGNATURE
        );
        let now = TIMESTAMP.parse::<i64>().unwrap() + 10;
        let check = |sig, body: &str, now| {
            verify(
                SECRET.as_bytes(),
                Some(TIMESTAMP),
                sig,
                body.as_bytes(),
                now,
            )
        };
        assert_eq!(check(Some(SIGNATURE), BODY, now), Ok(()));
        let mut flipped = SIGNATURE.to_owned();
        flipped.replace_range(10..11, "e");
        assert_eq!(check(Some(&flipped), BODY, now), Err(Unverified::Mismatch));
        let reencoded = BODY.replace("%2F", "/");
        assert_eq!(
            check(Some(SIGNATURE), &reencoded, now),
            Err(Unverified::Mismatch)
        );
        assert!(matches!(
            check(Some(SIGNATURE), BODY, now + 301),
            Err(Unverified::Stale { .. })
        ));
        assert_eq!(
            check(None, BODY, now),
            Err(Unverified::MissingHeader("X-Slack-Signature"))
        );
        assert_eq!(
            check(Some("v0=zz"), BODY, now),
            Err(Unverified::BadSignatureFormat)
        );
    }
}
