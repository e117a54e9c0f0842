//! The VM state machine, in one place. Every state change in the daemon asks this module.
//!
//! ```text
//! created ─► starting ─► running ─► stopping ─► stopped
//!               │  │        │           │          │
//!               │  └► failed└► crashed ◄┘          │
//!               └────────► stopping                │
//! stopped | crashed | failed ─► starting ◄─────────┘
//! ```

use nexus_lib::api::VmState::{self, *};

/// Whether a VM may move from `from` to `to`.
pub fn can_transition(from: VmState, to: VmState) -> bool {
    matches!(
        (from, to),
        (Created | Stopped | Crashed | Failed, Starting)
            | (Starting, Running | Failed | Crashed | Stopping)
            | (Running, Stopping | Crashed)
            | (Stopping, Stopped | Crashed)
    )
}

/// Whether a VMM process of a VM in `state` may be alive (the states recovery re-adopts).
pub fn is_live(state: VmState) -> bool {
    matches!(state, Starting | Running | Stopping)
}

/// Whether a VM in `state` may be deleted: only when no VMM process can be alive.
pub fn can_delete(state: VmState) -> bool {
    matches!(state, Created | Stopped | Crashed | Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_life_cycle_is_allowed() {
        let path = [Created, Starting, Running, Stopping, Stopped, Starting];
        for w in path.windows(2) {
            assert!(can_transition(w[0], w[1]), "{} -> {}", w[0], w[1]);
        }
    }

    #[test]
    fn skipping_states_is_refused() {
        assert!(!can_transition(Created, Running));
        assert!(!can_transition(Stopped, Running));
        assert!(!can_transition(Running, Starting));
        assert!(!can_transition(Running, Running));
        assert!(!can_transition(Created, Created));
    }

    #[test]
    fn every_state_has_a_way_out_or_is_deletable() {
        for s in VmState::ALL {
            let moves = VmState::ALL.iter().any(|t| can_transition(s, *t));
            assert!(moves || can_delete(s), "{s} is a dead end");
        }
    }

    #[test]
    fn live_vms_cannot_be_deleted() {
        for s in [Starting, Running, Stopping] {
            assert!(!can_delete(s), "{s}");
        }
    }
}
