//! Availability of a cluster, from its alert history: how much of the time every VRRP instance
//! had a MASTER, how often one lost it (a failure) and for how long.
//!
//! An outage is a period with a `no_master` alert open for any instance of the cluster
//! (overlapping alerts are merged). Over a window (24 h, 7 d, 30 d, counted from when the
//! cluster was first seen if that is later) with `n` outages:
//!
//! - uptime % = time with a MASTER / observed time; the rest is "without a MASTER";
//! - MTTR = time without a MASTER / n; MTTF = time with a MASTER / n;
//! - availability = MTTF / (MTTF + MTTR), which equals the uptime fraction.
//!
//! The server only knows what it saw: while the server itself is down, nothing is counted
//! either way (an outage open at a restart continues from the open alert).

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Availability over one window.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Availability {
    /// `24h`, `7d`, `30d`.
    pub window: &'static str,
    /// Seconds observed: the window, or less when the cluster is younger.
    pub observed_seconds: f64,
    /// Percentage of the observed time every instance had a MASTER.
    pub uptime_percent: f64,
    /// Percentage of the observed time some instance had no MASTER.
    pub without_master_percent: f64,
    /// Outages that overlap the window.
    pub failures: u64,
    /// Mean time to failure, seconds (`None` without failures).
    pub mttf_seconds: Option<f64>,
    /// Mean time to repair, seconds (`None` without failures).
    pub mttr_seconds: Option<f64>,
}

/// The windows reported.
pub const WINDOWS: [(&str, i64); 3] = [("24h", 1), ("7d", 7), ("30d", 30)];

/// Availability over `[now - window, now]`, counted from `first_seen` if later, given outage
/// periods `(start, end)` (`end` `None`: still open). Pure.
pub fn compute(
    label: &'static str,
    window: Duration,
    first_seen: DateTime<Utc>,
    now: DateTime<Utc>,
    outages: &[(DateTime<Utc>, Option<DateTime<Utc>>)],
) -> Availability {
    let from = (now - window).max(first_seen).min(now);
    let mut clipped: Vec<(DateTime<Utc>, DateTime<Utc>)> = outages
        .iter()
        .map(|(s, e)| ((*s).max(from), e.unwrap_or(now).min(now)))
        .filter(|(s, e)| s < e || (s == e && *s > from))
        .collect();
    clipped.sort();
    let mut merged: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    for (s, e) in clipped {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let secs = |d: Duration| d.num_milliseconds() as f64 / 1000.0;
    let observed = secs(now - from);
    let down: f64 = merged.iter().map(|(s, e)| secs(*e - *s)).sum();
    let up = (observed - down).max(0.0);
    let failures = merged.len() as u64;
    let percent = |part: f64| {
        if observed > 0.0 {
            100.0 * part / observed
        } else {
            100.0
        }
    };
    Availability {
        window: label,
        observed_seconds: observed,
        uptime_percent: percent(up),
        without_master_percent: if observed > 0.0 { percent(down) } else { 0.0 },
        failures,
        mttf_seconds: (failures > 0).then(|| up / failures as f64),
        mttr_seconds: (failures > 0).then(|| down / failures as f64),
    }
}

/// The cluster's availability over each of [`WINDOWS`]; `None` for a cluster never seen.
pub async fn of_cluster(
    pool: &PgPool,
    cluster: &str,
    now: DateTime<Utc>,
) -> Result<Option<Vec<Availability>>, sqlx::Error> {
    let first_seen: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT created_at FROM clusters WHERE name = $1")
            .bind(cluster)
            .fetch_optional(pool)
            .await?;
    let Some(first_seen) = first_seen else {
        return Ok(None);
    };
    let longest = Duration::days(WINDOWS[WINDOWS.len() - 1].1);
    let outages: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT active_since, resolved_at FROM alerts
          WHERE cluster = $1 AND rule = 'no_master'
            AND (resolved_at IS NULL OR resolved_at > $2)",
    )
    .bind(cluster)
    .bind(now - longest)
    .fetch_all(pool)
    .await?;
    Ok(Some(
        WINDOWS
            .iter()
            .map(|(label, days)| compute(label, Duration::days(*days), first_seen, now, &outages))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + Duration::days(100) + Duration::minutes(minutes)
    }

    #[test]
    fn no_outage_is_full_uptime_without_mttf() {
        let a = compute("24h", Duration::days(1), at(-10_000), at(0), &[]);
        assert_eq!(a.observed_seconds, 86_400.0);
        assert_eq!((a.uptime_percent, a.failures), (100.0, 0));
        assert_eq!((a.mttf_seconds, a.mttr_seconds), (None, None));
    }

    #[test]
    fn outages_give_uptime_mttf_and_mttr() {
        // Observed 100 minutes (the cluster is that young); two outages of 5 minutes, one of
        // them still open, plus one overlapping the first (merged).
        let outages = [
            (at(-80), Some(at(-75))),
            (at(-78), Some(at(-76))),
            (at(-5), None),
        ];
        let a = compute("24h", Duration::days(1), at(-100), at(0), &outages);
        assert_eq!(a.observed_seconds, 6000.0);
        assert_eq!(a.failures, 2);
        assert!((a.uptime_percent - 90.0).abs() < 1e-9, "{a:?}");
        assert!((a.without_master_percent - 10.0).abs() < 1e-9, "{a:?}");
        assert_eq!(a.mttr_seconds, Some(300.0));
        assert_eq!(a.mttf_seconds, Some(2700.0));
        let (f, r) = (a.mttf_seconds.unwrap(), a.mttr_seconds.unwrap());
        assert!((100.0 * f / (f + r) - a.uptime_percent).abs() < 1e-9);
    }

    #[test]
    fn outages_are_clipped_to_the_window() {
        // Started before the window (counts from its start), ended before it (ignored).
        let outages = [(at(-2000), Some(at(-1430))), (at(-3000), Some(at(-2900)))];
        let a = compute("24h", Duration::days(1), at(-10_000), at(0), &outages);
        assert_eq!(a.failures, 1);
        assert!((a.observed_seconds * a.without_master_percent / 100.0 - 600.0).abs() < 1e-6);
    }
}
