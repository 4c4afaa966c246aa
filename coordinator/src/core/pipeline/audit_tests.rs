//! Unit tests of the pipeline's audits (`audit.rs`).

use std::collections::{BTreeMap, BTreeSet};

use tessera_protocol::log::CheckOutcome;
use tessera_protocol::{Code, Identity, Reason};

use tessera_protocol::pipeline::{Pass, PipeResult, PipeWork};
use tessera_protocol::ToContributor;
use tessera_train::shards::to_wire;

use super::super::testing::{pipe, spec};
use super::super::Holding;
use super::{AuditPhase, LeaseAudit, Pipe};
use crate::core::context::testing::{active, context};
use crate::core::context::Context;
use crate::core::spec::ChecksSpec;
use crate::core::{Action, ConnId};

fn audit(seed: u8, phase: AuditPhase) -> LeaseAudit {
    LeaseAudit {
        key: Identity::from_seed([seed; 32]).public(),
        sent: BTreeMap::new(),
        done: Vec::new(),
        sums: None,
        phase,
        tried: BTreeSet::new(),
        tally: Default::default(),
    }
}

/// The pipeline of `spec` at step 0 with a check of lease 1 (connection 1, holding the
/// embedding) that recorded one unit, and lease 2 (connection 2) holding the embedding
/// too, its weights still loading.
fn waiting_for_a_loading_holder() -> (Context, Pipe) {
    let spec = spec().with_checks(ChecksSpec::default());
    let mut cx = context(spec.clone());
    let mut p = pipe(&spec, vec![(0, 0)]);
    let key = active(&mut cx, 1, 1, Some(1));
    active(&mut cx, 2, 2, Some(2));
    cx.sessions.get_mut(&2).unwrap().ready = false;
    p.holdings.insert(
        2,
        Holding {
            conn: 2,
            shards: vec![(0, 0)],
        },
    );
    let unit = PipeWork {
        unit: 7,
        lease: 1,
        step: 0,
        micro_batch: 0,
        stages: [0, 1],
        shards: vec![to_wire(&p.spec.stages[0][0])],
        pass: Pass::Forward,
        weights: 0,
        tokens: None,
        input: None,
        grad: None,
        head: None,
        output: p.spec.activations,
    };
    let mut a = audit(1, AuditPhase::Recording);
    a.key = key;
    a.done.push((unit, PipeResult::Accumulated));
    p.step.audits.insert(1, a);
    (cx, p)
}

fn audits_sent(cx: &Context) -> Vec<ConnId> {
    cx.out
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                conn,
                msg: ToContributor::Audit(_),
            } => Some(*conn),
            _ => None,
        })
        .collect()
}

#[test]
fn a_check_waits_a_unit_deadline_for_a_holder_still_loading_its_lease() {
    // The holder becomes ready within the wait: it audits.
    let (mut cx, mut p) = waiting_for_a_loading_holder();
    p.start_audit(&mut cx, 1, None);
    let until = cx.now + cx.spec.unit_deadline_ms;
    assert_eq!(
        p.step.audits[&1].phase,
        AuditPhase::Waiting { until, first: None }
    );
    assert!(audits_sent(&cx).is_empty());
    cx.now = until - 1;
    p.expire_audits(&mut cx, None);
    assert!(matches!(
        p.step.audits[&1].phase,
        AuditPhase::Waiting { .. }
    ));
    cx.sessions.get_mut(&2).unwrap().ready = true;
    p.expire_audits(&mut cx, None);
    assert!(
        matches!(
            p.step.audits[&1].phase,
            AuditPhase::Running { lease: 2, .. }
        ),
        "{:?}",
        p.step.audits[&1].phase
    );
    assert_eq!(audits_sent(&cx), vec![2]);

    // It never becomes ready: once the wait is over, nobody is left.
    let (mut cx, mut p) = waiting_for_a_loading_holder();
    p.start_audit(&mut cx, 1, None);
    cx.now += cx.spec.unit_deadline_ms;
    p.expire_audits(&mut cx, None);
    let AuditPhase::Resolved(CheckOutcome::Skipped(why)) = &p.step.audits[&1].phase else {
        panic!("{:?}", p.step.audits[&1].phase);
    };
    assert_eq!(why.code, Code::NoAuditor);
    assert!(audits_sent(&cx).is_empty());
}

#[test]
fn a_step_commits_only_when_no_resolved_check_found_anything_wrong() {
    let spec = spec();
    let mut p = pipe(&spec, vec![(0, 0)]);
    let why = Reason::new(Code::CheckFailed, "the gradient sums differ");
    p.step.audits.insert(1, audit(1, AuditPhase::Recording));
    p.step.audits.insert(
        2,
        audit(2, AuditPhase::Resolved(CheckOutcome::Skipped(why.clone()))),
    );
    p.step
        .audits
        .insert(3, audit(3, AuditPhase::Resolved(CheckOutcome::Passed)));
    assert_eq!(p.audit_failure(), None, "nothing found wrong");
    for outcome in [
        CheckOutcome::Failed(why.clone()),
        CheckOutcome::AuditorFailed(why.clone()),
        CheckOutcome::Disputed(why.clone()),
    ] {
        p.step
            .audits
            .insert(4, audit(4, AuditPhase::Resolved(outcome.clone())));
        let stop = p.audit_failure().expect("the step cannot commit");
        assert_eq!(stop.code, Code::Discarded, "{outcome:?}");
        assert_eq!(
            p.only_disputed(),
            matches!(outcome, CheckOutcome::Disputed(_)),
            "{outcome:?}"
        );
        let who = Identity::from_seed([4; 32]).public().fingerprint();
        assert!(stop.text.as_str().contains(&who), "{stop:?}");
    }
}
