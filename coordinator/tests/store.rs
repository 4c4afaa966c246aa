//! The run's storage: a commit, accepted contributions of the open round, and a reload that
//! gives back exactly the committed snapshot and the open round's contributions; the ledger
//! keeps every accepted contribution.

mod common;

use tessera_coordinator::core::{weights_digest, Contribution, Snapshot};
use tessera_coordinator::store::{Store, Write};
use tessera_protocol::log::{LogEntry, LogEvent, SignedEntry};
use tessera_protocol::messages::{NamedTensor, Update};
use tessera_protocol::TensorPayload;

/// The PostgreSQL tests share one database, whose advisory lock is the run's serving lock: they
/// take turns, or one test's lock would refuse the other's.
static POSTGRES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn contribution(round: u64, slot: u64, who: u8) -> Contribution {
    Contribution {
        round,
        slot,
        unit: round * 10 + slot,
        contributor: tessera_protocol::Identity::from_seed([who; 32]).public(),
        tokens: 512,
        loss_sum: 1000.0 + slot as f64,
        update: Update::Dense(vec![NamedTensor {
            name: "x".into(),
            tensor: TensorPayload::from_f32(&[2], &[1.0, slot as f32]),
        }]),
    }
}

#[tokio::test]
async fn commit_record_and_reload_sqlite() {
    exercise("sqlite", None).await;
}

/// The same against PostgreSQL; `scripts/test-all` starts a server and sets
/// `TESSERA_TEST_POSTGRES_URL`, so CI always runs it.
#[tokio::test]
async fn commit_record_and_reload_postgres() {
    let Ok(url) = std::env::var("TESSERA_TEST_POSTGRES_URL") else {
        println!("TESSERA_TEST_POSTGRES_URL is not set: PostgreSQL not exercised here");
        return;
    };
    let _turn = POSTGRES.lock().await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url)
        .await
        .expect("connect to the test database");
    sqlx::query("DROP TABLE IF EXISTS run_state")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DROP TABLE IF EXISTS ledger")
        .execute(&pool)
        .await
        .unwrap();
    exercise("postgres", Some(&url)).await;
}

async fn exercise(name: &str, url: Option<&str>) {
    let dir = std::env::temp_dir().join(format!("tessera-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = common::tiny_model();
    let store = Store::open(&dir, url).await.unwrap();
    let held = store.lock().await.unwrap();
    assert!(
        store.load(&cfg, &held).await.unwrap().is_none(),
        "a fresh store holds no run"
    );
    assert_eq!(store.open_round().await.unwrap(), None);
    let weights = tessera_compute::reference::ModelParams::random(&cfg, 4);
    let snap = Snapshot {
        moments: None,
        aggregate: None,
        round: 2,
        version: 2,
        weights: weights.clone(),
        digest: weights_digest(&weights),
        losses: vec![5.0, 4.0],
        next_unit: 9,
        next_lease: 4,
    };
    // Round 1's contribution, then the commit of round 2, then two of round 2.
    store.record(&contribution(1, 0, 1)).await.unwrap();
    let ck = store.commit("t", &cfg, &snap).await.unwrap();
    assert!(ck.join("model.safetensors").exists() && ck.join("config.json").exists());
    // Named by its version and its weights' digest.
    let name = tessera_coordinator::store::checkpoint_name(2, &weights_digest(&weights));
    assert_eq!(ck.file_name().and_then(|n| n.to_str()), Some(name.as_str()));
    store.record(&contribution(2, 1, 2)).await.unwrap();
    store.record(&contribution(2, 0, 3)).await.unwrap();
    assert!(
        store.record(&contribution(2, 0, 3)).await.is_err(),
        "a slot is accepted once"
    );
    assert_eq!(
        store.open_round().await.unwrap(),
        Some((2, 2)),
        "the open round and its accepted rows, read without the lock"
    );
    held.release().await.unwrap();
    drop(store);
    // A crash between a round's checkpoint files and its rows leaves files of a version the
    // run does not hold, or of the committed version under another name (a round that ran
    // again after such a crash); loading drops them and keeps the committed one.
    let stray = dir.join("checkpoints/round-3-0011223344556677");
    let twin = dir.join("checkpoints/round-2-0011223344556677");
    for d in [&stray, &twin] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(
            d.join("model.safetensors"),
            b"from a batch that never committed",
        )
        .unwrap();
    }
    let store = Store::open(&dir, url).await.unwrap();
    let held = store.lock().await.unwrap();
    let (got, accepted) = store
        .load(&cfg, &held)
        .await
        .unwrap()
        .expect("a committed run");
    assert_eq!(got, snap);
    assert_eq!(accepted, vec![contribution(2, 0, 3), contribution(2, 1, 2)]);
    let per = store.accepted_per_contributor().await.unwrap();
    assert_eq!(
        per.iter().map(|(_, n)| n).sum::<u64>(),
        3,
        "the ledger keeps closed rounds' rows"
    );
    assert_eq!(
        blobs(&dir)
            .iter()
            .filter(|b| b.starts_with("round-1-"))
            .count(),
        0,
        "closed rounds' blobs are dropped"
    );
    assert!(
        !stray.join("model.safetensors").exists() && !twin.join("model.safetensors").exists(),
        "an orphan checkpoint is dropped"
    );
    assert!(
        ck.join("model.safetensors").exists(),
        "the committed checkpoint stays"
    );
    // A pipeline run's snapshot carries the AdamW moments; they come back with it.
    let piped = Snapshot {
        aggregate: None,
        round: 3,
        version: 3,
        moments: Some((
            tessera_compute::reference::ModelParams::random(&cfg, 5),
            tessera_compute::reference::ModelParams::random(&cfg, 6),
        )),
        ..snap.clone()
    };
    let ck = store.commit("t", &cfg, &piped).await.unwrap();
    assert_eq!(
        store.load(&cfg, &held).await.unwrap().expect("committed").0,
        piped
    );
    std::fs::remove_file(ck.join("adam_v.safetensors")).unwrap();
    assert!(
        store.load(&cfg, &held).await.is_err(),
        "half a pair of moments is refused, not silently reset"
    );
    // Weights that are not the ones the checkpoint's name records are refused.
    let model = ck.join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&model, bytes).unwrap();
    let err = store.load(&cfg, &held).await.unwrap_err().to_string();
    assert!(err.contains("not the ones its name records"), "{err}");
    held.release().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The update blobs kept in a run directory (file names).
fn blobs(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("ledger"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn entry(index: u64) -> SignedEntry {
    let id = tessera_protocol::Identity::from_seed([7; 32]);
    SignedEntry::seal(
        LogEntry {
            index,
            prev: [0; 32],
            time_ms: index,
            event: LogEvent::Started {
                run: "t".into(),
                coordinator: id.public(),
                config: [0; 32],
            },
        },
        &id,
    )
}

/// A batch is all or nothing: one whose transaction fails (its second log entry reuses an
/// index) leaves neither its log entries nor its ledger row, and the blob it wrote first is
/// collected on the next load; a slot withdrawn and accepted again keeps both updates apart
/// (blobs are named by content) and reloads with the second.
#[tokio::test]
async fn a_batch_is_all_or_nothing_and_orphans_are_collected() {
    let dir = std::env::temp_dir().join(format!("tessera-store-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = common::tiny_model();
    let store = Store::open(&dir, None).await.unwrap();
    let weights = tessera_compute::reference::ModelParams::random(&cfg, 4);
    let snap = Snapshot {
        moments: None,
        aggregate: None,
        round: 1,
        version: 0,
        digest: weights_digest(&weights),
        weights,
        losses: vec![],
        next_unit: 1,
        next_lease: 1,
    };
    let (e0, e1) = (entry(0), entry(1));
    let first = contribution(1, 0, 1);
    store
        .write(&[
            Write::Commit {
                run: "t",
                cfg: &cfg,
                snap: &snap,
            },
            Write::Log(&e0),
            Write::Record(&first),
        ])
        .await
        .unwrap();
    let other = contribution(1, 1, 2);
    let failed = store
        .write(&[Write::Log(&e1), Write::Record(&other), Write::Log(&e1)])
        .await;
    assert!(failed.is_err(), "an index is written once");
    assert_eq!(store.read_log(0, 10).await.unwrap(), vec![e0.clone()]);
    assert_eq!(
        blobs(&dir).len(),
        2,
        "the failed batch's blob was written first"
    );
    // The slot runs again after a withdrawal: another update, another blob.
    let mut again = contribution(1, 0, 3);
    again.loss_sum += 1.0;
    store
        .write(&[
            Write::Withdraw { round: 1, slot: 0 },
            Write::Log(&e1),
            Write::Record(&again),
        ])
        .await
        .unwrap();
    drop(store);
    let store = Store::open(&dir, None).await.unwrap();
    let held = store.lock().await.unwrap();
    let (_, accepted) = store.load(&cfg, &held).await.unwrap().expect("committed");
    assert_eq!(accepted, vec![again]);
    assert_eq!(store.read_log(0, 10).await.unwrap(), vec![e0, e1]);
    assert_eq!(
        blobs(&dir).len(),
        1,
        "the failed batch's and the withdrawn update's blobs are collected: {:?}",
        blobs(&dir)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A data directory whose run log an earlier format wrote (version 1: bare hex) is refused by
/// name, not decoded as today's entries; its stored text stays readable for `tessera verify`.
#[tokio::test]
async fn a_version_1_run_log_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("tessera-store-v1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir, None).await.unwrap();
    let fixture = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/v1-logs/demo-run.json"),
    )
    .unwrap();
    // The first entry's text: `"signed": "<hex>"`.
    let at = fixture.find("\"signed\": \"").unwrap() + "\"signed\": \"".len();
    let v1 = &fixture[at..at + fixture[at..].find('"').unwrap()];
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", dir.join("run.db").display()))
        .await
        .unwrap();
    sqlx::query("INSERT INTO run_log (idx, entry) VALUES (0, $1)")
        .bind(v1)
        .execute(&pool)
        .await
        .unwrap();
    let err = store.read_log(0, 10).await.unwrap_err();
    assert!(
        matches!(
            err,
            tessera_coordinator::store::StoreError::LogVersion { version: 1 }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("tessera verify"), "{err}");
    let stored = store.read_log_stored(0, 10).await.unwrap();
    assert_eq!(stored, vec![(0, v1.to_string())]);
}

/// One coordinator per run: a second lock on the same data directory (or database) is refused
/// while the first is held, and taken once it is dropped.
async fn one_holder(name: &str, url: Option<&str>) {
    let dir = std::env::temp_dir().join(format!("tessera-lock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = Store::open(&dir, url).await.unwrap();
    let b = Store::open(&dir, url).await.unwrap();
    let held = a.lock().await.expect("the first lock");
    match b.lock().await {
        Err(e @ tessera_coordinator::store::StoreError::Locked { .. }) => {
            assert!(
                e.to_string().contains("another coordinator is serving"),
                "{e}"
            )
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("two coordinators hold {name}"),
    }
    drop(held);
    b.lock().await.expect("the lock once the first is gone");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn one_coordinator_per_data_directory() {
    one_holder("sqlite", None).await;
}

#[tokio::test]
async fn one_coordinator_per_postgres_database() {
    let Ok(url) = std::env::var("TESSERA_TEST_POSTGRES_URL") else {
        println!("TESSERA_TEST_POSTGRES_URL is not set: PostgreSQL not exercised here");
        return;
    };
    let _turn = POSTGRES.lock().await;
    // Its own directory each time, so only the database's advisory lock can refuse the second.
    let dir = std::env::temp_dir().join(format!("tessera-pglock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = Store::open(&dir.join("a"), Some(&url)).await.unwrap();
    let b = Store::open(&dir.join("b"), Some(&url)).await.unwrap();
    let held = a.lock().await.expect("the first lock");
    match b.lock().await {
        Err(e @ tessera_coordinator::store::StoreError::Locked { .. }) => {
            assert!(e.to_string().contains("PostgreSQL"), "{e}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("two coordinators hold one database"),
    }
    held.release().await.expect("giving the run up");
    let again = b.lock().await.expect("the lock once the first is given up");
    // A lock merely dropped (a coordinator killed) is freed when the server sees its
    // connection close: soon, though not necessarily by the next statement.
    drop(again);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match a.lock().await {
            Ok(last) => {
                last.release().await.expect("giving the run up again");
                break;
            }
            Err(tessera_coordinator::store::StoreError::Locked { .. })
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => panic!("the lock after the holder was dropped: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
