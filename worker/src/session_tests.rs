//! Unit tests of the session: a pinned coordinator.

use super::*;

fn session() -> Session {
    let caps = Capabilities {
        adapter: "test".into(),
        backend: "test".into(),
        max_binding_bytes: 1 << 20,
        memory_budget_bytes: 1 << 20,
    };
    Session::new(Identity::from_seed([1; 32]), ContributorKind::Native, caps)
}

fn challenge(coordinator: PublicKey) -> ToContributor {
    ToContributor::Challenge {
        nonce: [7; 32],
        coordinator,
        run: "r".into(),
    }
}

#[test]
fn a_pinned_session_answers_only_its_coordinator() {
    let ours = Identity::from_seed([2; 32]).public();
    let other = Identity::from_seed([3; 32]).public();
    let mut s = session();
    s.expect_coordinator(ours);
    let e = s.handle(challenge(other)).unwrap_err();
    assert!(e.is_final(), "{e}");
    assert!(
        e.to_string().contains(&format!("not the expected {ours}")),
        "{e}"
    );
    assert!(s.heartbeat().is_err(), "nothing was signed: no session");
    let r = s.handle(challenge(ours)).unwrap();
    assert!(matches!(r.send.as_slice(), [ToCoordinator::Proof { .. }]));
    // Unpinned, any coordinator gets the proof.
    let r = session().handle(challenge(other)).unwrap();
    assert!(matches!(r.send.as_slice(), [ToCoordinator::Proof { .. }]));
}
