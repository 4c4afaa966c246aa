//! `tessera coordinator`: serves a run from a TOML config, resuming from its data directory
//! when it holds one; without a config, waits idle for an administrator's `create` (and a run
//! created so resumes from the configuration it saved in its data directory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tessera_coordinator::config::RunConfig;
use tessera_coordinator::core::Core;
use tessera_coordinator::gate::ConnectionLimits;
use tessera_coordinator::http_limit::RequestRate;
use tessera_coordinator::server::{self, AdminToken, Outcome, Running, ServeOptions};
use tessera_coordinator::store::{Store, Write};
use tessera_coordinator::{tls, web};
use tessera_protocol::log::LogEvent;
use tokio_rustls::rustls::ServerConfig;

use crate::keys;

/// Options of `coordinator`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run configuration (TOML). Without it the coordinator serves the run an administrator
    /// created in DATA_DIR before (its `run.toml`), or waits idle for `tessera admin create`
    /// (which needs `--admin-token-file`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Where the run's state, ledger and checkpoints live.
    #[arg(long, default_value = "tessera-run")]
    pub data_dir: PathBuf,
    /// The run's database (default: SQLite at DATA_DIR/run.db), e.g. `postgres://user@host/db`.
    #[arg(long)]
    pub database: Option<String>,
    /// Serve the contributor page from this directory (what `scripts/build-web` writes; default:
    /// the page this binary embedded when it was built, else `target/web-dist` when it holds a
    /// built page).
    #[arg(long)]
    pub web: Option<PathBuf>,
    /// Serve HTTPS and WSS with this certificate chain (PEM); needs `--tls-key`. Browsers only
    /// offer WebGPU to secure contexts, so any coordinator reached beyond localhost needs it.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept administrators' requests (`tessera admin`, `POST /api/admin`) bearing the token
    /// in this file (its first line, at least 16 characters). The environment variable
    /// `TESSERA_ADMIN_TOKEN` works too. Without either, administration is off.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Contributor connections held at once; more are refused (503) until one closes.
    #[arg(long, default_value_t = ConnectionLimits::default().total)]
    pub max_connections: usize,
    /// Contributor connections held at once from one IP address (raise it behind a proxy that
    /// hides contributors' addresses).
    #[arg(long, default_value_t = ConnectionLimits::default().per_address)]
    pub max_connections_per_address: usize,
    /// An origin (`https://host:port`) besides the coordinator's own whose pages may contribute
    /// (open `/ws`); repeatable. Browsers on other origins are refused (403).
    #[arg(long = "allow-origin")]
    pub allow_origins: Vec<String>,
    /// HTTP requests a second from one IP address (IPv6: one /64), on every endpoint, with
    /// bursts of twice that; more are answered 429 with Retry-After. 0 turns the limit off.
    #[arg(long, default_value_t = RequestRate::default().0)]
    pub requests_per_second: u32,
    /// Take admin tokens over plain HTTP from other machines too. Without it, a coordinator
    /// without TLS takes administrators' requests from this machine only (403 otherwise), as a
    /// token sent in the clear can be read on the way.
    #[arg(long)]
    pub allow_plain_admin: bool,
    /// The proof of work a contributor does before each connection: SHA-256 of a puzzle the
    /// coordinator issues (`GET /api/admission`) and its key must start with this many zero
    /// bits (about 2^N hashes: at 20 about half a second in a browser tab, a tenth on a native core; see README,
    /// "Running a public coordinator", for what it costs an attacker). 0 turns it off; at most 40.
    #[arg(long, default_value_t = tessera_coordinator::admission::DEFAULT_BITS,
          value_parser = clap::value_parser!(u8).range(0..=40))]
    pub admission_bits: u8,
}

/// How a started run is served, beyond where it listens.
#[derive(Default)]
pub struct Serving {
    /// The contributor page (`None`: `/` explains how to build one).
    pub page: Option<web::PageSource>,
    /// HTTPS and WSS.
    pub tls: Option<Arc<ServerConfig>>,
    /// The administrator's token.
    pub admin: Option<AdminToken>,
    /// Limits on contributor connections.
    pub limits: ConnectionLimits,
    /// HTTP requests a second from one address.
    pub request_rate: RequestRate,
    /// Origins besides its own whose pages may contribute.
    pub origins: Vec<String>,
    /// Take admin tokens over plain HTTP from other machines.
    pub allow_plain_admin: bool,
    /// Zero bits of the admission proof of work (0: none).
    pub admission_bits: u8,
}

/// The administrator's token: from `file`, else `TESSERA_ADMIN_TOKEN`, else none.
pub fn admin_token(file: Option<&Path>) -> Result<Option<AdminToken>> {
    keys::admin_secret(file)?
        .map(|s| AdminToken::new(&s).map_err(anyhow::Error::msg))
        .transpose()
}

/// The contributor page to serve: the directory given, else the copy this binary embedded when
/// it was built, else `target/web-dist` when it holds a built page; `None` when there is none
/// (`/` then explains how to build it).
pub fn web_page(given: Option<&Path>) -> Result<Option<web::PageSource>> {
    match given {
        Some(d) if web::is_built(d) => Ok(Some(web::PageSource::Dir(d.to_path_buf()))),
        Some(d) => anyhow::bail!(
            "{} does not hold a built contributor page: run scripts/build-web",
            d.display()
        ),
        None => {
            if let Some(files) = crate::page::EMBEDDED {
                return Ok(Some(web::PageSource::Embedded(files)));
            }
            let d = PathBuf::from("target/web-dist");
            Ok(web::is_built(&d).then_some(web::PageSource::Dir(d)))
        }
    }
}

/// Keeps the Hugging Face tokenizer of the run `cfg` configures (relative to `base`) beside
/// its checkpoints, where `tessera generate` finds it (nothing for a byte-level run).
pub async fn keep_tokenizer(cfg: &RunConfig, base: &Path, store: &Store) -> Result<()> {
    if let Some(t) = &cfg.data.tokenizer {
        let path = base.join(t);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading the tokenizer {}", path.display()))?;
        store.write_tokenizer(bytes).await?;
    }
    Ok(())
}

/// Opens (or resumes) the run in `data_dir` and starts serving it.
pub async fn start(
    cfg: &RunConfig,
    base: &Path,
    bind: SocketAddr,
    data_dir: &Path,
    database: Option<&str>,
    serving: Serving,
    created: Option<String>,
) -> Result<Running> {
    let Serving {
        page,
        tls,
        admin,
        limits,
        request_rate,
        origins,
        allow_plain_admin,
        admission_bits,
    } = serving;
    let (spec, init) = cfg.resolve(base)?;
    let store = Store::open(data_dir, database).await?;
    let lock = store.lock().await?;
    let id = keys::load_or_create(&data_dir.join("coordinator.key"))?;
    let core = match store.load(&spec.model, &lock).await? {
        Some((snap, accepted)) => {
            // The run goes on only under the rules its log started with: its draws, its
            // rounds' counts and its steps all follow from them.
            let started = store.read_log(0, 1).await?;
            let rules = tessera_coordinator::core::rules::RunRules::of(&spec);
            if let Some(LogEvent::Started { config, .. }) = started.first().map(|e| &e.entry.event)
            {
                if *config != rules.digest() {
                    anyhow::bail!(
                        "the run in {} started under other rules than this configuration gives (the digest its log's first entry commits differs; compare {} with the configuration it started with): restart it with that configuration, or fork it (tessera fork) to change them",
                        data_dir.display(),
                        data_dir.join("checkpoints").join("rules.json").display()
                    );
                }
            }
            println!(
                "resuming run {} at round {} ({} accepted contributions in the open round)",
                spec.name,
                snap.round,
                accepted.len()
            );
            let mut core = Core::resume(spec, id, snap, accepted);
            core.continue_log(store.log_head().await?);
            // The administrator's acts stay in force: they are in the log.
            let mut from = 0;
            loop {
                let page = store.read_log(from, 1000).await?;
                core.restore_from_log(page.iter().map(|e| &e.entry.event));
                if page.len() < 1000 {
                    break;
                }
                from += 1000;
            }
            core
        }
        None => {
            let mut core = Core::new(spec, id, init);
            if let Some(reason) = created {
                core.created_by_admin(reason);
            }
            store
                .write_rules(&tessera_coordinator::core::rules::RunRules::of(core.spec()))
                .await?;
            keep_tokenizer(cfg, base, &store).await?;
            // Committed at once, in one transaction: the log's first entries, the state row
            // and the initial checkpoint, so that a coordinator stopped before its first round
            // closes resumes this run (and its log) instead of starting a second one.
            let queued = core.take_queued();
            let snap = core.snapshot();
            let writes: Vec<Write<'_>> = queued
                .iter()
                .filter_map(Write::of)
                .chain([Write::Commit {
                    run: core.name(),
                    cfg: &core.spec().model,
                    snap: &snap,
                }])
                .collect();
            let ck = store
                .write(&writes)
                .await?
                .pop()
                .context("the initial checkpoint was not written")?;
            println!(
                "new run {}: initial weights in {}",
                core.name(),
                ck.display()
            );
            core
        }
    };
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let served = page.is_some();
    let (http, ws) = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let admin_on = admin.is_some();
    let opts = ServeOptions {
        extra: Some(page.map_or_else(web::not_built, web::page)),
        tls,
        admin,
        limits,
        request_rate,
        origins,
        allow_plain_admin,
        admission_bits,
    };
    let mut running = server::serve_with(core, store, listener, opts).await?;
    running.lock = Some(lock);
    println!(
        "coordinator listening on {http}://{} (workers: {ws}://{}/ws, status: /api/status)",
        running.addr, running.addr
    );
    if admin_on {
        println!("administration: POST /api/admin with the admin token (tessera admin)");
    }
    if served {
        println!(
            "contributor page: {http}://{} (open it in a browser with WebGPU)",
            running.addr
        );
    } else {
        println!(
            "no contributor page in this build ({http}://{}/ says how to build one); native workers can join",
            running.addr
        );
    }
    Ok(running)
}

/// Runs until the run finishes or Ctrl-C.
pub async fn run(a: Args) -> Result<()> {
    let page = web_page(a.web.as_deref())?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(tls::server_config(c, k)?),
        _ => None,
    };
    let token = admin_token(a.admin_token_file.as_deref())?;
    let saved = a.data_dir.join("run.toml");
    let cwd = std::env::current_dir().context("the working directory")?;
    let (text, base, created) = if let Some(path) = &a.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        (
            text,
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
            None,
        )
    } else if saved.exists() {
        let text = std::fs::read_to_string(&saved)
            .with_context(|| format!("reading {}", saved.display()))?;
        println!(
            "serving the run an administrator created ({})",
            saved.display()
        );
        (text, cwd, None)
    } else {
        let Some(token) = token.clone() else {
            anyhow::bail!("no --config: an idle coordinator waits for `tessera admin create`, which needs an admin token (--admin-token-file or TESSERA_ADMIN_TOKEN)");
        };
        let store = Store::open(&a.data_dir, a.database.as_deref()).await?;
        if store.log_head().await?.is_some() {
            anyhow::bail!(
                "{} holds a run but not its configuration: pass --config",
                a.data_dir.display()
            );
        }
        drop(store);
        let listener = tokio::net::TcpListener::bind(a.bind)
            .await
            .with_context(|| format!("binding {}", a.bind))?;
        println!(
            "no run yet: waiting on {} for an administrator's `tessera admin create`",
            a.bind
        );
        let limits = ConnectionLimits {
            total: a.max_connections,
            per_address: a.max_connections_per_address,
        };
        let c = tessera_coordinator::idle::wait_for_create(
            listener,
            tls.clone(),
            limits,
            token,
            a.allow_plain_admin,
            cwd.clone(),
        )
        .await
        .context("waiting for a run")?;
        std::fs::write(&saved, &c.config)
            .with_context(|| format!("writing {}", saved.display()))?;
        println!("run {} created by the administrator: {:?}", c.run, c.reason);
        (c.config, cwd, Some(c.reason))
    };
    let cfg = RunConfig::from_toml(&text)?;
    let mut running = start(
        &cfg,
        &base,
        a.bind,
        &a.data_dir,
        a.database.as_deref(),
        Serving {
            page,
            tls,
            admin: token,
            limits: ConnectionLimits {
                total: a.max_connections,
                per_address: a.max_connections_per_address,
            },
            request_rate: RequestRate(a.requests_per_second),
            origins: a.allow_origins.clone(),
            allow_plain_admin: a.allow_plain_admin,
            admission_bits: a.admission_bits,
        },
        created,
    )
    .await?;
    tokio::select! {
        r = running.finished.wait_for(|f| *f != Outcome::Running) => match r.map(|o| o.clone()) {
            Ok(Outcome::Failed(why)) => anyhow::bail!("{why}"),
            _ => {
                // Let the last answers (receipts, the administrator's reply) go out.
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                println!("run finished")
            }
        },
        _ = tokio::signal::ctrl_c() => println!("stopping (the run resumes from {} when restarted)", a.data_dir.display()),
    }
    Ok(())
}
