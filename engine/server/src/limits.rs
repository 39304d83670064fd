//! Per-client limits that keep one principal or one address from taking what belongs to all:
//! how many event streams a principal holds open, how fast an address may fail to sign in or
//! be refused. Each is in memory: a restart forgets them, which costs an attacker nothing they
//! could not get by waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failed sign-ins one address may make at once, then one every [`SIGN_IN_EVERY`]; past them
/// every sign-in from the address is refused (429) until the budget refills. A person
/// mistyping a token a few times is never slowed, a script guessing tokens gets ten tries a
/// minute (a token is 256 random bits anyway; what this bounds is the CPU and the audit log).
/// Successful sign-ins do not count: each token's sessions are capped on their own.
pub const SIGN_IN_BURST: u32 = 10;
pub const SIGN_IN_EVERY: Duration = Duration::from_secs(6);
/// Refused calls from one address written to the audit log one by one, then one every
/// [`REFUSAL_EVERY`]; the ones in between are counted and the next entry says how many. A
/// misconfigured client still shows in the log, a flood costs a few rows a minute.
pub const REFUSAL_BURST: u32 = 20;
pub const REFUSAL_EVERY: Duration = Duration::from_secs(2);

/// How many things each key holds at once (e.g. open event streams per principal).
#[derive(Default)]
pub struct Held {
    counts: Mutex<HashMap<String, usize>>,
}

/// One thing held; dropping it gives it back.
pub struct Hold {
    held: Arc<Held>,
    key: String,
}

impl Held {
    /// Takes one for `key`, or `None` when `key` holds `max` already.
    pub fn take(self: &Arc<Held>, key: &str, max: usize) -> Option<Hold> {
        let mut counts = self.counts.lock().unwrap();
        let count = counts.entry(key.to_owned()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Hold {
            held: self.clone(),
            key: key.to_owned(),
        })
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut counts = self.held.counts.lock().unwrap();
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The most keys a [`Rate`] tracks. Past it the keys whose budget is full again are dropped,
/// then (under a flood from many addresses) everything: the map never outgrows this, and an
/// attacker with that many addresses is not slowed by a per-address limit anyway.
pub const MAX_KEYS: usize = 10_000;

/// A token bucket per key (e.g. per remote address): `burst` at once, then one every
/// `every`.
pub struct Rate {
    burst: u32,
    every: Duration,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Rate {
    pub fn new(burst: u32, every: Duration) -> Rate {
        Rate {
            burst,
            every,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` may do one more now; spends one when it may.
    pub fn allow(&self, key: &str) -> bool {
        self.allow_at(key, Instant::now())
    }

    /// Whether `key` has budget left now, without spending any.
    pub fn has_budget(&self, key: &str) -> bool {
        let buckets = self.buckets.lock().unwrap();
        buckets.get(key).is_none_or(|b| {
            level(b, self.burst, self.every, Instant::now()) + 1.0 <= f64::from(self.burst)
        })
    }

    fn allow_at(&self, key: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (burst, every) = (self.burst, self.every);
            buckets.retain(|_, b| level(b, burst, every, now) < f64::from(burst));
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert((0.0, now));
        let used = level(bucket, self.burst, self.every, now);
        if used + 1.0 > f64::from(self.burst) {
            *bucket = (used, now);
            return false;
        }
        *bucket = (used + 1.0, now);
        true
    }
}

/// How much of the budget is spent at `now`: what was spent, less what has refilled since.
fn level(&(used, at): &(f64, Instant), burst: u32, every: Duration, now: Instant) -> f64 {
    let refilled = now.saturating_duration_since(at).as_secs_f64() / every.as_secs_f64();
    (used - refilled).clamp(0.0, f64::from(burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_counted_per_key_and_given_back() {
        let held = Arc::new(Held::default());
        let a = held.take("ci", 2).unwrap();
        let _b = held.take("ci", 2).unwrap();
        assert!(held.take("ci", 2).is_none());
        assert!(held.take("root", 2).is_some(), "another key has its own");
        drop(a);
        assert!(held.take("ci", 2).is_some());
    }

    #[test]
    fn a_rate_allows_a_burst_then_one_per_period() {
        let rate = Rate::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!((0..3).all(|_| rate.allow_at("a", t0)));
        assert!(!rate.allow_at("a", t0));
        assert!(rate.allow_at("b", t0), "another key has its own budget");
        assert!(!rate.allow_at("a", t0 + Duration::from_secs(5)));
        assert!(rate.allow_at("a", t0 + Duration::from_secs(11)));
        assert!(!rate.allow_at("a", t0 + Duration::from_secs(11)));
    }
}
