//! keepalived's VRRP timing as the server reasons about it: a VRRP instance's advert interval,
//! as its nodes report it (keepalived's JSON dump, `adver_int`: whole seconds with VRRPv2,
//! centiseconds with VRRPv3, e.g. `advert_int 0.25`), and the master-down interval that follows
//! from it — how long a BACKUP waits, after the last advert it heard, before it takes the VIP
//! (RFC 5798: `3 × Master_Adver_Interval + Skew_Time`, the skew `(256 − priority) / 256` of an
//! advert interval; keepalived's "Down timer adverts = 3").

use std::time::Duration;

use hapulse_protocol::VrrpInstanceReport;

/// keepalived's `advert_int` when a configuration sets none (1 s), and what the server assumes
/// for an instance whose nodes have reported no advert interval yet (before their first JSON
/// dump, or agents older than protocol version 3).
pub const KEEPALIVED_DEFAULT_ADVERT: Duration = Duration::from_secs(1);

/// The advert interval of one VRRP instance from its nodes' reports (`reports`: the instance
/// as each node reports it): the longest reported, since nodes that disagree are a
/// configuration drift and the slower timer is the one a takeover waits for; keepalived's
/// default 1 s when no report carries one.
pub fn advert_interval<'a>(reports: impl IntoIterator<Item = &'a VrrpInstanceReport>) -> Duration {
    reports
        .into_iter()
        .filter_map(|i| i.advert_interval_ms)
        .filter(|ms| *ms > 0)
        .max()
        .map_or(KEEPALIVED_DEFAULT_ADVERT, |ms| {
            Duration::from_millis(u64::from(ms))
        })
}

/// The longest master-down interval an instance with advert interval `advert` can have: three
/// adverts plus the skew, which is below one advert interval whatever the priority (`(256 −
/// priority) / 256` of it). A BACKUP — or an old master coming back from FAULT and preempting —
/// takes the VIP within this long after the last advert it heard: 4 s at `advert_int 1`, 1 s at
/// `advert_int 0.25`.
pub fn master_down_bound(advert: Duration) -> Duration {
    advert.saturating_mul(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapulse_protocol::testing::vrrp_instance;
    use hapulse_protocol::VrrpState;

    fn reporting(ms: Option<u32>) -> VrrpInstanceReport {
        let mut i = vrrp_instance("VI_1", VrrpState::Backup, "10.0.0.100", false);
        i.advert_interval_ms = ms;
        i
    }

    #[test]
    fn the_advert_interval_is_the_longest_reported_else_keepalived_s_default() {
        assert_eq!(advert_interval([]), Duration::from_secs(1));
        assert_eq!(
            advert_interval(&[reporting(None), reporting(None)]),
            Duration::from_secs(1)
        );
        // advert_int 0.25 (VRRPv3) on every node.
        assert_eq!(
            advert_interval(&[reporting(Some(250)), reporting(Some(250))]),
            Duration::from_millis(250)
        );
        // A node before its first dump does not make the interval the default.
        assert_eq!(
            advert_interval(&[reporting(None), reporting(Some(250))]),
            Duration::from_millis(250)
        );
        // Drift: the slower timer is the one a takeover waits for.
        assert_eq!(
            advert_interval(&[reporting(Some(250)), reporting(Some(2000))]),
            Duration::from_secs(2)
        );
        // A zero (not a valid advert_int) is no report.
        assert_eq!(
            advert_interval(&[reporting(Some(0))]),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_master_down_bound_covers_three_adverts_and_any_skew() {
        for (advert_ms, priority) in [(1000u64, 1u64), (1000, 150), (250, 1), (250, 254)] {
            let skew = (256 - priority) * advert_ms / 256;
            let keepalived = Duration::from_millis(3 * advert_ms + skew);
            assert!(master_down_bound(Duration::from_millis(advert_ms)) > keepalived);
        }
        assert_eq!(
            master_down_bound(Duration::from_millis(250)),
            Duration::from_secs(1)
        );
        assert_eq!(
            master_down_bound(Duration::from_secs(1)),
            Duration::from_secs(4)
        );
    }
}
