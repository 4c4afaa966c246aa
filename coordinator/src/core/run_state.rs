//! Where a run stands: training, paused by its administrator, or finished (every round done,
//! or stopped by its administrator). One value, changed only by the core's dispatcher, the
//! close of the last round or step, and the administrator's acts; everything that asks "may
//! work go out?" or "is the run over?" asks it. (A coordinator without a run yet is the idle
//! shell, `crate::idle`, which has no core.)

use serde::{Deserialize, Serialize};

/// Run phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Training.
    Training,
    /// Every round done.
    Finished,
}

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// Work is handed out.
    Training,
    /// An administrator paused the run: no new work goes out; work in flight may still be
    /// submitted, and a round or step whose work is all in still closes.
    Paused,
    /// The run is over.
    Finished(End),
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum End {
    /// Its last round or step closed.
    Completed,
    /// An administrator stopped it at its last closed round or step.
    Stopped,
}

impl RunState {
    /// The state of a run resumed at `round` of `rounds` (administrator's acts from the log
    /// are re-applied after).
    pub fn at(round: u64, rounds: u64) -> Self {
        if round >= rounds {
            RunState::Finished(End::Completed)
        } else {
            RunState::Training
        }
    }

    /// Whether new work may be handed out.
    pub fn hands_out_work(self) -> bool {
        self == RunState::Training
    }

    /// Whether rounds and steps still close (training or paused).
    pub fn is_open(self) -> bool {
        !matches!(self, RunState::Finished(_))
    }

    /// Training or finished, as the run's phase.
    pub fn phase(self) -> Phase {
        match self {
            RunState::Training | RunState::Paused => Phase::Training,
            RunState::Finished(_) => Phase::Finished,
        }
    }

    /// Its name in `/api/status`: `training`, `paused`, `finished` or `stopped`.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Training => "training",
            RunState::Paused => "paused",
            RunState::Finished(End::Completed) => "finished",
            RunState::Finished(End::Stopped) => "stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_run_trains_until_its_last_round() {
        assert_eq!(RunState::at(3, 4), RunState::Training);
        assert_eq!(RunState::at(4, 4), RunState::Finished(End::Completed));
    }

    #[test]
    fn only_training_hands_out_work_and_paused_runs_still_close_rounds() {
        let all = [
            RunState::Training,
            RunState::Paused,
            RunState::Finished(End::Completed),
            RunState::Finished(End::Stopped),
        ];
        let work: Vec<bool> = all.iter().map(|s| s.hands_out_work()).collect();
        let open: Vec<bool> = all.iter().map(|s| s.is_open()).collect();
        assert_eq!(work, [true, false, false, false]);
        assert_eq!(open, [true, true, false, false]);
        let names: Vec<&str> = all.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["training", "paused", "finished", "stopped"]);
        assert_eq!(RunState::Paused.phase(), Phase::Training);
        assert_eq!(RunState::Finished(End::Stopped).phase(), Phase::Finished);
    }
}
