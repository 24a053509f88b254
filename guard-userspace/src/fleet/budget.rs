//! The pool's drain budget: who is out (holding a drain slot, or publishing drain, maint or
//! fail), how many may be, and whether one more host may go. Pure arithmetic; the slots key
//! is changed with compare-and-set on its revision (`fleet::link`).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A member whose state is older than this has left the pool (it publishes every few seconds).
pub const MEMBER_STALE_SECS: u64 = 30;

/// The pool's drain slots: host -> Unix second its drain ends (0: until `guard ready`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    pub held: BTreeMap<String, u64>,
}

/// One host's published state in the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub host: String,
    /// `pass`, `warn`, `drain`, `maint`, `fail` or `starting`.
    pub state: String,
    /// Unix seconds it was published.
    pub at: u64,
}

impl MemberState {
    pub fn is_out(&self) -> bool {
        matches!(self.state.as_str(), "drain" | "maint" | "fail")
    }

    pub fn is_live(&self, now: u64) -> bool {
        now.saturating_sub(self.at) <= MEMBER_STALE_SECS
    }
}

/// How many of `members` hosts may be out at once under `max_drained`. The small epsilon keeps
/// 0.29 x 100 (28.999...) at 29.
pub fn allowed(max_drained: f64, members: usize) -> usize {
    (max_drained * members as f64 + 1e-9).floor() as usize
}

/// The answer to "may `host` drain now?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Yes: write these slots (which hold `host`).
    Take(Slots),
    /// No: `out` are the other hosts already out; `allowed` of `members` may be.
    Refuse {
        out: Vec<String>,
        allowed: usize,
        members: usize,
    },
}

/// Decides whether `host` may take a drain slot until `until` (0: until ready), given the
/// slots and the members' states now. A slot that expired, or whose host left the pool, is
/// free. The host itself counts as a member.
pub fn decide(
    slots: &Slots,
    members: &[MemberState],
    host: &str,
    until: u64,
    now: u64,
    max_drained: f64,
) -> Decision {
    let live: Vec<&MemberState> = members
        .iter()
        .filter(|m| m.is_live(now) && m.host != host)
        .collect();
    let mut kept = Slots::default();
    for (h, &end) in &slots.held {
        let expired = end != 0 && end <= now;
        if h != host && !expired && live.iter().any(|m| &m.host == h) {
            kept.held.insert(h.clone(), end);
        }
    }
    let mut out: Vec<String> = kept.held.keys().cloned().collect();
    for m in &live {
        if m.is_out() && !out.contains(&m.host) {
            out.push(m.host.clone());
        }
    }
    out.sort();
    let members_n = live.len() + 1;
    let allowed = allowed(max_drained, members_n);
    if out.len() + 1 > allowed {
        return Decision::Refuse {
            out,
            allowed,
            members: members_n,
        };
    }
    kept.held.insert(host.to_string(), until);
    Decision::Take(kept)
}

/// `slots` without `host`, if it held one.
pub fn release(slots: &Slots, host: &str) -> Option<Slots> {
    let mut s = slots.clone();
    s.held.remove(host).map(|_| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn member(host: &str, state: &str) -> MemberState {
        MemberState {
            host: host.into(),
            state: state.into(),
            at: NOW - 2,
        }
    }

    #[test]
    fn allowed_is_the_floor_of_the_share() {
        assert_eq!(allowed(0.34, 3), 1);
        assert_eq!(allowed(0.3, 3), 0);
        assert_eq!(allowed(0.3, 10), 3);
        assert_eq!(allowed(0.29, 100), 29);
        assert_eq!(allowed(1.0, 4), 4);
        assert_eq!(allowed(0.0, 4), 0);
    }

    #[test]
    fn the_second_drain_of_three_at_a_third_is_refused_naming_the_first() {
        let members = [
            member("a", "pass"),
            member("b", "pass"),
            member("c", "pass"),
        ];
        let Decision::Take(slots) = decide(&Slots::default(), &members, "a", 0, NOW, 0.34) else {
            panic!("a may drain");
        };
        assert_eq!(slots.held.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(
            decide(&slots, &members, "b", 0, NOW, 0.34),
            Decision::Refuse {
                out: vec!["a".into()],
                allowed: 1,
                members: 3
            }
        );
        // A host that publishes drain (its own load) counts as out without a slot.
        let members = [
            member("a", "drain"),
            member("b", "pass"),
            member("c", "pass"),
        ];
        assert!(matches!(
            decide(&Slots::default(), &members, "b", 0, NOW, 0.34),
            Decision::Refuse { .. }
        ));
    }

    #[test]
    fn expired_slots_and_departed_hosts_free_their_slot() {
        let members = [
            member("a", "pass"),
            member("b", "pass"),
            member("c", "pass"),
        ];
        let mut slots = Slots::default();
        slots.held.insert("a".into(), NOW - 1);
        assert!(matches!(
            decide(&slots, &members, "b", 0, NOW, 0.34),
            Decision::Take(_)
        ));
        let mut gone = members.clone();
        gone[0].at = NOW - MEMBER_STALE_SECS - 1;
        slots.held.insert("a".into(), 0);
        // a left: 2 members, 0.34 x 2 = 0 may drain... so widen the budget to see the slot freed.
        let Decision::Take(s) = decide(&slots, &gone, "b", 0, NOW, 0.5) else {
            panic!("a's slot is free once a left the pool");
        };
        assert!(!s.held.contains_key("a"));
    }

    #[test]
    fn a_host_already_draining_keeps_its_slot_and_release_frees_it() {
        let members = [
            member("a", "drain"),
            member("b", "pass"),
            member("c", "pass"),
        ];
        let mut slots = Slots::default();
        slots.held.insert("a".into(), 0);
        let Decision::Take(s) = decide(&slots, &members, "a", NOW + 60, NOW, 0.34) else {
            panic!("a extends its own drain");
        };
        assert_eq!(s.held.get("a"), Some(&(NOW + 60)));
        assert_eq!(release(&s, "a"), Some(Slots::default()));
        assert_eq!(release(&Slots::default(), "a"), None);
    }
}
