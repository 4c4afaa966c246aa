//! What changed in the core since someone last asked: the connections whose session changed
//! and the identities whose record changed, so that a view of the core (the status) rebuilds
//! only what changed instead of walking every session and identity after every event. A set
//! that grows past its bound (nobody asked for a long while) becomes "everything".

use std::collections::BTreeSet;

use tessera_protocol::PublicKey;

use super::ConnId;

/// The things of one kind marked since the marks were last taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marks<T: Ord> {
    /// These, and nothing else.
    Some(BTreeSet<T>),
    /// Anything may have changed.
    All,
}

impl<T: Ord> Default for Marks<T> {
    /// Everything: whoever looks first has seen nothing yet.
    fn default() -> Self {
        Marks::All
    }
}

impl<T: Ord> Marks<T> {
    /// Nothing marked.
    pub fn none() -> Self {
        Marks::Some(BTreeSet::new())
    }

    /// Marks `t`; past `bound` marks, everything is marked (one full rebuild is then cheaper
    /// than the marks, and the marks stay bounded however long nobody looks).
    pub(super) fn mark(&mut self, t: T, bound: usize) {
        if let Marks::Some(set) = self {
            set.insert(t);
            if set.len() > bound {
                *self = Marks::All;
            }
        }
    }

    /// The marks so far; nothing is marked after.
    pub(super) fn take(&mut self) -> Self {
        std::mem::replace(self, Marks::none())
    }

    /// Whether `t` is marked.
    pub fn contains(&self, t: &T) -> bool {
        match self {
            Marks::Some(set) => set.contains(t),
            Marks::All => true,
        }
    }
}

/// What changed since the changes were last taken ([`super::Core::take_changes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes {
    /// Connections whose session came, went or changed (lease, unit, stage, the micro-shards
    /// its lease holds).
    pub sessions: Marks<ConnId>,
    /// Identities whose record (credits, counts, refusal) changed.
    pub records: Marks<PublicKey>,
}

/// The fewest marks kept before everything is marked, whatever the number of sessions.
pub(super) const MIN_BOUND: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_start_as_everything_and_are_taken_once() {
        let mut m: Marks<u64> = Marks::default();
        assert_eq!(m.take(), Marks::All);
        assert_eq!(m, Marks::none());
        m.mark(3, 10);
        m.mark(3, 10);
        m.mark(5, 10);
        assert!(m.contains(&3) && !m.contains(&4));
        assert_eq!(m.take(), Marks::Some(BTreeSet::from([3, 5])));
        assert_eq!(m.take(), Marks::none());
    }

    #[test]
    fn marks_past_their_bound_become_everything_and_stay_so_until_taken() {
        let mut m: Marks<u64> = Marks::none();
        for t in 0..3 {
            m.mark(t, 2);
        }
        assert_eq!(m, Marks::All);
        m.mark(9, 2);
        assert!(m.contains(&1000));
        assert_eq!(m.take(), Marks::All);
        assert_eq!(m, Marks::none());
    }
}
