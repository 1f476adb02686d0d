//! Positions asked at decision time. Before the arbiter picks a candidate for a failover (or
//! proposes one), it asks every standby that is up for a fresh look at its replication links (the
//! agent's read-only `report_positions` command) and waits at most `failover.position_wait`
//! (default 1 s) for the answers. A candidate that answers is ranked on the position it gives
//! (`receive_lsn`); one that stays silent is ranked on its last report, and the evidence says
//! which ([`Witness::position_fresh`]). The answers serve for [`ANSWERS_KEEP`]; then the
//! candidates are asked again, the previous answers serving until the new ones are in (a verdict
//! that stands — a proposal waiting for a person — does not flicker to "wait").

use std::collections::BTreeMap;
use std::time::Duration;

use hapulse_protocol::Action;
use uuid::Uuid;

use crate::agents::commands::{self, NewCommand};
use crate::failover::evidence::{Gathered, Witness};
use crate::fleet::live::NodeStatus;
use crate::state::AppState;

/// How long the answers of one asking serve before the candidates are asked again.
pub const ANSWERS_KEEP: Duration = Duration::from_secs(10);

/// One asking of a cluster's candidates.
#[derive(Debug)]
pub struct Asked {
    /// When the commands were queued.
    at: tokio::time::Instant,
    /// The command sent to each candidate: (node, command id).
    commands: Vec<(String, Uuid)>,
    /// Each answering node's receive position (`0/3045B78`), once every candidate answered or
    /// the wait ended; a silent node is absent.
    answers: Option<BTreeMap<String, String>>,
    /// The answers of the asking before, which serve while this one's are awaited.
    previous: Option<BTreeMap<String, String>>,
}

/// Where an asking stands.
pub enum Progress {
    /// Answers are still awaited.
    Waiting,
    /// The asking is over: apply these answers.
    Answered(BTreeMap<String, String>),
}

/// The standbys of `g` that are up: those asked.
fn asked_nodes(g: &Gathered) -> Vec<&Witness> {
    g.witnesses
        .iter()
        .filter(|w| w.standby && w.status == NodeStatus::Up && !w.in_maintenance)
        .collect()
}

/// Asks the up standbys of `g` for their positions (under the cluster's current epoch, with a
/// deadline of `wait`, in the name of `actor`), `before` being the asking this one renews; None
/// when there is nobody to ask.
pub async fn ask(
    state: &AppState,
    cluster: &str,
    g: &Gathered,
    wait: Duration,
    actor: &str,
    before: Option<Asked>,
) -> Result<Option<Asked>, sqlx::Error> {
    let nodes = asked_nodes(g);
    if nodes.is_empty() {
        return Ok(None);
    }
    let mut tx = state.db.begin().await?;
    let epoch: i64 = sqlx::query_scalar("SELECT epoch FROM clusters WHERE name = $1")
        .bind(cluster)
        .fetch_one(&mut *tx)
        .await?;
    let mut commands = Vec::with_capacity(nodes.len());
    for w in &nodes {
        let id = commands::insert(
            &mut tx,
            &NewCommand {
                cluster: cluster.to_string(),
                node_id: w.node_id.clone(),
                epoch: epoch as u64,
                action: Action::ReportPositions {},
                deadline: wait.max(Duration::from_secs(1)),
                switchover_id: None,
                requested_by: actor.into(),
            },
        )
        .await?;
        commands.push((w.node_id.clone(), id));
    }
    tx.commit().await?;
    for (node, _) in &commands {
        state.commands.wake(node);
    }
    Ok(Some(Asked {
        at: tokio::time::Instant::now(),
        commands,
        answers: None,
        previous: before.and_then(|b| b.answers),
    }))
}

impl Asked {
    /// The answers' age has passed [`ANSWERS_KEEP`] (counted from the end of the wait): ask
    /// again.
    pub fn expired(&self, wait: Duration) -> bool {
        self.at.elapsed() > wait + ANSWERS_KEEP
    }

    /// Reads the answers of the `link` (`postgresql:pg`) so far; the asking is over once every
    /// candidate answered or `wait` has passed since it began.
    pub async fn progress(
        &mut self,
        db: &sqlx::PgPool,
        link: &str,
        wait: Duration,
    ) -> Result<Progress, sqlx::Error> {
        if let Some(answers) = &self.answers {
            return Ok(Progress::Answered(answers.clone()));
        }
        let ids: Vec<Uuid> = self.commands.iter().map(|(_, id)| *id).collect();
        /// A command's node, state and result data.
        type Row = (String, String, sqlx::types::Json<BTreeMap<String, String>>);
        let rows: Vec<Row> =
            sqlx::query_as("SELECT node_id, state, result_data FROM commands WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(db)
                .await?;
        let ended = rows
            .iter()
            .filter(|(_, state, _)| state != "pending" && state != "delivered")
            .count();
        let answers: BTreeMap<String, String> = rows
            .into_iter()
            .filter(|(_, state, _)| state == "succeeded")
            .filter_map(|(node, _, data)| {
                let lsn = data.0.get(&format!("{link}.receive_lsn"))?.clone();
                Some((node, lsn))
            })
            .collect();
        if ended < self.commands.len() && self.at.elapsed() < wait {
            return Ok(match &self.previous {
                Some(previous) => Progress::Answered(previous.clone()),
                None => Progress::Waiting,
            });
        }
        self.answers = Some(answers.clone());
        Ok(Progress::Answered(answers))
    }

    /// Puts the answers into the evidence: an asked candidate that answered gets the position
    /// it gave (and what it lacks of the leader's last position counted from it) and
    /// `position_fresh: true`; one that did not keeps its last report, marked false.
    pub fn apply(&self, g: &mut Gathered, answers: &BTreeMap<String, String>) {
        let current = g.leader_current_lsn.clone();
        for w in &mut g.witnesses {
            if !self.commands.iter().any(|(node, _)| *node == w.node_id) {
                continue;
            }
            match answers.get(&w.node_id) {
                Some(lsn) => {
                    w.unreceived_bytes = crate::failover::evidence::unreceived(
                        current.as_deref(),
                        Some(lsn.as_str()),
                    )
                    .or(w.unreceived_bytes);
                    w.receive_lsn = Some(lsn.clone());
                    w.position_fresh = Some(true);
                }
                None => w.position_fresh = Some(false),
            }
        }
    }
}
