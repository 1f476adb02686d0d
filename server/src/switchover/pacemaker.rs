//! Switchover of a Pacemaker resource: one `pacemaker_move` command (the agent runs
//! `crm_resource --move`, waits until the resource runs on the node, then `--clear`) to one
//! member of the cluster, under the cluster's current epoch, so a later switchover supersedes it
//! like any other command. Pacemaker itself stops and starts the resource; hapulse asks and
//! records.

use hapulse_protocol::{valid_pacemaker_name, Action, PacemakerReport};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::audit::Audit;
use crate::access::auth::Principal;
use crate::agents::commands::{self, NewCommand};
use crate::fleet::live::NodeStatus;
use crate::fleet::pacemaker::PacemakerClusterView;
use crate::refusal::Refusal;
use crate::state::AppState;
use crate::switchover::error::SwitchoverError;

/// Body of `POST /api/v1/clusters/{cluster}/pacemaker/move`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PacemakerMoveRequest {
    /// The resource (`crm_mon`'s resource id, or a group's id).
    pub resource: String,
    /// The Pacemaker node to run it on.
    pub node: String,
    /// Why (kept in the audit log), one line.
    pub reason: String,
}

/// The answer to an accepted move (HTTP 202): the command is queued.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PacemakerMoveAccepted {
    /// The command's id.
    pub command_id: Uuid,
    /// The hapulse node whose agent runs it.
    pub node_id: String,
    /// The cluster's epoch the command carries.
    pub epoch: u64,
}

/// The hapulse node that should run a move of `resource` to `node` in `p`: a member that is up,
/// connected and in a partition with quorum, the DC's own first (the `reported_by` member). 409
/// when there is none, 404 when that member does not know the resource, 409 when `node` cannot
/// take it (not a node, offline, standby, or in maintenance).
pub fn pick_member<'a>(
    p: &'a PacemakerClusterView,
    resource: &str,
    node: &str,
) -> Result<(&'a str, &'a PacemakerReport), Refusal> {
    let quorate = |m: &&crate::fleet::pacemaker::PacemakerMemberView| {
        m.node_status == NodeStatus::Up && m.connected && m.with_quorum
    };
    let member = p
        .members
        .iter()
        .filter(quorate)
        .find(|m| Some(&m.node_id) == p.reported_by.as_ref())
        .or_else(|| p.members.iter().find(quorate))
        .ok_or_else(|| {
            Refusal::conflict(
                "no_quorate_member",
                "no member that is up reports a Pacemaker partition with quorum: nothing can move",
            )
        })?;
    let status = p
        .status
        .as_ref()
        .filter(|_| p.reported_by.as_ref() == Some(&member.node_id))
        .ok_or_else(|| Refusal::conflict("no_quorate_member", "no status from a quorate member"))?;
    if !status
        .resources
        .iter()
        .any(|r| r.id == resource || r.parent.as_deref() == Some(resource))
    {
        return Err(Refusal::not_found(format!(
            "Pacemaker resource {resource:?}"
        )));
    }
    match status.node(node) {
        None => Err(Refusal::not_found(format!("Pacemaker node {node:?}"))),
        Some(n) if !n.online || n.standby || n.maintenance => Err(Refusal::conflict(
            "target_cannot_run",
            format!(
                "{node} cannot take resources: {}",
                if !n.online {
                    "offline"
                } else if n.standby {
                    "in standby"
                } else {
                    "in maintenance"
                }
            ),
        )),
        Some(_) => Ok((member.node_id.as_str(), status)),
    }
}

/// Queues a `pacemaker_move` of `req.resource` to `req.node` in `cluster` for `me`, under the
/// cluster's epoch; audited. 400 for a bad name or reason (naming the field), 404 for an unknown
/// cluster, resource or node, 409 when the cluster is not a Pacemaker cluster or nothing can
/// move ([`pick_member`]).
pub async fn request_move(
    state: &AppState,
    cluster: &str,
    req: &PacemakerMoveRequest,
    me: &Principal,
) -> Result<PacemakerMoveAccepted, SwitchoverError> {
    for (field, value) in [("resource", &req.resource), ("node", &req.node)] {
        if !valid_pacemaker_name(value) {
            return Err(SwitchoverError::from(Refusal::invalid(
                "invalid_body",
                field,
                "1-256 characters of A-Z a-z 0-9 . _ - :, not starting with -",
            )));
        }
    }
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > 1000 || reason.chars().any(char::is_control) {
        return Err(SwitchoverError::from(Refusal::invalid(
            "invalid_body",
            "reason",
            "say why, in at most 1000 bytes, on one line",
        )));
    }
    let view = crate::switchover::plan::cluster_view(state, cluster).await?;
    let p = view.pacemaker.as_ref().ok_or_else(|| {
        Refusal::conflict(
            "not_pacemaker",
            format!("{cluster} reports no Pacemaker cluster"),
        )
    })?;
    let (member, _) = pick_member(p, &req.resource, &req.node)?;
    let mut tx = state.db.begin().await?;
    let command_id = commands::insert(
        &mut tx,
        &NewCommand {
            cluster: cluster.to_string(),
            node_id: member.to_string(),
            epoch: view.epoch,
            action: Action::PacemakerMove {
                resource: req.resource.clone(),
                node: req.node.clone(),
            },
            deadline: std::time::Duration::from_secs(60),
            switchover_id: None,
            requested_by: me.name.clone(),
        },
    )
    .await?;
    Audit::by(
        me,
        "pacemaker_move",
        &format!("{cluster}/{}", req.resource),
        "accepted",
    )
    .reason(reason)
    .detail(serde_json::json!({ "node": req.node, "member": member, "epoch": view.epoch }))
    .record(&mut *tx)
    .await?;
    tx.commit().await?;
    state.commands.wake(member);
    Ok(PacemakerMoveAccepted {
        command_id,
        node_id: member.to_string(),
        epoch: view.epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::pacemaker::PacemakerMemberView;
    use hapulse_protocol::{PacemakerNode, PacemakerResource};

    fn member(id: &str, status: NodeStatus, quorum: bool) -> PacemakerMemberView {
        PacemakerMemberView {
            node_id: id.into(),
            node_status: status,
            local_node: None,
            connected: true,
            error: None,
            dc: Some("h1".into()),
            with_quorum: quorum,
            online: vec!["h1".into(), "h2".into()],
        }
    }

    fn view(members: Vec<PacemakerMemberView>, reported_by: &str) -> PacemakerClusterView {
        let node = |name: &str, standby: bool| PacemakerNode {
            name: name.into(),
            online: true,
            standby,
            maintenance: false,
            unclean: false,
            resources_running: 0,
        };
        PacemakerClusterView {
            verdicts: Vec::new(),
            members,
            reported_by: Some(reported_by.into()),
            status: Some(PacemakerReport {
                connected: true,
                error: None,
                local_node: Some("h1".into()),
                dc: Some("h1".into()),
                with_quorum: true,
                nodes: vec![node("h1", false), node("h2", false), node("h3", true)],
                resources: vec![PacemakerResource {
                    id: "ip".into(),
                    parent: Some("web".into()),
                    agent: "ocf:heartbeat:IPaddr2".into(),
                    role: "Started".into(),
                    target_role: None,
                    active: true,
                    failed: false,
                    managed: true,
                    blocked: false,
                    nodes: vec!["h1".into()],
                }],
                resources_omitted: 0,
                failures: Vec::new(),
                failures_omitted: 0,
            }),
        }
    }

    #[test]
    fn the_dcs_member_moves_a_known_resource_to_a_node_that_can_run_it() {
        let v = view(
            vec![
                member("db1", NodeStatus::Up, true),
                member("db2", NodeStatus::Up, true),
            ],
            "db1",
        );
        assert_eq!(pick_member(&v, "ip", "h2").unwrap().0, "db1");
        assert_eq!(pick_member(&v, "web", "h2").unwrap().0, "db1", "a group");
        let code = |r: Result<(&str, &PacemakerReport), Refusal>| r.unwrap_err().code;
        assert_eq!(code(pick_member(&v, "db", "h2")), "not_found");
        assert_eq!(code(pick_member(&v, "ip", "h9")), "not_found");
        assert_eq!(code(pick_member(&v, "ip", "h3")), "target_cannot_run");
    }

    #[test]
    fn nothing_moves_without_a_quorate_member_that_is_up() {
        let down = view(
            vec![
                member("db1", NodeStatus::Down, true),
                member("db2", NodeStatus::Up, false),
            ],
            "db1",
        );
        assert_eq!(
            pick_member(&down, "ip", "h2").unwrap_err().code,
            "no_quorate_member"
        );
    }
}
