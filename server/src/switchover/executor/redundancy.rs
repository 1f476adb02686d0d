//! The steps that bring a cluster back to full redundancy after a move: every other standby of
//! the moved link follows the new primary (`repoint_standbys`), and the stopped old primary
//! rejoins as one more standby (`rejoin_old_primary`). Each waits until the server sees the
//! standbys streaming from the new primary's advertised address with less than 1 MiB to
//! replay. A failure fails the step, not the move ([`StepName::restores_redundancy`]); an old
//! primary that cannot rejoin is kept fenced, so keepalived never gives the VIP to a host
//! without a database that follows the primary.

use std::time::Duration;

use chrono::Utc;
use hapulse_protocol::Action;

use super::{Run, StepOutcome};
use crate::fleet::live::NodeStatus;
use crate::fleet::view;
use crate::switchover::drivers::{self, Layer};

/// Where a primary's standbys reach it: host and port.
type Address = (String, u16);

/// A standby counts as redundant again below this many bytes to replay.
const CAUGHT_UP_BYTES: u64 = 1 << 20;

impl Run<'_> {
    /// Whether the cluster rebuilds its standbys after a move (`failover.clusters.C.auto_rejoin`,
    /// on by default and for clusters without a policy).
    fn auto_rejoin(&self) -> bool {
        self.state
            .settings()
            .failover
            .clusters
            .get(&self.sw.cluster)
            .is_none_or(|p| p.auto_rejoin)
    }

    /// Why a redundancy step is skipped when automatic rejoin is off.
    fn rejoin_off(&self) -> StepOutcome {
        StepOutcome::Skipped(format!(
            "automatic rejoin is off (failover.clusters.{}.auto_rejoin = false): rebuild the standbys by hand",
            self.sw.cluster
        ))
    }

    /// The running step's link name and layer, and the new primary's advertised address from
    /// its last report, for the kinds whose standbys need one to follow.
    fn follow_target(&self) -> Result<(String, Layer, Option<Address>), String> {
        let (name, layer) = self.layer()?;
        if !layer.driver.needs_address() {
            return Ok((name, layer, None));
        }
        let target = &self.sw.target_node;
        let live = self.state.live();
        let link = live
            .nodes
            .get(target)
            .and_then(|n| n.link(&layer.link))
            .ok_or_else(|| format!("{target} does not report {}", layer.link))?;
        let address = drivers::advertised(&link.raw, target)?;
        Ok((name, layer, Some(address)))
    }

    /// Waits (at most `limit`) until each of `nodes` follows the new primary (`layer`'s driver
    /// decides: streaming from `address`, or a connected up-to-date Secondary) with less than
    /// 1 MiB to replay; Err names those that do not, and what they report.
    async fn until_streaming(
        &self,
        nodes: &[String],
        layer: &Layer,
        address: Option<&Address>,
        limit: Duration,
    ) -> Result<(), String> {
        let key = layer.link.as_str();
        let redundant = |c: &view::ClusterView, node: &str| {
            Self::link_member(c, key, node).is_some_and(|m| {
                layer.driver.follows(m, address) && m.lag_bytes.is_some_and(|b| b < CAUGHT_UP_BYTES)
            })
        };
        let whom = address.map_or(self.sw.target_node.clone(), |(h, p)| format!("{h}:{p}"));
        let what = format!("{} following {whom}", nodes.join(", "));
        let waited = self
            .until(limit, &what, |c| nodes.iter().all(|n| redundant(c, n)))
            .await;
        waited.map_err(|e| {
            let live = self.state.live();
            let now = view::cluster_view(&live, &self.sw.cluster, Utc::now());
            let report: Vec<String> = nodes
                .iter()
                .filter(|n| !now.as_ref().is_some_and(|c| redundant(c, n)))
                .map(
                    |n| match now.as_ref().and_then(|c| Self::link_member(c, key, n)) {
                        Some(m) => format!(
                            "{n} is {} and {} (from {}, {} bytes to replay)",
                            m.role.as_str(),
                            m.state.as_str(),
                            m.peer.as_deref().unwrap_or("nobody"),
                            m.lag_bytes.map_or("?".into(), |b| b.to_string())
                        ),
                        None => format!("{n} does not report {key}"),
                    },
                )
                .collect();
            format!("{e}: {}", report.join("; "))
        })
    }

    /// `repoint_standbys`: every other standby of the link that is up follows the new primary;
    /// those already streaming from it are left alone, those that are down are named.
    pub(super) async fn repoint_standbys(&mut self) -> Result<StepOutcome, String> {
        if !self.auto_rejoin() {
            return Ok(self.rejoin_off());
        }
        let (name, layer, address) = self.follow_target()?;
        let (up, down): (Vec<view::LinkMemberView>, Vec<view::LinkMemberView>) = {
            let live = self.state.live();
            view::cluster_view(&live, &self.sw.cluster, Utc::now())
                .and_then(|c| c.replication.into_iter().find(|r| r.link == layer.link))
                .map(|r| r.members)
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.node_id != self.sw.target_node && m.node_id != self.sw.old_master)
                .partition(|m| m.node_status == NodeStatus::Up)
        };
        let mut said = Vec::new();
        let mut failed = Vec::new();
        let mut following = Vec::new();
        for m in &up {
            if layer.driver.follows(m, address.as_ref()) {
                said.push(format!(
                    "{} follows {} already",
                    m.node_id, self.sw.target_node
                ));
                following.push(m.node_id.clone());
                continue;
            }
            let Some(follow) = layer.driver.follow(&name, address.as_ref()) else {
                said.push(format!("{} follows by itself ({})", m.node_id, layer.link));
                following.push(m.node_id.clone());
                continue;
            };
            match self.command(&m.node_id, follow).await {
                Ok((message, _)) => {
                    said.push(message);
                    following.push(m.node_id.clone());
                }
                Err((message, _)) => failed.push(message),
            }
        }
        for m in &down {
            said.push(format!(
                "{} is {}: not re-pointed",
                m.node_id,
                m.node_status.as_str()
            ));
        }
        if following.is_empty() && failed.is_empty() {
            return Ok(StepOutcome::Skipped(if said.is_empty() {
                "no other standby".into()
            } else {
                said.join("; ")
            }));
        }
        let streaming = self
            .until_streaming(
                &following,
                &layer,
                address.as_ref(),
                Duration::from_secs(60),
            )
            .await;
        match (streaming, failed.is_empty()) {
            (Ok(()), true) => Ok(StepOutcome::Done(said.join("; "))),
            (Ok(()), false) => Err(failed.join("; ")),
            (Err(e), _) => Err(failed.into_iter().chain([e]).collect::<Vec<_>>().join("; ")),
        }
    }

    /// `rejoin_old_primary`: the stopped old primary follows the new one (rewound or re-cloned,
    /// then started by its agent) and streams; if it does not, it is kept fenced.
    pub(super) async fn rejoin_old_primary(&mut self) -> Result<StepOutcome, String> {
        if !self.auto_rejoin() {
            return Ok(self.rejoin_off());
        }
        let old = self.sw.old_master.clone();
        let rejoined = async {
            let (name, layer, address) = self.follow_target()?;
            let message = match layer.driver.follow(&name, address.as_ref()) {
                Some(follow) => self.command(&old, follow).await.map_err(|(m, _)| m)?.0,
                None => format!("{old} follows by itself ({})", layer.link),
            };
            let old = std::slice::from_ref(&old);
            self.until_streaming(old, &layer, address.as_ref(), Duration::from_secs(120))
                .await?;
            Ok::<_, String>(message)
        }
        .await;
        match rejoined {
            Ok(message) => Ok(StepOutcome::Done(format!(
                "{message}; {old} follows {}",
                self.sw.target_node
            ))),
            Err(why) => Err(format!("{why}. {}", self.keep_fenced(&old, &why).await)),
        }
    }

    /// Keeps `node`, which could not rejoin, fenced (recorded, and its instance fenced now);
    /// says how that went.
    async fn keep_fenced(&self, node: &str, why: &str) -> String {
        let reason = format!(
            "it could not rejoin as a standby after {} {}: {why}",
            self.sw.kind, self.sw.id
        );
        let kept = async {
            let mut tx = self.state.db.begin().await?;
            crate::failover::fences::keep_fenced(
                &mut tx,
                &self.sw.cluster,
                node,
                &self.sw.instance,
                &reason,
            )
            .await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = kept {
            return format!("{node} could NOT be kept fenced ({e})");
        }
        let fence = Action::Fence {
            instance: self.sw.instance.clone(),
            fenced: true,
        };
        match self.command(node, fence).await {
            Ok(_) => format!("{node} is kept fenced until it rejoins and a person lifts the fence"),
            Err((e, _)) => format!("{node} is kept fenced; the arbiter fences it again (now: {e})"),
        }
    }
}
