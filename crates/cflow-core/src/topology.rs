//! Swarm topologies: who may message and who may delegate work to whom. The server asks a
//! [`TopologyGraph`] before it delivers a message or accepts a delegation, and turns a [`Refusal`]
//! into a 403 that is also audited, so the reason is written for a human reader.

use crate::ValidationError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// The shape of a swarm's communication graph. In every topology a member never messages or
/// delegates to itself, and only members of the swarm take part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// Every member may message and delegate to every other member.
    Mesh,
    /// A tree rooted at the coordinator: messages flow between a parent and its children (both
    /// ways), delegation only from a parent to its children, so work always flows downwards.
    Hierarchical,
    /// Members in join order, the last followed by the first: a member messages both neighbours
    /// but delegates only to its successor, so work travels one way round the ring.
    Ring,
    /// The hub (the coordinator) and every other member (a spoke) may message and delegate to each
    /// other; spokes never talk to each other directly. A spoke may hand work back to the hub, which
    /// then decides where it goes next.
    Star,
}

impl Topology {
    pub const ALL: [Topology; 4] = [
        Topology::Mesh,
        Topology::Hierarchical,
        Topology::Ring,
        Topology::Star,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Mesh => "mesh",
            Topology::Hierarchical => "hierarchical",
            Topology::Ring => "ring",
            Topology::Star => "star",
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a topology name that is not one of [`Topology::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown topology '{0}': expected one of mesh, hierarchical, ring, star")]
pub struct UnknownTopology(pub String);

impl FromStr for Topology {
    type Err = UnknownTopology;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topology::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTopology(s.to_string()))
    }
}

/// What one member wants to do to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interaction {
    /// Send a direct message.
    Message,
    /// Hand over a task for the other member to run.
    Delegate,
}

impl Interaction {
    fn verb(self) -> &'static str {
        match self {
            Interaction::Message => "message",
            Interaction::Delegate => "delegate to",
        }
    }
}

/// A member of a swarm as the topology sees it: its id and, for a hierarchical swarm, its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// The member's parent in a hierarchical swarm. `None` means "reports to the coordinator", so a
    /// swarm whose agents are spawned without parents is a two-level tree. Other topologies ignore
    /// it, because their shape follows from the join order alone.
    pub parent: Option<String>,
}

impl Member {
    /// A member without an explicit parent.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            parent: None,
        }
    }

    /// A member whose parent (in a hierarchical swarm) is `parent`.
    pub fn child_of(id: impl Into<String>, parent: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            parent: Some(parent.into()),
        }
    }
}

/// Why a message or delegation was refused, written for the caller of the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    pub reason: String,
}

impl Refusal {
    fn new(reason: String) -> Self {
        Self { reason }
    }
}

/// The directed graph of a swarm: built once from the members (in join order) and consulted on
/// every message and delegation. Lookups are O(1); rebuild it when membership changes.
#[derive(Debug, Clone)]
pub struct TopologyGraph {
    topology: Topology,
    /// Member ids in join order (the ring order).
    ids: Vec<String>,
    index: HashMap<String, usize>,
    /// The coordinator: the star's hub and the hierarchy's root. Meaningless when `ids` is empty.
    hub: usize,
    /// Parent and children by index; filled only for a hierarchical swarm.
    parent: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
}

impl TopologyGraph {
    /// Builds the graph. The coordinator is `coordinator` when given, otherwise the first member to
    /// join. Refused: a repeated member id, a coordinator that is not a member, and for a
    /// hierarchical swarm a parent that is not a member, a parent on the coordinator, or parent
    /// links that form a cycle (they must form one tree rooted at the coordinator).
    pub fn new(
        topology: Topology,
        members: &[Member],
        coordinator: Option<&str>,
    ) -> Result<Self, ValidationError> {
        let mut index = HashMap::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            if index.insert(m.id.clone(), i).is_some() {
                return Err(ValidationError::new(
                    format!("members[{i}].id"),
                    format!("'{}' appears more than once", m.id),
                ));
            }
        }
        let hub = match coordinator {
            Some(c) => *index.get(c).ok_or_else(|| {
                ValidationError::new("coordinator", format!("'{c}' is not a member of the swarm"))
            })?,
            None => 0,
        };
        let n = members.len();
        let mut parent = vec![None; n];
        let mut children = vec![Vec::new(); n];
        if topology == Topology::Hierarchical && n > 0 {
            for (i, m) in members.iter().enumerate() {
                let field = || format!("members[{i}].parent");
                let p = match &m.parent {
                    None if i == hub => continue,
                    None => hub,
                    Some(p) => *index.get(p.as_str()).ok_or_else(|| {
                        ValidationError::new(field(), format!("'{p}' is not a member of the swarm"))
                    })?,
                };
                if i == hub {
                    return Err(ValidationError::new(
                        field(),
                        format!(
                            "the coordinator '{}' is the root of the hierarchy and cannot have a parent",
                            m.id
                        ),
                    ));
                }
                if p == i {
                    return Err(ValidationError::new(
                        field(),
                        "a member cannot be its own parent",
                    ));
                }
                parent[i] = Some(p);
                children[p].push(i);
            }
            if let Some(i) = first_in_cycle(&parent) {
                return Err(ValidationError::new(
                    format!("members[{i}].parent"),
                    format!(
                        "parent links form a cycle through '{}'; they must form a tree rooted at the coordinator",
                        members[i].id
                    ),
                ));
            }
        }
        Ok(Self {
            topology,
            ids: members.iter().map(|m| m.id.clone()).collect(),
            index,
            hub,
            parent,
            children,
        })
    }

    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Member ids in join order.
    pub fn members(&self) -> &[String] {
        &self.ids
    }

    /// The coordinator (hub, root), if the swarm has members.
    pub fn coordinator(&self) -> Option<&str> {
        self.ids.get(self.hub).map(String::as_str)
    }

    /// A member's parent in a hierarchical swarm.
    pub fn parent(&self, id: &str) -> Option<&str> {
        let i = *self.index.get(id)?;
        self.parent[i].map(|p| self.ids[p].as_str())
    }

    /// A member's children in a hierarchical swarm, in join order.
    pub fn children(&self, id: &str) -> Vec<&str> {
        self.index
            .get(id)
            .map_or_else(Vec::new, |&i| self.names(&self.children[i]))
    }

    /// Whether `from` may send a direct message to `to`.
    pub fn may_message(&self, from: &str, to: &str) -> bool {
        self.check(Interaction::Message, from, to).is_ok()
    }

    /// Whether `from` may delegate a task to `to`.
    pub fn may_delegate(&self, from: &str, to: &str) -> bool {
        self.check(Interaction::Delegate, from, to).is_ok()
    }

    /// Every member that `from` may message or delegate to, in join order.
    pub fn peers(&self, kind: Interaction, from: &str) -> Vec<&str> {
        let Some(&f) = self.index.get(from) else {
            return Vec::new();
        };
        (0..self.ids.len())
            .filter(|&t| self.allowed(kind, f, t))
            .map(|t| self.ids[t].as_str())
            .collect()
    }

    /// Decides one interaction and, when it is refused, says why in terms of the topology.
    pub fn check(&self, kind: Interaction, from: &str, to: &str) -> Result<(), Refusal> {
        let member = |id: &str| {
            self.index
                .get(id)
                .copied()
                .ok_or_else(|| Refusal::new(format!("{id} is not a member of this swarm")))
        };
        let (f, t) = (member(from)?, member(to)?);
        if self.allowed(kind, f, t) {
            return Ok(());
        }
        let verb = kind.verb();
        if f == t {
            return Err(Refusal::new(format!("{from} may not {verb} itself")));
        }
        let n = self.ids.len();
        let reason = match (self.topology, kind) {
            // Mesh allows every pair of distinct members, so only self-interaction is refused.
            (Topology::Mesh, _) => unreachable!("mesh refuses only self-interaction"),
            (Topology::Star, _) => format!(
                "star topology: {from} and {to} are both spokes; a spoke may only {verb} the hub {}",
                self.ids[self.hub]
            ),
            (Topology::Ring, Interaction::Message) => {
                let (pred, succ) = (&self.ids[(f + n - 1) % n], &self.ids[(f + 1) % n]);
                format!("ring topology: {from} may only message its neighbours {pred} and {succ}")
            }
            (Topology::Ring, Interaction::Delegate) => format!(
                "ring topology: {from} may only delegate to its successor {}",
                self.ids[(f + 1) % n]
            ),
            (Topology::Hierarchical, Interaction::Message) => {
                let mut allowed = Vec::new();
                if let Some(p) = self.parent[f] {
                    allowed.push(format!("its parent {}", self.ids[p]));
                }
                if !self.children[f].is_empty() {
                    allowed.push(self.describe_children(f));
                }
                format!(
                    "hierarchical topology: {from} may only message {}",
                    allowed.join(" and ")
                )
            }
            (Topology::Hierarchical, Interaction::Delegate) if self.children[f].is_empty() => {
                format!(
                    "hierarchical topology: {from} has no children, and work may only be delegated from a parent to its children"
                )
            }
            (Topology::Hierarchical, Interaction::Delegate) => format!(
                "hierarchical topology: {from} may only delegate to {}",
                self.describe_children(f)
            ),
        };
        Err(Refusal::new(reason))
    }

    /// The policy itself, on member indices. Every refusal message above explains one `false`.
    fn allowed(&self, kind: Interaction, f: usize, t: usize) -> bool {
        if f == t {
            return false;
        }
        let n = self.ids.len();
        match (self.topology, kind) {
            (Topology::Mesh, _) => true,
            (Topology::Star, _) => f == self.hub || t == self.hub,
            (Topology::Ring, Interaction::Message) => t == (f + 1) % n || f == (t + 1) % n,
            (Topology::Ring, Interaction::Delegate) => t == (f + 1) % n,
            (Topology::Hierarchical, Interaction::Message) => {
                self.parent[t] == Some(f) || self.parent[f] == Some(t)
            }
            (Topology::Hierarchical, Interaction::Delegate) => self.parent[t] == Some(f),
        }
    }

    fn names(&self, indices: &[usize]) -> Vec<&str> {
        indices.iter().map(|&i| self.ids[i].as_str()).collect()
    }

    fn describe_children(&self, f: usize) -> String {
        match self.names(&self.children[f]).as_slice() {
            [one] => format!("its child {one}"),
            many => format!("its children {}", many.join(", ")),
        }
    }
}

/// The first member whose parent links never reach a member without a parent (the root), if any.
/// Each member is walked at most once overall, so this is O(n) even for a long chain.
fn first_in_cycle(parent: &[Option<usize>]) -> Option<usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unseen,
        OnPath,
        Rooted,
    }
    let mut mark = vec![Mark::Unseen; parent.len()];
    for start in 0..parent.len() {
        let mut path = Vec::new();
        let mut at = Some(start);
        while let Some(i) = at {
            match mark[i] {
                Mark::Rooted => break,
                Mark::OnPath => return Some(i),
                Mark::Unseen => {
                    mark[i] = Mark::OnPath;
                    path.push(i);
                    at = parent[i];
                }
            }
        }
        for i in path {
            mark[i] = Mark::Rooted;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: [&str; 4] = ["a-1", "a-2", "a-3", "a-4"];

    fn graph(topology: Topology) -> TopologyGraph {
        // For the hierarchy: a-1 is the root, a-2 and a-3 (no explicit parent) report to it, and
        // a-4 reports to a-2.
        let members = [
            Member::new("a-1"),
            Member::new("a-2"),
            Member::child_of("a-3", "a-1"),
            Member::child_of("a-4", "a-2"),
        ];
        TopologyGraph::new(topology, &members, None).unwrap()
    }

    /// Every ordered pair of members (self included) against the allowed pairs, by member number.
    fn assert_exactly(g: &TopologyGraph, kind: Interaction, allowed: &[(usize, usize)]) {
        for (f, from) in IDS.iter().enumerate() {
            for (t, to) in IDS.iter().enumerate() {
                let expected = allowed.contains(&(f + 1, t + 1));
                let got = match kind {
                    Interaction::Message => g.may_message(from, to),
                    Interaction::Delegate => g.may_delegate(from, to),
                };
                assert_eq!(got, expected, "{} {from} {kind:?} {to}", g.topology());
                assert_eq!(g.check(kind, from, to).is_ok(), expected);
            }
        }
    }

    fn both_ways(pairs: &[(usize, usize)]) -> Vec<(usize, usize)> {
        pairs.iter().flat_map(|&(a, b)| [(a, b), (b, a)]).collect()
    }

    #[test]
    fn mesh_allows_every_distinct_pair() {
        let all: Vec<_> = (1..=4)
            .flat_map(|a| (1..=4).map(move |b| (a, b)))
            .filter(|(a, b)| a != b)
            .collect();
        let g = graph(Topology::Mesh);
        assert_exactly(&g, Interaction::Message, &all);
        assert_exactly(&g, Interaction::Delegate, &all);
    }

    #[test]
    fn star_allows_hub_and_spokes_only() {
        let spokes = both_ways(&[(1, 2), (1, 3), (1, 4)]);
        let g = graph(Topology::Star);
        assert_exactly(&g, Interaction::Message, &spokes);
        assert_exactly(&g, Interaction::Delegate, &spokes);
    }

    #[test]
    fn ring_messages_neighbours_and_delegates_to_the_successor() {
        let succ = [(1, 2), (2, 3), (3, 4), (4, 1)];
        let g = graph(Topology::Ring);
        assert_exactly(&g, Interaction::Message, &both_ways(&succ));
        assert_exactly(&g, Interaction::Delegate, &succ);
    }

    #[test]
    fn hierarchy_messages_parent_and_child_and_delegates_downwards() {
        let edges = [(1, 2), (1, 3), (2, 4)];
        let g = graph(Topology::Hierarchical);
        assert_exactly(&g, Interaction::Message, &both_ways(&edges));
        assert_exactly(&g, Interaction::Delegate, &edges);
        assert_eq!(
            g.parent("a-3"),
            Some("a-1"),
            "no parent means the coordinator"
        );
        assert_eq!(g.parent("a-1"), None);
        assert_eq!(g.children("a-1"), ["a-2", "a-3"]);
        assert_eq!(g.peers(Interaction::Message, "a-2"), ["a-1", "a-4"]);
        assert_eq!(g.peers(Interaction::Delegate, "a-4"), Vec::<&str>::new());
    }

    #[test]
    fn refusals_explain_the_rule() {
        let reason = |t, kind, from, to| graph(t).check(kind, from, to).unwrap_err().to_string();
        use Interaction::*;
        assert_eq!(
            reason(Topology::Ring, Delegate, "a-3", "a-1"),
            "ring topology: a-3 may only delegate to its successor a-4"
        );
        assert_eq!(
            reason(Topology::Ring, Message, "a-1", "a-3"),
            "ring topology: a-1 may only message its neighbours a-4 and a-2"
        );
        assert_eq!(
            reason(Topology::Star, Message, "a-2", "a-3"),
            "star topology: a-2 and a-3 are both spokes; a spoke may only message the hub a-1"
        );
        assert_eq!(
            reason(Topology::Hierarchical, Delegate, "a-2", "a-1"),
            "hierarchical topology: a-2 may only delegate to its child a-4"
        );
        assert_eq!(
            reason(Topology::Hierarchical, Delegate, "a-3", "a-1"),
            "hierarchical topology: a-3 has no children, and work may only be delegated from a parent to its children"
        );
        assert_eq!(
            reason(Topology::Hierarchical, Message, "a-2", "a-3"),
            "hierarchical topology: a-2 may only message its parent a-1 and its child a-4"
        );
        assert_eq!(
            reason(Topology::Hierarchical, Message, "a-1", "a-4"),
            "hierarchical topology: a-1 may only message its children a-2, a-3"
        );
        assert_eq!(
            reason(Topology::Mesh, Message, "a-1", "a-1"),
            "a-1 may not message itself"
        );
        assert_eq!(
            reason(Topology::Mesh, Delegate, "a-1", "x-9"),
            "x-9 is not a member of this swarm"
        );
    }

    #[test]
    fn an_explicit_coordinator_is_the_hub() {
        let members: Vec<_> = IDS.iter().map(|id| Member::new(*id)).collect();
        let g = TopologyGraph::new(Topology::Star, &members, Some("a-3")).unwrap();
        assert_eq!(g.coordinator(), Some("a-3"));
        assert!(g.may_delegate("a-3", "a-1") && g.may_message("a-4", "a-3"));
        assert!(!g.may_message("a-1", "a-2"));
    }

    #[test]
    fn small_rings_and_empty_swarms() {
        let two = [Member::new("x"), Member::new("y")];
        let g = TopologyGraph::new(Topology::Ring, &two, None).unwrap();
        assert!(g.may_delegate("x", "y") && g.may_delegate("y", "x"));
        let one = TopologyGraph::new(Topology::Ring, &two[..1], None).unwrap();
        assert!(!one.may_message("x", "x"));
        let empty = TopologyGraph::new(Topology::Hierarchical, &[], None).unwrap();
        assert_eq!(empty.coordinator(), None);
        assert!(!empty.may_message("x", "y"));
    }

    #[test]
    fn invalid_memberships_are_refused() {
        let err = |t, members: &[Member], coordinator| {
            TopologyGraph::new(t, members, coordinator).unwrap_err()
        };
        let dup = err(Topology::Mesh, &[Member::new("a"), Member::new("a")], None);
        assert_eq!(dup.field, "members[1].id");
        let e = err(Topology::Star, &[Member::new("a")], Some("z"));
        assert_eq!(
            e.to_string(),
            "coordinator: 'z' is not a member of the swarm"
        );
        let e = err(Topology::Star, &[], Some("z"));
        assert_eq!(e.field, "coordinator");

        let h = Topology::Hierarchical;
        let e = err(h, &[Member::new("a"), Member::child_of("b", "q")], None);
        assert_eq!(
            e.to_string(),
            "members[1].parent: 'q' is not a member of the swarm"
        );
        let e = err(h, &[Member::child_of("a", "b"), Member::new("b")], None);
        assert!(e.rule.contains("root of the hierarchy"), "{e}");
        let e = err(h, &[Member::new("a"), Member::child_of("b", "b")], None);
        assert!(e.rule.contains("its own parent"), "{e}");
        let cycle = [
            Member::new("root"),
            Member::child_of("b", "c"),
            Member::child_of("c", "d"),
            Member::child_of("d", "b"),
        ];
        let e = err(h, &cycle, None);
        assert_eq!(e.field, "members[1].parent");
        assert!(e.rule.contains("cycle through 'b'"), "{e}");
        // Parents are not part of the other topologies, so they are not checked there.
        assert!(TopologyGraph::new(Topology::Mesh, &cycle, None).is_ok());
    }

    #[test]
    fn names_round_trip() {
        for t in Topology::ALL {
            assert_eq!(t.as_str().parse::<Topology>().unwrap(), t);
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        let e = "tree".parse::<Topology>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown topology 'tree': expected one of mesh, hierarchical, ring, star"
        );
    }
}
