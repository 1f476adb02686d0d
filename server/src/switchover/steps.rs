//! The kinds of step a run is made of. Plans and stored runs keep a step's name as its string
//! ([`StepName::as_str`], the `name` of a stored or serialized [`Step`](super::plan::Step)), so
//! rows written by an older or newer server read the same; the executor turns it back with
//! [`StepName::parse`] and refuses a name it does not know rather than guess.

use std::time::Duration;

/// A kind of step of a switchover or failover run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepName {
    /// Runs the pre-switchover hook on the old master and the target.
    PreHook,
    /// Stops writes: fast shutdown of the old primary (its standbys receive all WAL first).
    StopOldPrimary,
    /// Waits until the target has replayed everything it received.
    WaitForCatchUp,
    /// Promotes the target's database to primary.
    PromoteTarget,
    /// Lowers every other member's priority below the target's, so the move sticks.
    SetPriorities,
    /// Fences the old master until the target is MASTER with the VIP, then lifts the fence.
    MoveVip,
    /// Checks that the target is MASTER with the VIP (and primary) and stays so for the
    /// instance's master-down interval (4 × its advert interval).
    Verify,
    /// Runs the post-switchover hook.
    PostHook,
    /// Failover: fences the lost old master with the cluster's fencing hook (STONITH).
    FenceOldMaster,
    /// Failover: waits for the target to be MASTER with the VIP.
    TakeVip,
    /// Makes every other standby of the link follow the new primary, and waits until each
    /// streams from it.
    RepointStandbys,
    /// Rejoins the stopped old primary as a standby of the new one (rewound or re-cloned, then
    /// started), and waits until it streams.
    RejoinOldPrimary,
}

impl StepName {
    /// Every kind of step.
    pub const ALL: [StepName; 12] = [
        StepName::PreHook,
        StepName::StopOldPrimary,
        StepName::WaitForCatchUp,
        StepName::PromoteTarget,
        StepName::SetPriorities,
        StepName::MoveVip,
        StepName::Verify,
        StepName::PostHook,
        StepName::FenceOldMaster,
        StepName::TakeVip,
        StepName::RepointStandbys,
        StepName::RejoinOldPrimary,
    ];

    /// The name stored in a run's steps and shown by the API (`move_vip`).
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::PreHook => "pre_hook",
            StepName::StopOldPrimary => "stop_old_primary",
            StepName::WaitForCatchUp => "wait_for_catch_up",
            StepName::PromoteTarget => "promote_target",
            StepName::SetPriorities => "set_priorities",
            StepName::MoveVip => "move_vip",
            StepName::Verify => "verify",
            StepName::PostHook => "post_hook",
            StepName::FenceOldMaster => "fence_old_master",
            StepName::TakeVip => "take_vip",
            StepName::RepointStandbys => "repoint_standbys",
            StepName::RejoinOldPrimary => "rejoin_old_primary",
        }
    }

    /// The step a stored name stands for; `None` for a name this server does not know (one a
    /// newer server stored, say).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// How long the step may take before the run stops: a rejoin (rewind or re-clone, start,
    /// catch-up) 180 s, a database shutdown or promotion, the hooks and re-pointing the
    /// standbys 90 s, the catch-up 60 s, the rest 30 s.
    pub fn timeout(self) -> Duration {
        match self {
            StepName::RejoinOldPrimary => Duration::from_secs(180),
            StepName::RepointStandbys => Duration::from_secs(90),
            StepName::StopOldPrimary
            | StepName::PromoteTarget
            | StepName::PreHook
            | StepName::PostHook => Duration::from_secs(90),
            StepName::WaitForCatchUp => Duration::from_secs(60),
            StepName::SetPriorities
            | StepName::MoveVip
            | StepName::Verify
            | StepName::FenceOldMaster
            | StepName::TakeVip => Duration::from_secs(30),
        }
    }
}

impl StepName {
    /// It restores redundancy after the move itself is done: its failure is reported (the step
    /// fails, `redundancy_lost` alerts) but does not undo or fail the move.
    pub fn restores_redundancy(self) -> bool {
        matches!(self, StepName::RepointStandbys | StepName::RejoinOldPrimary)
    }
}

impl std::fmt::Display for StepName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_as_the_same_step() {
        for step in StepName::ALL {
            assert_eq!(StepName::parse(step.as_str()), Some(step));
        }
        let names: std::collections::BTreeSet<&str> =
            StepName::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), StepName::ALL.len(), "names are distinct");
    }

    #[test]
    fn stored_names_stay_as_they_were() {
        let names: Vec<&str> = StepName::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "pre_hook",
                "stop_old_primary",
                "wait_for_catch_up",
                "promote_target",
                "set_priorities",
                "move_vip",
                "verify",
                "post_hook",
                "fence_old_master",
                "take_vip",
                "repoint_standbys",
                "rejoin_old_primary"
            ]
        );
    }

    #[test]
    fn an_unknown_name_is_no_step() {
        assert_eq!(StepName::parse("reboot_everything"), None);
        assert_eq!(StepName::parse("Move_Vip"), None);
        assert_eq!(StepName::parse(""), None);
    }

    #[test]
    fn timeouts_are_those_of_the_string_match() {
        assert_eq!(StepName::PreHook.timeout(), Duration::from_secs(90));
        assert_eq!(StepName::PostHook.timeout(), Duration::from_secs(90));
        assert_eq!(StepName::StopOldPrimary.timeout(), Duration::from_secs(90));
        assert_eq!(StepName::PromoteTarget.timeout(), Duration::from_secs(90));
        assert_eq!(StepName::WaitForCatchUp.timeout(), Duration::from_secs(60));
        assert_eq!(StepName::MoveVip.timeout(), Duration::from_secs(30));
        assert_eq!(StepName::TakeVip.timeout(), Duration::from_secs(30));
    }
}
