//! The throttle of password checks and enrollments: failures per key (an account from one
//! address, an account from anywhere, an address) within a sliding window, and a bound on the
//! password checks that run at once.
//!
//! An attempt is *reserved* before the password is checked, under one lock, and counts as a
//! failure until it is known to have succeeded: parallel guesses cannot all pass the check
//! before the first failure is recorded. A rate-limiting crate such as governor counts every
//! attempt and cannot take a success back, which would lock out users who log in often; so the
//! window is kept here, bounded in memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys kept; beyond it, keys with nothing in the window are dropped, then those with the
/// fewest failures (a flood of made-up names has one each; a lockout has its limit).
const MAX_KEYS: usize = 100_000;

/// Why an attempt is refused before anything is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A key has reached its limit. `first`: the first refusal of this key in its window (the
    /// one worth a row in the audit log; later ones are counted, not recorded).
    Throttled {
        /// The first refusal of the key since it reached its limit.
        first: bool,
    },
    /// Too many password checks run at once (each takes ~19 MiB and tens of ms of CPU).
    Busy,
}

/// Failures per key within a window, and the permits for password checks.
#[derive(Debug)]
pub struct Throttle {
    failures: Mutex<Failures>,
    checks: tokio::sync::Semaphore,
}

#[derive(Debug, Default)]
struct Failures {
    by_key: HashMap<String, VecDeque<Instant>>,
    /// Keys whose refusal was already reported in their current lockout.
    reported: HashSet<String>,
}

/// A reserved attempt: counted as a failure of each key unless [`Throttle::succeeded`] takes it
/// back.
#[derive(Debug)]
pub struct Reservation {
    keys: Vec<String>,
    at: Instant,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(4)
    }
}

impl Throttle {
    /// A throttle that lets `concurrent_checks` password checks run at once.
    pub fn new(concurrent_checks: usize) -> Self {
        Throttle {
            failures: Mutex::new(Failures::default()),
            checks: tokio::sync::Semaphore::new(concurrent_checks.max(1)),
        }
    }

    /// Reserves an attempt for every key of `limits` (key, most failures within `window`):
    /// Err when one of them has reached its limit. Atomic: of many parallel attempts, at most
    /// the limit get through.
    pub fn reserve(
        &self,
        limits: &[(String, usize)],
        window: Duration,
    ) -> Result<Reservation, Refused> {
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        f.below_limits(limits, window, now)?;
        let keys: Vec<String> = limits.iter().map(|(k, _)| k.clone()).collect();
        f.record(&keys, now, window);
        Ok(Reservation { keys, at: now })
    }

    /// Err when a key of `limits` has reached its limit, without reserving anything: for
    /// attempts that cannot be guessed (a one-time enrollment token), where many may run at
    /// once and only their failures count ([`Throttle::failed`]).
    pub fn check(&self, limits: &[(String, usize)], window: Duration) -> Result<(), Refused> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .below_limits(limits, window, Instant::now())
    }

    /// Records a failure of each of `keys`.
    pub fn failed(&self, keys: &[String], window: Duration) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(keys, Instant::now(), window);
    }

    /// Takes a reservation back: the attempt succeeded, or it was never made (busy).
    pub fn succeeded(&self, r: Reservation) {
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in &r.keys {
            if let Some(q) = f.by_key.get_mut(key) {
                if let Some(i) = q.iter().rposition(|t| *t == r.at) {
                    q.remove(i);
                }
                if q.is_empty() {
                    f.by_key.remove(key);
                }
            }
        }
    }

    /// A permit for one password check, waiting at most `wait`; Err(Busy) beyond.
    pub async fn check_permit(
        &self,
        wait: Duration,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, Refused> {
        match tokio::time::timeout(wait, self.checks.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refused::Busy),
        }
    }
}

impl Failures {
    /// Err when a key of `limits` has `limit` failures within `window` (the first refusal of a
    /// lockout says so); old failures are dropped on the way.
    fn below_limits(
        &mut self,
        limits: &[(String, usize)],
        window: Duration,
        now: Instant,
    ) -> Result<(), Refused> {
        for (key, limit) in limits {
            let count = self.by_key.get_mut(key).map_or(0, |q| {
                while q.front().is_some_and(|t| now.duration_since(*t) > window) {
                    q.pop_front();
                }
                q.len()
            });
            if count >= *limit {
                let first = self.reported.insert(key.clone());
                return Err(Refused::Throttled { first });
            }
            self.reported.remove(key);
        }
        Ok(())
    }

    /// One failure (or reservation) of each of `keys` at `now`.
    fn record(&mut self, keys: &[String], now: Instant, window: Duration) {
        if self.by_key.len() + keys.len() > MAX_KEYS {
            self.shrink(now, window);
        }
        for key in keys {
            self.by_key.entry(key.clone()).or_default().push_back(now);
        }
    }

    /// Drops the keys with nothing in `window`, then, while still too many, those with the
    /// fewest failures, the oldest first.
    fn shrink(&mut self, now: Instant, window: Duration) {
        self.by_key
            .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) <= window));
        if self.by_key.len() >= MAX_KEYS {
            let mut weakest: Vec<(usize, Instant, String)> = self
                .by_key
                .iter()
                .filter_map(|(k, q)| q.back().map(|t| (q.len(), *t, k.clone())))
                .collect();
            weakest.sort();
            for (_, _, key) in weakest.into_iter().take(self.by_key.len() - MAX_KEYS / 2) {
                self.by_key.remove(&key);
            }
        }
        let keys = &self.by_key;
        self.reported.retain(|k| keys.contains_key(k));
    }
}

/// The key of a source address: the address itself for IPv4, its /64 network for IPv6 (one
/// host usually holds a whole /64, so single addresses would give it endless fresh keys).
pub fn source_key(source: &str) -> String {
    match source.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        _ => source.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(account: &str, source: &str) -> Vec<(String, usize)> {
        vec![
            (format!("pair:{account}|{source}"), 5),
            (format!("user:{account}"), 50),
            (format!("addr:{source}"), 20),
        ]
    }

    #[test]
    fn reservations_count_until_taken_back_and_limits_are_per_key() {
        let t = Throttle::default();
        let window = Duration::from_secs(60);
        // Five attempts from one address pass the check at once; the sixth is refused before
        // any of them is known to have failed.
        let held: Vec<Reservation> = (0..5)
            .map(|_| t.reserve(&limits("ann", "10.0.0.1"), window).unwrap())
            .collect();
        assert_eq!(
            t.reserve(&limits("ann", "10.0.0.1"), window).unwrap_err(),
            Refused::Throttled { first: true }
        );
        assert_eq!(
            t.reserve(&limits("ann", "10.0.0.1"), window).unwrap_err(),
            Refused::Throttled { first: false },
            "reported once per lockout"
        );
        // The same account from elsewhere is not locked out by that address.
        assert!(t.reserve(&limits("ann", "10.0.0.2"), window).is_ok());
        // Successes are taken back: they never lock anyone out.
        for r in held {
            t.succeeded(r);
        }
        assert!(t.reserve(&limits("ann", "10.0.0.1"), window).is_ok());
    }

    #[test]
    fn checked_attempts_count_only_their_failures() {
        let t = Throttle::default();
        let window = Duration::from_secs(60);
        let limits = vec![("enroll:10.0.0.1".to_string(), 20)];
        // A fleet enrolling at once is never throttled by its own successes.
        for _ in 0..64 {
            assert!(t.check(&limits, window).is_ok());
        }
        for _ in 0..20 {
            t.failed(&["enroll:10.0.0.1".to_string()], window);
        }
        assert_eq!(
            t.check(&limits, window).unwrap_err(),
            Refused::Throttled { first: true }
        );
    }

    #[test]
    fn a_flood_of_made_up_keys_keeps_recent_lockouts() {
        let t = Throttle::default();
        let window = Duration::from_secs(600);
        for _ in 0..5 {
            t.reserve(&limits("admin", "10.0.0.9"), window).unwrap();
        }
        for i in 0..(MAX_KEYS / 3 + 10) {
            // Ten names per address, as a flood from many sources would bring.
            let _ = t.reserve(
                &limits(&format!("made-up-{i}"), &format!("s{}", i / 10)),
                window,
            );
        }
        assert!(
            t.reserve(&limits("admin", "10.0.0.9"), window).is_err(),
            "the lockout survived the flood"
        );
        let f = t.failures.lock().unwrap();
        assert!(f.by_key.len() <= MAX_KEYS, "{}", f.by_key.len());
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        assert_eq!(
            source_key("2001:db8:1:2:aaaa::1"),
            source_key("2001:db8:1:2:bbbb::9")
        );
        assert_ne!(source_key("2001:db8:1:2::1"), source_key("2001:db8:1:3::1"));
        assert_eq!(source_key("10.0.0.1"), "10.0.0.1");
    }

    #[tokio::test]
    async fn password_checks_are_bounded() {
        let t = Throttle::new(2);
        let a = t.check_permit(Duration::from_millis(10)).await.unwrap();
        let _b = t.check_permit(Duration::from_millis(10)).await.unwrap();
        assert_eq!(
            t.check_permit(Duration::from_millis(10)).await.unwrap_err(),
            Refused::Busy
        );
        drop(a);
        assert!(t.check_permit(Duration::from_millis(10)).await.is_ok());
    }
}
