//! Replication drivers: how hapulse moves each kind of replication link tied to a VRRP
//! instance, behind one interface the switchover and failover machinery use — which command
//! stops writes on the old primary, which promotes the target, which makes another member a
//! standby of the new primary, and whether a member can be promoted at all.
//!
//! A link is tied to an instance when its probe names the instance (`vrrp_instance`) or, in a
//! cluster with one instance, always. A move of the instance moves every tied link, so it is
//! refused before anything is fenced or stopped when a tied link has no driver that can move
//! it: fencing a master and then finding that nothing can be promoted is worse than doing
//! nothing. PostgreSQL streaming replication, MariaDB GTID replication and DRBD have drivers.
//!
//! The tied links form a stack, bottom-up: at most one DRBD resource, and at most one database
//! on top. A database tied beside a DRBD resource runs on its device (one copy, moved by stopping
//! and starting it); without DRBD, the database replicates itself. The lowest replicated layer
//! carries the data between hosts (the *carrier*: its standbys are the candidates, it is caught
//! up, its standbys follow the new primary). A move demotes top-down and promotes bottom-up.

use hapulse_protocol::{Action, LinkState, ReplicationKind, ReplicationRole};

use crate::fleet::view::{ClusterView, LinkMemberView, ReplicationView};

/// How one kind of replication link is moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// PostgreSQL streaming replication: fast shutdown of the old primary, catch-up to its
    /// shutdown checkpoint, `pg_promote()`, then `postgres_follow` for the others. On a DRBD
    /// device: stopped on the old host, started on the new one.
    Postgresql,
    /// A DRBD resource: `drbdadm secondary` on the old host, wait until the target's disk is
    /// `UpToDate` with nothing out of sync, `drbdadm primary` on the target (its agent checks
    /// the disk first). Secondaries follow the new primary by themselves.
    Drbd,
    /// MariaDB GTID replication: `read_only` on the old primary (its final `gtid_binlog_pos`
    /// reported), `MASTER_GTID_WAIT` on the target, then promotion (apply everything received,
    /// `RESET SLAVE ALL`, `read_only` off), then `CHANGE MASTER TO … MASTER_USE_GTID=slave_pos`
    /// for the others. Never on a DRBD device.
    Mysql,
}

/// One layer of a stack: a tied link, its driver, and whether it runs on the DRBD device below
/// it (then it is stopped and started, not replicated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Link key (`postgresql:pg`, `drbd:r0`).
    pub link: String,
    /// Its driver.
    pub driver: Driver,
    /// A database on the DRBD device of the layer below.
    pub on_drbd: bool,
}

impl Driver {
    /// The driver of links of `kind`.
    pub fn of(kind: ReplicationKind) -> Driver {
        match kind {
            ReplicationKind::Postgresql => Driver::Postgresql,
            ReplicationKind::Drbd => Driver::Drbd,
            ReplicationKind::Mysql => Driver::Mysql,
        }
    }

    /// The command that stops writes on the old primary of link `name` (its final position in
    /// the result's data, where the kind has one).
    pub fn stop(self, name: &str) -> Action {
        match self {
            Driver::Postgresql => Action::PostgresStop { link: name.into() },
            Driver::Drbd => Action::DrbdRole {
                resource: name.into(),
                role: ReplicationRole::Secondary,
            },
            Driver::Mysql => Action::MysqlStop { link: name.into() },
        }
    }

    /// The command that undoes [`Driver::stop`] on the old primary of link `name` when nothing
    /// was promoted: the server started again, the resource made Primary again, `read_only`
    /// off.
    pub fn resume(self, name: &str) -> Action {
        match self {
            Driver::Postgresql => Action::PostgresStart { link: name.into() },
            Driver::Drbd | Driver::Mysql => self.promote(name, false),
        }
    }

    /// The command that promotes the target's member of link `name` (starts it, for a database
    /// on DRBD).
    pub fn promote(self, name: &str, on_drbd: bool) -> Action {
        match (self, on_drbd) {
            (Driver::Postgresql, false) => Action::PostgresPromote { link: name.into() },
            (Driver::Postgresql, true) => Action::PostgresStart { link: name.into() },
            (Driver::Drbd, _) => Action::DrbdRole {
                resource: name.into(),
                role: ReplicationRole::Primary,
            },
            (Driver::Mysql, _) => Action::MysqlPromote { link: name.into() },
        }
    }

    /// The command that makes a member of link `name` a standby of the primary reachable at
    /// `host:port` (re-points a running standby, rejoins a stopped old primary); None when the
    /// kind's secondaries follow by themselves (DRBD).
    pub fn follow(self, name: &str, primary: Option<&(String, u16)>) -> Option<Action> {
        match (self, primary) {
            (Driver::Postgresql, Some((host, port))) => Some(Action::PostgresFollow {
                link: name.into(),
                primary_host: host.clone(),
                primary_port: *port,
            }),
            (Driver::Mysql, Some((host, port))) => Some(Action::MysqlFollow {
                link: name.into(),
                primary_host: host.clone(),
                primary_port: *port,
            }),
            _ => None,
        }
    }

    /// Whether following needs the new primary's advertised address.
    pub fn needs_address(self) -> bool {
        self != Driver::Drbd
    }

    /// Whether `member` follows the primary at `primary` (its advertised address, for the kinds
    /// that need one): a connected, up-to-date secondary.
    pub fn follows(self, member: &LinkMemberView, primary: Option<&(String, u16)>) -> bool {
        match (self, primary) {
            (Driver::Postgresql | Driver::Mysql, Some((host, port))) => {
                streams_from(member, host, *port)
            }
            (Driver::Postgresql | Driver::Mysql, None) => false,
            (Driver::Drbd, _) => {
                member.role == ReplicationRole::Secondary && member.state == LinkState::Streaming
            }
        }
    }

    /// Whether `member` can be promoted now; Err says why not. A streaming standby of
    /// PostgreSQL (only one receives the WAL the old primary's shutdown sends); a connected
    /// DRBD Secondary whose disk is UpToDate (what the probe reports as streaming).
    pub fn promotable(self, link: &str, member: &LinkMemberView) -> Result<(), String> {
        if member.role == ReplicationRole::Secondary && member.state == LinkState::Streaming {
            return Ok(());
        }
        let must = match self {
            Driver::Postgresql => "a streaming standby",
            Driver::Mysql => "a replica with both threads running",
            Driver::Drbd => "a connected Secondary with an UpToDate disk",
        };
        Err(format!(
            "{} is {} and {} on {link}: it must be {must}",
            member.node_id,
            member.role.as_str(),
            member.state.as_str()
        ))
    }
}

/// The links of `c` tied to `instance`, by key.
pub fn tied_links<'c>(c: &'c ClusterView, instance: &str) -> Vec<&'c ReplicationView> {
    c.replication
        .iter()
        .filter(|r| r.vrrp_instance.as_deref() == Some(instance))
        .collect()
}

/// The stack a move of `instance` carries, bottom-up (empty: no link is tied), or why it cannot
/// be moved: the tied links do not form a stack hapulse moves (two DRBD resources, two
/// databases, MariaDB on a DRBD device).
pub fn stack(c: &ClusterView, instance: &str) -> Result<Vec<Layer>, String> {
    let tied = tied_links(c, instance);
    let mut drbd: Option<&ReplicationView> = None;
    let mut database: Option<(&ReplicationView, Driver)> = None;
    for link in &tied {
        let driver = Driver::of(link.kind);
        let slot_taken = match driver {
            Driver::Drbd => drbd.replace(link).map(|l| l.link.clone()),
            _ => database
                .replace((link, driver))
                .map(|(l, _)| l.link.clone()),
        };
        if let Some(other) = slot_taken {
            return Err(format!(
                "{other} and {} are both tied to {instance}; hapulse moves one DRBD resource and one database per instance",
                link.link
            ));
        }
    }
    if let Some(why) = database
        .filter(|(_, d)| *d == Driver::Mysql)
        .and_then(|(l, _)| l.members.iter().find_map(|m| m.unmovable.clone()))
    {
        return Err(format!(
            "{} is tied to {instance} and {why}",
            database.map_or("", |(l, _)| l.link.as_str())
        ));
    }
    if let (Some((l, Driver::Mysql)), Some(_)) = (database, drbd) {
        return Err(format!(
            "{} is tied to {instance} beside a DRBD resource: hapulse starts and stops only PostgreSQL on a DRBD device",
            l.link
        ));
    }
    let mut layers: Vec<Layer> = drbd
        .map(|l| Layer {
            link: l.link.clone(),
            driver: Driver::Drbd,
            on_drbd: false,
        })
        .into_iter()
        .collect();
    if let Some((l, driver)) = database {
        layers.push(Layer {
            link: l.link.clone(),
            driver,
            on_drbd: drbd.is_some(),
        });
    }
    Ok(layers)
}

/// The carrier of a move of `instance` (the lowest layer of its [`stack`]: the link whose
/// standbys hold the data) and its driver; None when no link is tied. Err as [`stack`].
pub fn moved_link<'c>(
    c: &'c ClusterView,
    instance: &str,
) -> Result<Option<(&'c ReplicationView, Driver)>, String> {
    let layers = stack(c, instance)?;
    Ok(layers.first().and_then(|bottom| {
        c.replication
            .iter()
            .find(|r| r.link == bottom.link)
            .map(|r| (r, bottom.driver))
    }))
}

/// A link's name without its kind (`pg` for `postgresql:pg`), as the agents' actions name it.
pub fn link_name(key: &str) -> &str {
    key.split_once(':').map_or(key, |(_, n)| n)
}

/// The address a primary advertises to its standbys (`advertise_address` of its `[[postgresql]]`
/// or `[[mysql]]` probe, raw field `advertise_address`), as host and port; Err says why there is
/// none.
pub fn advertised(
    raw: &std::collections::BTreeMap<String, String>,
    node: &str,
) -> Result<(String, u16), String> {
    let address = raw.get("advertise_address").ok_or_else(|| {
        format!("{node} does not advertise where standbys reach it (advertise_address of the link's probe in its agent's configuration)")
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
            unmovable: None,
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
            pacemaker: None,
            sync_groups: Vec::new(),
            virtual_servers: Vec::new(),
        }
    }

    #[test]
    fn one_database_and_one_drbd_resource_move_per_instance() {
        let pg = link(ReplicationKind::Postgresql, "pg", "VI_1");
        let c = cluster(vec![pg.clone()]);
        let (l, d) = moved_link(&c, "VI_1").unwrap().unwrap();
        assert_eq!((l.link.as_str(), d), ("postgresql:pg", Driver::Postgresql));
        assert!(moved_link(&c, "VI_2").unwrap().is_none(), "nothing tied");
        let my = link(ReplicationKind::Mysql, "db", "VI_1");
        let only_mysql = cluster(vec![my.clone()]);
        let (l, d) = moved_link(&only_mysql, "VI_1").unwrap().unwrap();
        assert_eq!((l.link.as_str(), d), ("mysql:db", Driver::Mysql));

        // Two databases tied to one instance: refused, whatever the order of the keys.
        for other in [my.clone(), link(ReplicationKind::Mysql, "a", "VI_1")] {
            let c = cluster(vec![other.clone(), pg.clone()]);
            let why = moved_link(&c, "VI_1").unwrap_err();
            assert!(why.contains("are both tied to VI_1"), "{why}");
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
        // MariaDB is not started and stopped on a DRBD device.
        let r0 = link(ReplicationKind::Drbd, "r0", "VI_1");
        let why = moved_link(&cluster(vec![r0.clone(), my]), "VI_1").unwrap_err();
        assert!(why.contains("beside a DRBD resource"), "{why}");
        let layers = stack(&cluster(vec![pg, r0]), "VI_1").unwrap();
        assert_eq!(
            layers
                .iter()
                .map(|l| (l.link.as_str(), l.on_drbd))
                .collect::<Vec<_>>(),
            [("drbd:r0", false), ("postgresql:pg", true)]
        );
    }

    #[test]
    fn a_mysql_server_that_is_not_mariadb_is_never_moved() {
        let mut my = link(ReplicationKind::Mysql, "db", "VI_1");
        let mut replica = member(
            "b",
            ReplicationRole::Secondary,
            LinkState::Streaming,
            Some("10.0.0.11:3306"),
        );
        my.members = vec![replica.clone()];
        assert!(moved_link(&cluster(vec![my.clone()]), "VI_1").is_ok());
        replica.unmovable = Some(
            "b runs MySQL 8.0.36: hapulse observes MySQL replication and moves only MariaDB's"
                .into(),
        );
        my.members = vec![replica];
        let why = moved_link(&cluster(vec![my]), "VI_1").unwrap_err();
        assert!(
            why.starts_with("mysql:db is tied to VI_1 and b runs MySQL 8.0.36"),
            "{why}"
        );
    }

    #[test]
    fn each_driver_stops_promotes_resumes_and_follows_with_its_own_commands() {
        let at = ("10.0.0.12".to_string(), 3306);
        assert_eq!(Driver::Mysql.stop("db").kind(), "mysql_stop");
        assert_eq!(Driver::Mysql.promote("db", false).kind(), "mysql_promote");
        assert_eq!(Driver::Mysql.resume("db").kind(), "mysql_promote");
        assert_eq!(Driver::Postgresql.resume("pg").kind(), "postgres_start");
        assert_eq!(Driver::Drbd.resume("r0").kind(), "drbd_role");
        assert_eq!(
            Driver::Mysql.follow("db", Some(&at)),
            Some(Action::MysqlFollow {
                link: "db".into(),
                primary_host: "10.0.0.12".into(),
                primary_port: 3306
            })
        );
        assert_eq!(Driver::Mysql.follow("db", None), None);
        assert_eq!(Driver::Drbd.follow("r0", Some(&at)), None);
        assert!(Driver::Mysql.needs_address() && !Driver::Drbd.needs_address());
    }

    #[test]
    fn only_a_streaming_standby_is_promotable() {
        for d in [Driver::Postgresql, Driver::Drbd, Driver::Mysql] {
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
