//! Which units of a cluster a move occupies. Moves of one cluster go at once when they are of
//! different VRRP instances and touch different nodes (the rule `switchovers_nodes_free`
//! enforces in the database); a unit whose instance or nodes a move holds waits for it — its
//! verdict says which move — and nothing is enforced on it meanwhile (the move fences and
//! promotes by itself).

use std::collections::{BTreeMap, BTreeSet};

/// A move holding an instance and nodes of a cluster.
#[derive(Debug, Clone)]
struct Claim {
    instance: String,
    /// Empty: the whole cluster (a run stored by a server before moves per node).
    nodes: BTreeSet<String>,
}

/// The moves running (or just started) per cluster: their instances and nodes.
#[derive(Debug, Default)]
pub(crate) struct Busy {
    by_cluster: BTreeMap<String, Vec<Claim>>,
}

impl Busy {
    /// Records a move of `instance` in `cluster` touching `nodes` (empty: the whole cluster).
    pub(crate) fn claim<'n>(
        &mut self,
        cluster: &str,
        instance: &str,
        nodes: impl IntoIterator<Item = &'n String>,
    ) {
        self.by_cluster
            .entry(cluster.to_string())
            .or_default()
            .push(Claim {
                instance: instance.to_string(),
                nodes: nodes.into_iter().cloned().collect(),
            });
    }

    /// The move holding `instance` of `cluster` or one of `nodes`, if any, described: "VI_1
    /// (h1, h3)". A move stored without nodes holds the whole cluster.
    pub(crate) fn holder(
        &self,
        cluster: &str,
        instance: &str,
        nodes: &BTreeSet<String>,
    ) -> Option<String> {
        let claims = self.by_cluster.get(cluster)?;
        claims
            .iter()
            .find(|c| {
                c.instance == instance
                    || c.nodes.is_empty()
                    || nodes.is_empty()
                    || !c.nodes.is_disjoint(nodes)
            })
            .map(|c| {
                let nodes: Vec<&str> = c.nodes.iter().map(String::as_str).collect();
                match nodes.is_empty() {
                    true => c.instance.clone(),
                    false => format!("{} ({})", c.instance, nodes.join(", ")),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_move_holds_its_instance_and_its_nodes_only() {
        let mut busy = Busy::default();
        busy.claim("c", "VI_1", &set(&["h1", "h2"]));
        let holds = |cluster: &str, instance: &str, nodes: &[&str]| {
            busy.holder(cluster, instance, &set(nodes))
        };
        assert_eq!(
            holds("c", "VI_2", &["h2", "h3"]).as_deref(),
            Some("VI_1 (h1, h2)"),
            "a shared node"
        );
        assert!(holds("c", "VI_1", &["h5"]).is_some(), "the same instance");
        assert!(holds("c", "VI_2", &["h3", "h4"]).is_none(), "other nodes");
        assert!(holds("d", "VI_1", &["h1"]).is_none(), "another cluster");
        assert!(
            holds("c", "VI_2", &[]).is_some(),
            "a unit whose nodes are unknown is held by any move of its cluster"
        );
    }

    #[test]
    fn a_move_stored_without_nodes_holds_the_whole_cluster() {
        let mut busy = Busy::default();
        busy.claim("c", "VI_1", &BTreeSet::new());
        assert_eq!(
            busy.holder("c", "VI_2", &set(&["h3"])).as_deref(),
            Some("VI_1")
        );
    }
}
