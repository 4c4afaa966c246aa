//! Where a run stands: training, paused by its administrator, stopping (an administrator's stop
//! waits for the round or step in progress), or finished (every round done, or stopped). One
//! value, changed only by the core's dispatcher, the close of a round or step, and the
//! administrator's acts; everything that asks "may work go out?" or "is the run over?" asks it.
//! (Before a run exists the coordinator is idle: that state is the idle shell, `crate::idle`,
//! which has no core and answers `/api/status` with the state `idle`.)

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
    /// An administrator stopped the run while a round or step was in progress: work for that
    /// round or step still goes out and comes in, and its close ends the run
    /// ([`End::Stopped`]); no later one opens. A second stop ends it at once.
    Stopping,
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
        matches!(self, RunState::Training | RunState::Stopping)
    }

    /// The state once the open round or step has closed (`last`: it was the run's last).
    pub fn after_close(self, last: bool) -> Self {
        match self {
            _ if last => RunState::Finished(End::Completed),
            RunState::Stopping => RunState::Finished(End::Stopped),
            other => other,
        }
    }

    /// Whether rounds and steps still close (training or paused).
    pub fn is_open(self) -> bool {
        !matches!(self, RunState::Finished(_))
    }

    /// Training or finished, as the run's phase.
    pub fn phase(self) -> Phase {
        match self {
            RunState::Training | RunState::Paused | RunState::Stopping => Phase::Training,
            RunState::Finished(_) => Phase::Finished,
        }
    }

    /// Its name in `/api/status`: `training`, `paused`, `stopping`, `finished` or `stopped`.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Training => "training",
            RunState::Paused => "paused",
            RunState::Stopping => "stopping",
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
            RunState::Stopping,
            RunState::Finished(End::Completed),
            RunState::Finished(End::Stopped),
        ];
        let work: Vec<bool> = all.iter().map(|s| s.hands_out_work()).collect();
        let open: Vec<bool> = all.iter().map(|s| s.is_open()).collect();
        assert_eq!(work, [true, false, true, false, false]);
        assert_eq!(open, [true, true, true, false, false]);
        let names: Vec<&str> = all.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            ["training", "paused", "stopping", "finished", "stopped"]
        );
        assert_eq!(RunState::Paused.phase(), Phase::Training);
        assert_eq!(RunState::Stopping.phase(), Phase::Training);
        assert_eq!(RunState::Finished(End::Stopped).phase(), Phase::Finished);
    }

    #[test]
    fn a_close_ends_a_stopping_run_and_the_last_close_any_run() {
        use RunState::*;
        assert_eq!(Training.after_close(false), Training);
        assert_eq!(Paused.after_close(false), Paused);
        assert_eq!(Stopping.after_close(false), Finished(End::Stopped));
        assert_eq!(Training.after_close(true), Finished(End::Completed));
        assert_eq!(Stopping.after_close(true), Finished(End::Completed));
    }
}
