//! The server's command queue (`agents::commands` in the real server): every command durable
//! with its epoch and deadline, delivered when its agent polls (host on, agent alive, link to
//! the server whole), its result recorded when it comes back. A resend after a lost result (a
//! seeded chance) reaches the agent again, which must answer with its first result.

use hapulse_protocol::{Action, CommandOutcome, CommandResult};

use super::rng::Rng;
use super::world::World;

/// One command.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// Unique id.
    pub id: u64,
    /// The host that must run it.
    pub node: usize,
    /// The cluster's epoch when it was issued.
    pub epoch: u64,
    /// What to do.
    pub action: Action,
    /// It must not start after this.
    pub deadline: u64,
    /// The agent's answer, once it came back.
    pub result: Option<CommandResult>,
}

/// Every command issued.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    /// Commands, by id order.
    pub cmds: Vec<Cmd>,
    /// Per mille: a delivered command's result is lost and the command sent again.
    pub resend_per_mille: u64,
}

impl Outbox {
    /// Queues `action` for `node` under `epoch`, valid for `deadline_ms`; its id.
    pub fn issue(
        &mut self,
        now: u64,
        node: usize,
        epoch: u64,
        action: Action,
        deadline_ms: u64,
    ) -> u64 {
        let id = self.cmds.len() as u64 + 1;
        self.cmds.push(Cmd {
            id,
            node,
            epoch,
            action,
            deadline: now + deadline_ms,
            result: None,
        });
        id
    }

    /// The result of command `id`, once back.
    pub fn result(&self, id: u64) -> Option<&CommandResult> {
        self.cmds.get(id as usize - 1)?.result.as_ref()
    }

    /// Delivers every open command whose agent can be reached, in id order; the agent runs it.
    /// Returns an at-most-once violation, if an agent ran a command twice.
    pub fn deliver(&mut self, world: &mut World, rng: &mut Rng) -> Option<String> {
        for c in self.cmds.iter_mut().filter(|c| c.result.is_none()) {
            if !world.server_link(c.node) {
                continue;
            }
            let first = world.execute(c.node, c.id, c.epoch, &c.action, c.deadline);
            if rng.chance(self.resend_per_mille) {
                let count = world.trace.len();
                let again = world.execute(c.node, c.id, c.epoch, &c.action, c.deadline);
                if again != first || world.trace.len() != count {
                    return Some(format!(
                        "command #{} ran twice or answered differently",
                        c.id
                    ));
                }
            }
            if first.outcome != CommandOutcome::Succeeded {
                world.log(format!(
                    "{} answers #{}: {:?} {}",
                    world.hosts[c.node].id, c.id, first.outcome, first.message
                ));
            }
            c.result = Some(first);
        }
        None
    }
}
