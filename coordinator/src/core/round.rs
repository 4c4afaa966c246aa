//! The open whole-model round: its replica slots (open, assigned to a unit, or holding an
//! accepted update), the units working on them, and what the round remembers about who may
//! have which slot. `rounds.rs` drives it (`Replicas`).

use std::collections::BTreeMap;

use tessera_protocol::PublicKey;

use super::{ConnId, Contribution};

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Slot {
    /// Waiting for a contributor.
    Open,
    /// Being worked on by a unit.
    Assigned(u64),
    /// Accepted.
    Done(Box<Contribution>, Vec<Vec<f32>>),
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Unit {
    pub(super) slot: u64,
    pub(super) conn: ConnId,
    pub(super) key: PublicKey,
    pub(super) deadline: u64,
}

/// The open round.
#[derive(Clone, Debug)]
pub(super) struct Round {
    pub(super) number: u64,
    pub(super) slots: Vec<Slot>,
    pub(super) units: BTreeMap<u64, Unit>,
    /// Slots whose accepted update gets a loss check when the round is complete.
    pub(super) drawn: std::collections::BTreeSet<u64>,
    /// Drawn units being replayed elsewhere.
    pub(super) replays: super::replays::Replays,
    /// Slots an identity may not have again this round: its unit for the slot was refused or
    /// ran past its deadline.
    pub(super) barred: std::collections::BTreeSet<(u64, PublicKey)>,
    /// When the round opened (ms): a quorum of the slots closes it once the round's deadline
    /// has passed.
    pub(super) opened: u64,
    /// Slots whose accepted update passed its replay this round.
    pub(super) verified: std::collections::BTreeSet<u64>,
    /// Per slot, how many times it ran again because its replay ended disputed (at most
    /// `arbitration::MAX_DISPUTED_RERUNS`; then its update stands unverified).
    pub(super) disputed: BTreeMap<u64, u32>,
    /// The CPU reference measurements its checks asked for, once complete.
    pub(super) measuring: Option<super::measure::Measuring>,
    /// Units replayed because their held-out gain lay far below the round's (once each).
    pub(super) held_out_replayed: std::collections::BTreeSet<u64>,
    /// Identities given a unit of this round: a round grows a slot only for one not in it.
    pub(super) served: std::collections::BTreeSet<PublicKey>,
    /// Identities told this round why they got no slot (once each).
    pub(super) told: std::collections::BTreeSet<PublicKey>,
}

impl Round {
    pub(super) fn new(number: u64, replicas: u64, now: u64) -> Self {
        Round {
            number,
            slots: vec![Slot::Open; replicas as usize],
            units: BTreeMap::new(),
            drawn: Default::default(),
            replays: Default::default(),
            barred: Default::default(),
            opened: now,
            verified: Default::default(),
            disputed: BTreeMap::new(),
            measuring: None,
            held_out_replayed: Default::default(),
            served: Default::default(),
            told: Default::default(),
        }
    }

    /// How many slots the round has now.
    pub(super) fn slot_count(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Whether the round still computes: some slot not accepted, its deadline not passed (a
    /// round grows only then).
    pub(super) fn computing(&self, now: u64, deadline_ms: u64) -> bool {
        now < self.opened.saturating_add(deadline_ms)
            && self.slots.iter().any(|s| !matches!(s, Slot::Done(..)))
    }

    /// The identities holding a slot of the round (a unit in progress or an accepted update).
    pub(super) fn holders(&self) -> std::collections::BTreeSet<PublicKey> {
        let mut keys: std::collections::BTreeSet<PublicKey> =
            self.units.values().map(|u| u.key).collect();
        for s in &self.slots {
            if let Slot::Done(c, _) = s {
                keys.insert(c.contributor);
            }
        }
        keys
    }

    /// The slot a restored contribution goes back to, grown to reach it.
    pub(super) fn grow_to(&mut self, slot: u64) {
        while self.slots.len() as u64 <= slot {
            self.slots.push(Slot::Open);
        }
    }

    /// How many slots are accepted.
    pub(super) fn accepted(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Done(..)))
            .count()
    }

    /// The contribution `unit` put into `slot` and its dense update, while it is accepted
    /// there.
    pub(super) fn slot_update(&self, slot: u64, unit: u64) -> Option<(&Contribution, &[Vec<f32>])> {
        match self.slots.get(slot as usize) {
            Some(Slot::Done(c, d)) if c.unit == unit => Some((c, d)),
            _ => None,
        }
    }

    /// Puts a unit's slot back in the queue (its contributor vanished or gave up).
    pub(super) fn requeue(&mut self, unit: u64) {
        if let Some(u) = self.units.remove(&unit) {
            if self.slots[u.slot as usize] == Slot::Assigned(unit) {
                self.slots[u.slot as usize] = Slot::Open;
            }
        }
    }

    /// Units past their deadline, requeued: `(connection, unit, slot)`.
    pub(super) fn expired(&mut self, now: u64) -> Vec<(ConnId, u64, u64)> {
        let late: Vec<(ConnId, u64, u64)> = self
            .units
            .iter()
            .filter(|(_, u)| u.deadline < now)
            .map(|(&id, u)| (u.conn, id, u.slot))
            .collect();
        for &(_, id, _) in &late {
            self.requeue(id);
        }
        late
    }

    /// The accepted slots: slot, unit, contributor, dense update.
    pub(super) fn done(&self) -> Vec<(u64, u64, PublicKey, &Vec<Vec<f32>>)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Done(c, d) => Some((i as u64, c.unit, c.contributor, d)),
                _ => None,
            })
            .collect()
    }

    /// The accepted slots and the units that filled them.
    pub(super) fn done_units(&self) -> Vec<(u64, u64)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Done(c, _) => Some((i as u64, c.unit)),
                _ => None,
            })
            .collect()
    }

    /// Bars `key` from `slot` for the rest of the round (its update there was withheld).
    pub(super) fn bar(&mut self, slot: u64, key: PublicKey) {
        self.barred.insert((slot, key));
    }

    /// Opens an accepted slot again (a check threw its update out).
    pub(super) fn reopen(&mut self, slot: u64) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Slot::Open;
        }
        self.drawn.remove(&slot);
        self.verified.remove(&slot);
    }

    pub(super) fn accepted_slots(&self) -> Vec<u64> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Done(..)))
            .map(|(i, _)| i as u64)
            .collect()
    }
}
