//! Frames, tensors, identities and signed messages: round trips, and every kind of bad input
//! refused with a clear error (never a panic).

use tessera_protocol::identity::{handshake_message, HANDSHAKE};
use tessera_protocol::messages::{
    Capabilities, ContributorKind, LogHead, NamedTensor, SessionMessage, Submission, Update,
};
use tessera_protocol::{
    decode, encode, DType, Identity, ProtocolError, ReplayGuard, Signed, TensorPayload,
    ToContributor, ToCoordinator, MAX_FRAME_BYTES, PROTOCOL_VERSION,
};

fn id(n: u8) -> Identity {
    Identity::from_seed([n; 32])
}

fn hello() -> ToCoordinator {
    ToCoordinator::Hello {
        key: id(1).public(),
        kind: ContributorKind::Native,
        software: "tessera 0.1.0".into(),
        capabilities: Capabilities {
            adapter: "llvmpipe".into(),
            backend: "Vulkan".into(),
            max_binding_bytes: 128 << 20,
            memory_budget_bytes: 1 << 30,
        },
    }
}

fn submission() -> Submission {
    Submission {
        unit: 7,
        lease: 3,
        weights: 2,
        tokens: 512,
        loss_sum: 1234.5,
        result: Update::Dense(vec![NamedTensor {
            name: "model.norm.weight".into(),
            tensor: TensorPayload::from_f32(&[3], &[1.0, -2.0, 0.5]),
        }]),
        log_head: LogHead {
            index: 4,
            hash: [9; 32],
        },
    }
}

#[test]
fn messages_round_trip() {
    let nonce = [5u8; 32];
    let signed = Signed::new(&id(1), &nonce, 1, SessionMessage::Submit(submission())).unwrap();
    for m in [
        hello(),
        ToCoordinator::Proof {
            signature: id(1).sign(HANDSHAKE, b"x"),
        },
        ToCoordinator::Session(signed),
    ] {
        let f = encode(&m).unwrap();
        assert_eq!(decode::<ToCoordinator>(&f, MAX_FRAME_BYTES).unwrap(), m);
    }
    let c = ToContributor::Challenge {
        nonce,
        coordinator: id(2).public(),
        run: "demo".into(),
    };
    assert_eq!(
        decode::<ToContributor>(&encode(&c).unwrap(), MAX_FRAME_BYTES).unwrap(),
        c
    );
}

#[test]
fn bad_frames_are_refused() {
    let f = encode(&hello()).unwrap();
    assert!(matches!(
        decode::<ToCoordinator>(&f, f.len() - 1),
        Err(ProtocolError::TooLarge { .. })
    ));
    let mut bad = f.clone();
    bad[0] = b'X';
    assert_eq!(
        decode::<ToCoordinator>(&bad, MAX_FRAME_BYTES),
        Err(ProtocolError::BadMagic)
    );
    let mut v2 = f.clone();
    v2[4..8].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    let e = decode::<ToCoordinator>(&v2, MAX_FRAME_BYTES).unwrap_err();
    assert_eq!(
        e,
        ProtocolError::Version {
            got: PROTOCOL_VERSION + 1,
            want: PROTOCOL_VERSION
        }
    );
    assert!(e.to_string().contains(&format!(
        "protocol version {} is not supported",
        PROTOCOL_VERSION + 1
    )));
    assert!(matches!(
        decode::<ToCoordinator>(&f[..f.len() - 3], MAX_FRAME_BYTES),
        Err(ProtocolError::Malformed(_))
    ));
    let mut long = f.clone();
    long.push(0);
    assert!(matches!(
        decode::<ToCoordinator>(&long, MAX_FRAME_BYTES),
        Err(ProtocolError::Malformed(_))
    ));
    assert_eq!(
        decode::<ToCoordinator>(b"TSR", MAX_FRAME_BYTES),
        Err(ProtocolError::BadMagic)
    );
}

/// Deterministic mutation fuzzing of the decoder (the `fuzz/` target does the same with
/// libFuzzer): no input may panic, and whatever decodes must re-encode to a frame that decodes
/// to the same message.
#[test]
fn mutated_frames_never_panic() {
    let nonce = [5u8; 32];
    let seeds: Vec<Vec<u8>> = vec![
        encode(&hello()).unwrap(),
        encode(&ToCoordinator::Session(
            Signed::new(&id(1), &nonce, 9, SessionMessage::Submit(submission())).unwrap(),
        ))
        .unwrap(),
    ];
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut decoded = 0;
    for i in 0..20_000 {
        let mut f = seeds[i % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let pos = (next() as usize) % f.len();
            match next() % 4 {
                0 => f[pos] = next() as u8,
                1 => f.truncate(pos.max(8)),
                2 => f.insert(pos, next() as u8),
                _ => f[pos] ^= 1 << (next() % 8),
            }
        }
        if let Ok(m) = decode::<ToCoordinator>(&f, MAX_FRAME_BYTES) {
            decoded += 1;
            // Compared as bytes: a decoded float may be NaN.
            let again = encode(&m).unwrap();
            let back: ToCoordinator = decode(&again, MAX_FRAME_BYTES).unwrap();
            assert_eq!(encode(&back).unwrap(), again);
        }
    }
    println!("{decoded} of 20000 mutated frames still decoded");
}

#[test]
fn tensors_are_checked() {
    let t = TensorPayload::from_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(t.to_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    t.expect_shape(&[2, 3]).unwrap();
    assert!(t.expect_shape(&[3, 2]).is_err());
    let mut short = t.clone();
    short.data.pop();
    assert!(matches!(short.to_f32(), Err(ProtocolError::BadTensor(_))));
    let nan = TensorPayload::from_f32(&[2], &[1.0, f32::NAN]);
    assert!(nan
        .to_f32()
        .unwrap_err()
        .to_string()
        .contains("element 1 is NaN"));
    let inf = TensorPayload::from_f32(&[1], &[f32::INFINITY]);
    assert!(inf.to_f32().is_err());
    let huge = TensorPayload {
        dtype: DType::F32,
        shape: vec![u64::MAX, 2],
        data: vec![],
    };
    assert!(huge.validate().is_err());
    let b = TensorPayload::from_f32_as_bf16(&[3], &[1.0, -2.5, 3.3333]);
    let back = b.to_f32().unwrap();
    assert_eq!(back[..2], [1.0, -2.5]);
    assert!((back[2] - 3.3333).abs() < 0.01);
    assert!(
        TensorPayload::from_u32(&[2], &[1, 2]).to_f32().is_err(),
        "u32 is not a float payload"
    );
}

#[test]
fn handshake_and_signatures() {
    let (alice, coord) = (id(1), id(2));
    let nonce = [7u8; 32];
    let msg = handshake_message(&nonce, &coord.public(), &alice.public());
    let sig = alice.sign(HANDSHAKE, &msg);
    alice.public().verify(HANDSHAKE, &msg, &sig).unwrap();
    // Another nonce, another coordinator, another domain or another key: refused.
    assert!(alice
        .public()
        .verify(
            HANDSHAKE,
            &handshake_message(&[8; 32], &coord.public(), &alice.public()),
            &sig
        )
        .is_err());
    assert!(alice
        .public()
        .verify(
            HANDSHAKE,
            &handshake_message(&nonce, &id(3).public(), &alice.public()),
            &sig
        )
        .is_err());
    assert!(alice.public().verify("message", &msg, &sig).is_err());
    assert!(id(4).public().verify(HANDSHAKE, &msg, &sig).is_err());
    // A key that is not a curve point is an error, not a panic.
    let mut bogus = [0u8; 32];
    bogus[31] = 0x80;
    bogus[0] = 2;
    assert!(tessera_protocol::PublicKey(bogus)
        .verify(HANDSHAKE, &msg, &sig)
        .is_err());
    let hex = alice.public().to_string();
    assert_eq!(
        tessera_protocol::PublicKey::from_hex(&hex).unwrap(),
        alice.public()
    );
    assert!(tessera_protocol::PublicKey::from_hex("zz").is_err());
    assert_eq!(Identity::from_seed(alice.seed()).public(), alice.public());
}

#[test]
fn signed_messages_bind_signer_session_and_sequence() {
    let (alice, mallory) = (id(1), id(6));
    let session = [3u8; 32];
    let m = Signed::new(&alice, &session, 5, SessionMessage::Submit(submission())).unwrap();
    assert!(m.verify(&session, &alice.public()).is_ok());
    // Another session (a replay after reconnecting) fails.
    assert!(m.verify(&[4; 32], &alice.public()).is_err());
    // Tampering with the body or the sequence number fails.
    let mut t = m.clone();
    if let SessionMessage::Submit(s) = &mut t.body {
        s.tokens += 1;
    }
    assert!(t.verify(&session, &alice.public()).is_err());
    let mut t = m.clone();
    t.seq = 6;
    assert!(t.verify(&session, &alice.public()).is_err());
    // Submitting under another's key: signed by mallory, claiming alice.
    let mut forged = Signed::new(&mallory, &session, 5, SessionMessage::Leave).unwrap();
    assert!(forged.verify(&session, &alice.public()).is_err());
    forged.signer = alice.public();
    assert!(forged.verify(&session, &alice.public()).is_err());
    // Replays within the session are refused.
    let mut g = ReplayGuard::default();
    g.accept(5).unwrap();
    assert_eq!(g.accept(5), Err(ProtocolError::Replay { got: 5, last: 5 }));
    assert!(g.accept(4).is_err());
    g.accept(9).unwrap();
}

/// Stored files of unchanged types (calibration files, unit fixtures) written by an earlier
/// protocol version still decode with `decode_since`; live decoding refuses them.
#[test]
fn files_of_earlier_versions_decode_only_where_asked() {
    use tessera_protocol::{decode_since, WORK_FORMAT_SINCE};
    let t = tessera_protocol::TensorPayload::from_f32(&[2], &[1.0, 2.0]);
    let mut f = encode(&t).unwrap();
    f[4..8].copy_from_slice(&WORK_FORMAT_SINCE.to_le_bytes());
    if WORK_FORMAT_SINCE < PROTOCOL_VERSION {
        assert!(decode::<tessera_protocol::TensorPayload>(&f, MAX_FRAME_BYTES).is_err());
    }
    let back: tessera_protocol::TensorPayload =
        decode_since(&f, MAX_FRAME_BYTES, WORK_FORMAT_SINCE).unwrap();
    assert_eq!(back, t);
    f[4..8].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    assert!(decode_since::<tessera_protocol::TensorPayload>(
        &f,
        MAX_FRAME_BYTES,
        WORK_FORMAT_SINCE
    )
    .is_err());
}

#[test]
fn a_frame_cannot_decode_to_much_more_memory_than_its_size() {
    use tessera_protocol::pipeline::{AuditResult, PipeResult};
    let audit = |n: usize| {
        let audited = AuditResult {
            audit: 1,
            lease: 1,
            outputs: vec![PipeResult::Accumulated; n],
            grads: Vec::new(),
            log_head: LogHead::default(),
        };
        let msg = ToCoordinator::Session(
            Signed::new(&id(1), &[0; 32], 1, SessionMessage::Audited(audited)).unwrap(),
        );
        let frame = encode(&msg).unwrap();
        assert!(frame.len() < n + 1000);
        match decode::<ToCoordinator>(&frame, MAX_FRAME_BYTES) {
            Err(ProtocolError::Malformed(why)) => why,
            other => panic!("decoded: {:?}", other.map(|_| ())),
        }
    };
    // A million one-byte results: 1 MB on the wire, over 50 MB as `PipeResult`s.
    let why = audit(1_000_000);
    assert!(why.contains("more memory than its frame allows"), "{why}");
    // More entries than any list may have.
    let why = audit(2_000_000);
    assert!(why.contains("more than the 1048576 allowed"), "{why}");
    // Names and shapes have bounds of their own.
    let named = |name: String, shape: Vec<u64>| {
        let n = shape.iter().product::<u64>() as usize;
        let t = NamedTensor {
            name,
            tensor: TensorPayload {
                dtype: DType::F32,
                shape,
                data: vec![0; 4 * n],
            },
        };
        let mut s = submission();
        s.result = Update::Dense(vec![t]);
        let m = ToCoordinator::Session(
            Signed::new(&id(1), &[0; 32], 1, SessionMessage::Submit(s)).unwrap(),
        );
        decode::<ToCoordinator>(&encode(&m).unwrap(), MAX_FRAME_BYTES)
    };
    assert!(named("w".repeat(256), vec![2, 2]).is_ok());
    assert!(named("w".repeat(257), vec![2, 2]).is_err());
    assert!(named("w".into(), vec![1; 9]).is_err());
}

#[test]
fn a_frames_length_is_known_without_encoding_it() {
    let t = tessera_protocol::TensorPayload::from_f32(&[3, 5], &[0.25; 15]);
    assert_eq!(
        tessera_protocol::encoded_len(&t).unwrap(),
        encode(&t).unwrap().len()
    );
}
