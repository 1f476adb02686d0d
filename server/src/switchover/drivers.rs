//! Replication drivers: how hapulse moves each kind of replication link tied to a VRRP
//! instance, behind one interface the switchover and failover machinery use — which command
//! stops writes on the old primary, which promotes the target, which makes another member a
//! standby of the new primary, and whether a member can be promoted at all.
//!
//! A link is tied to an instance when its probe names the instance (`vrrp_instance`) or, in a
//! cluster with one instance, always. A move of the instance moves every tied link, so it is
//! refused before anything is fenced or stopped when a tied link has no driver that can move
//! it: fencing a master and then finding that nothing can be promoted is worse than doing
//! nothing. Today PostgreSQL streaming replication has a driver; MySQL/MariaDB and DRBD are
//! observed but not moved (the refusal says so).

use hapulse_protocol::{Action, LinkState, ReplicationKind, ReplicationRole};

use crate::fleet::view::{ClusterView, LinkMemberView, ReplicationView};

/// How one kind of replication link is moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// PostgreSQL streaming replication: fast shutdown of the old primary, catch-up to its
    /// shutdown checkpoint, `pg_promote()`, then `postgres_follow` for the others.
    Postgresql,
}

impl Driver {
    /// The driver of links of `kind`, or why there is none.
    pub fn of(kind: ReplicationKind) -> Result<Driver, String> {
        match kind {
            ReplicationKind::Postgresql => Ok(Driver::Postgresql),
            ReplicationKind::Mysql => {
                Err("hapulse observes MySQL/MariaDB replication but cannot promote it yet".into())
            }
            ReplicationKind::Drbd => {
                Err("hapulse observes DRBD resources but cannot promote them yet".into())
            }
        }
    }

    /// The command that stops writes on the old primary of link `name` (its final position in
    /// the result's data).
    pub fn stop(self, name: &str) -> Action {
        match self {
            Driver::Postgresql => Action::PostgresStop { link: name.into() },
        }
    }

    /// The command that promotes the target's member of link `name`.
    pub fn promote(self, name: &str) -> Action {
        match self {
            Driver::Postgresql => Action::PostgresPromote { link: name.into() },
        }
    }

    /// The command that makes a member of link `name` a standby of the primary reachable at
    /// `host:port`: re-points a running standby, rejoins a stopped old primary.
    pub fn follow(self, name: &str, host: &str, port: u16) -> Action {
        match self {
            Driver::Postgresql => Action::PostgresFollow {
                link: name.into(),
                primary_host: host.into(),
                primary_port: port,
            },
        }
    }

    /// Whether `member` can be promoted now; Err says why not. PostgreSQL: a streaming standby
    /// (only one receives the WAL the old primary's shutdown sends).
    pub fn promotable(self, link: &str, member: &LinkMemberView) -> Result<(), String> {
        match self {
            Driver::Postgresql => {
                if member.role == ReplicationRole::Secondary && member.state == LinkState::Streaming
                {
                    Ok(())
                } else {
                    Err(format!(
                        "{} is {} and {} on {link}: it must be a streaming standby",
                        member.node_id,
                        member.role.as_str(),
                        member.state.as_str()
                    ))
                }
            }
        }
    }
}

/// The links of `c` tied to `instance`, by key.
pub fn tied_links<'c>(c: &'c ClusterView, instance: &str) -> Vec<&'c ReplicationView> {
    c.replication
        .iter()
        .filter(|r| r.vrrp_instance.as_deref() == Some(instance))
        .collect()
}

/// The one link a move of `instance` carries and its driver (None: no link is tied), or why
/// the instance cannot be moved: a tied link has no driver, or several database links are tied
/// (hapulse moves one database per instance).
pub fn moved_link<'c>(
    c: &'c ClusterView,
    instance: &str,
) -> Result<Option<(&'c ReplicationView, Driver)>, String> {
    let tied = tied_links(c, instance);
    let mut moved = None;
    for link in &tied {
        let driver = Driver::of(link.kind).map_err(|why| {
            format!(
                "{} is tied to {instance} and {why}: nothing is moved",
                link.link
            )
        })?;
        if let Some((other, _)) = moved.replace((*link, driver)) {
            let other: &ReplicationView = other;
            return Err(format!(
                "{} and {} are both tied to {instance}; hapulse moves one database per instance",
                other.link, link.link
            ));
        }
    }
    Ok(moved)
}

/// A link's name without its kind (`pg` for `postgresql:pg`), as the agents' actions name it.
pub fn link_name(key: &str) -> &str {
    key.split_once(':').map_or(key, |(_, n)| n)
}

/// The address a primary advertises to its standbys (`advertise_address` of its PostgreSQL
/// probe, raw field `advertise_address`), as host and port; Err says why there is none.
pub fn advertised(
    raw: &std::collections::BTreeMap<String, String>,
    node: &str,
) -> Result<(String, u16), String> {
    let address = raw.get("advertise_address").ok_or_else(|| {
        format!("{node} does not advertise where standbys reach it ([[postgresql]] advertise_address in its agent's configuration)")
    })?;
    hapulse_protocol::parse_host_port(address)
        .map_err(|e| format!("{node}'s advertise_address: {e}"))
}

/// Whether `member` is a standby streaming from the primary at `host:port` (its WAL receiver's
/// `sender_host:sender_port`, the link's `peer`).
pub fn streams_from(member: &LinkMemberView, host: &str, port: u16) -> bool {
    let expected = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    member.role == ReplicationRole::Secondary
        && member.state == LinkState::Streaming
        && (member.peer.as_deref() == Some(expected.as_str())
            || member.peer.as_deref() == Some(format!("{host}:{port}").as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::live::NodeStatus;
    use crate::fleet::view::Health;

    fn member(
        node: &str,
        role: ReplicationRole,
        state: LinkState,
        peer: Option<&str>,
    ) -> LinkMemberView {
        LinkMemberView {
            node_id: node.into(),
            node_status: NodeStatus::Up,
            role,
            state,
            peer: peer.map(str::to_string),
            lag_bytes: Some(0),
            lag_seconds: Some(0.0),
            error: None,
        }
    }

    fn link(kind: ReplicationKind, name: &str, instance: &str) -> ReplicationView {
        ReplicationView {
            link: format!("{}:{name}", kind.as_str()),
            kind,
            name: name.into(),
            health: Health::Healthy,
            reasons: Vec::new(),
            primary: Some("a".into()),
            primaries: vec!["a".into()],
            vrrp_instance: Some(instance.into()),
            vip_holders: vec!["a".into()],
            vip_on_primary: Some(true),
            members: Vec::new(),
        }
    }

    fn cluster(links: Vec<ReplicationView>) -> ClusterView {
        ClusterView {
            name: "c".into(),
            health: Health::Healthy,
            reasons: Vec::new(),
            nodes_up: 0,
            nodes_total: 0,
            nodes: Vec::new(),
            instances: Vec::new(),
            replication: links,
            epoch: 1,
        }
    }

    #[test]
    fn every_tied_link_needs_a_driver_and_one_database_moves() {
        let pg = link(ReplicationKind::Postgresql, "pg", "VI_1");
        let c = cluster(vec![pg.clone()]);
        let (l, d) = moved_link(&c, "VI_1").unwrap().unwrap();
        assert_eq!((l.link.as_str(), d), ("postgresql:pg", Driver::Postgresql));
        assert!(moved_link(&c, "VI_2").unwrap().is_none(), "nothing tied");

        // A DRBD resource or a MySQL link tied to the instance: the move is refused, whatever
        // the order of the keys (drbd:… sorts before postgresql:…).
        for other in [
            link(ReplicationKind::Drbd, "r0", "VI_1"),
            link(ReplicationKind::Mysql, "my", "VI_1"),
        ] {
            let c = cluster(vec![other.clone(), pg.clone()]);
            let why = moved_link(&c, "VI_1").unwrap_err();
            assert!(
                why.starts_with(&format!("{} is tied to VI_1", other.link)),
                "{why}"
            );
            assert!(why.contains("cannot promote"), "{why}");
            // Tied to another instance, it does not hold this one back.
            let mut elsewhere = other;
            elsewhere.vrrp_instance = Some("VI_2".into());
            assert!(moved_link(&cluster(vec![elsewhere, pg.clone()]), "VI_1").is_ok());
        }
        let two = cluster(vec![
            pg.clone(),
            link(ReplicationKind::Postgresql, "pg2", "VI_1"),
        ]);
        assert!(moved_link(&two, "VI_1")
            .unwrap_err()
            .contains("one database per instance"));
    }

    #[test]
    fn only_a_streaming_standby_is_promotable() {
        let d = Driver::Postgresql;
        let ok = member("b", ReplicationRole::Secondary, LinkState::Streaming, None);
        assert!(d.promotable("postgresql:pg", &ok).is_ok());
        for (role, state) in [
            (ReplicationRole::Secondary, LinkState::Disconnected),
            (ReplicationRole::Primary, LinkState::Streaming),
            (ReplicationRole::Unknown, LinkState::Down),
        ] {
            let m = member("b", role, state, None);
            assert!(
                d.promotable("postgresql:pg", &m).is_err(),
                "{role:?} {state:?}"
            );
        }
    }

    #[test]
    fn a_standby_streams_from_the_address_its_primary_advertises() {
        let raw = std::collections::BTreeMap::from([(
            "advertise_address".to_string(),
            "10.0.0.12:5432".to_string(),
        )]);
        let (host, port) = advertised(&raw, "b").unwrap();
        assert_eq!((host.as_str(), port), ("10.0.0.12", 5432));
        assert!(advertised(&Default::default(), "b")
            .unwrap_err()
            .contains("advertise_address"));
        let bad = std::collections::BTreeMap::from([(
            "advertise_address".to_string(),
            "x y:1".to_string(),
        )]);
        assert!(advertised(&bad, "b").is_err());

        let streaming = |peer| {
            member(
                "c",
                ReplicationRole::Secondary,
                LinkState::Streaming,
                Some(peer),
            )
        };
        assert!(streams_from(
            &streaming("10.0.0.12:5432"),
            "10.0.0.12",
            5432
        ));
        assert!(!streams_from(
            &streaming("10.0.0.11:5432"),
            "10.0.0.12",
            5432
        ));
        let cut = member(
            "c",
            ReplicationRole::Secondary,
            LinkState::Disconnected,
            Some("10.0.0.12:5432"),
        );
        assert!(!streams_from(&cut, "10.0.0.12", 5432));
        assert_eq!(link_name("postgresql:pg"), "pg");
    }
}
