//! The login throttle: failed logins per account and per source address.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins per account and per source address within a sliding window; in memory (one
/// server replica), so a restart forgets them.
#[derive(Debug, Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Throttle {
    /// Failures recorded for `key` within `window`.
    pub fn recent(&self, key: &str, window: Duration) -> usize {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(q) = map.get_mut(key) else { return 0 };
        while q.front().is_some_and(|t| t.elapsed() > window) {
            q.pop_front();
        }
        q.len()
    }

    /// Records a failure for `key`.
    pub fn record(&self, key: &str) {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: a flood of made-up names cannot grow the map without limit.
        if map.len() > 100_000 {
            map.clear();
        }
        map.entry(key.to_string())
            .or_default()
            .push_back(Instant::now());
    }
}
