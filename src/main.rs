//! `kelsond`: command line, logging, the internal namespace helpers, `repair-db`; `serve` is
//! handed to the composition root (`daemon.rs`).
#![forbid(unsafe_code)]

mod daemon;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kelson::config::{Config, DEFAULT_CONFIG_PATH, LogFormat, Overrides};
use kelson::dirs::Dirs;
use kelson::store::Store;

#[derive(Parser)]
#[command(
    name = "kelsond",
    version,
    about = "kelson: a native Kubernetes CRI runtime"
)]
struct Cli {
    /// Config file (TOML); a missing default file means built-in defaults.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Persistent data directory.
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Runtime state directory.
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// CRI socket path.
    #[arg(long, global = true)]
    address: Option<PathBuf>,
    /// Log level or tracing filter (e.g. "info", "kelson=debug").
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve CRI (the default).
    Serve,
    /// Print the effective configuration as TOML.
    Config,
    /// Check the database; with --rebuild, move a corrupt one aside and start empty (images are
    /// re-pulled on demand; snapshots without records are collected).
    RepairDb {
        #[arg(long)]
        rebuild: bool,
    },
    /// Internal: create and pin a pod's namespaces (run by kelsond itself).
    #[command(hide = true)]
    PinNs {
        #[arg(long)]
        net: Option<PathBuf>,
        #[arg(long)]
        ipc: Option<PathBuf>,
        #[arg(long)]
        uts: Option<PathBuf>,
        #[arg(long)]
        pid: Option<PathBuf>,
        #[arg(long)]
        hostname: Option<String>,
        /// Pin a user namespace here and make the others inside it.
        #[arg(long, requires_all = ["uid_map", "gid_map"])]
        user: Option<PathBuf>,
        /// `container:host:length[,…]`
        #[arg(long)]
        uid_map: Option<String>,
        #[arg(long)]
        gid_map: Option<String>,
    },
    /// Internal: the pin helper's child that makes a pod's namespaces inside its user namespace.
    #[command(hide = true)]
    UsernsChild {
        #[arg(long)]
        net: bool,
        #[arg(long)]
        ipc: bool,
        #[arg(long)]
        uts: bool,
        #[arg(long)]
        pid: bool,
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Internal: PID 1 of a pod's shared PID namespace (reaps orphans).
    #[command(hide = true)]
    PodHolder,
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let mut cfg = Config::load(&path, explicit)?;
    cfg.apply(Overrides {
        root: cli.root.clone(),
        state: cli.state.clone(),
        address: cli.address.clone(),
        log_level: cli.log_level.clone(),
    })?;
    Ok(cfg)
}

fn main() -> std::process::ExitCode {
    // Before anything is created: no file of kelsond's or its helpers' is ever readable by
    // other users because a mode was forgotten (the explicit modes are in `owner_only`).
    kelson::owner_only::restrict_umask();
    let cli = Cli::parse();
    // The namespace helper runs before anything else: it must stay single-threaded.
    if let Some(Command::PodHolder) = &cli.command {
        kelson::pod::holder::hold();
    }
    let helper_exit = |r: Result<(), kelson::pod::namespaces::NsError>| match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    };
    if let Some(Command::UsernsChild {
        net,
        ipc,
        uts,
        pid,
        hostname,
    }) = &cli.command
    {
        return helper_exit(kelson::pod::namespaces::userns_child(
            *net,
            *ipc,
            *uts,
            *pid,
            hostname.as_deref(),
        ));
    }
    if let Some(Command::PinNs {
        net,
        ipc,
        uts,
        pid,
        hostname,
        user,
        uid_map,
        gid_map,
    }) = &cli.command
    {
        use kelson::pod::userns;
        let user = match (user, uid_map, gid_map) {
            (Some(p), Some(u), Some(g)) => match (userns::parse_arg(u), userns::parse_arg(g)) {
                (Some(uids), Some(gids)) => Some((p.clone(), userns::UserNs { uids, gids })),
                _ => {
                    eprintln!("pin-ns: bad --uid-map or --gid-map");
                    return std::process::ExitCode::FAILURE;
                }
            },
            _ => None,
        };
        let req = kelson::pod::namespaces::PinRequest {
            net: net.clone(),
            ipc: ipc.clone(),
            uts: uts.clone(),
            pid: pid.clone(),
            hostname: hostname.clone(),
            user,
        };
        return helper_exit(kelson::pod::namespaces::pin_here(&req));
    }
    let cfg = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kelsond: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(Command::Config) => {
            print!("{}", cfg.to_toml());
            Ok(())
        }
        Some(Command::RepairDb { rebuild }) => repair_db(&cfg, rebuild),
        Some(Command::Serve) | None => run(cfg),
        Some(Command::PinNs { .. })
        | Some(Command::UsernsChild { .. })
        | Some(Command::PodHolder) => Ok(()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("kelsond: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&cfg.log_level);
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

fn repair_db(cfg: &Config, rebuild: bool) -> anyhow::Result<()> {
    let dirs = Dirs::new(&cfg.root, &cfg.state);
    let path = dirs.database();
    match Store::open(&path) {
        Ok(s) => {
            let n = s.images().context("reading image records")?.len();
            println!("database {} is consistent ({n} images)", path.display());
            Ok(())
        }
        Err(e) if rebuild => {
            let aside = path.with_extension(format!("corrupt-{}", std::process::id()));
            std::fs::rename(&path, &aside)
                .with_context(|| format!("moving {} aside", path.display()))?;
            // It still holds container configs (env values included), whatever mode an older
            // kelsond gave it.
            kelson::owner_only::narrow_file(&aside)
                .with_context(|| format!("narrowing {}", aside.display()))?;
            Store::open(&path)?;
            println!(
                "{e}\nmoved the corrupt database to {} and created an empty one",
                aside.display()
            );
            Ok(())
        }
        Err(e) => {
            anyhow::bail!("{e}; run `kelsond repair-db --rebuild` to move it aside and start empty")
        }
    }
}

/// glibc malloc arenas for the daemon: its work is syscalls and child processes, not allocation.
const MALLOC_ARENAS: i32 = 2;

fn run(cfg: Config) -> anyhow::Result<()> {
    init_logging(&cfg);
    // Before the runtime's threads exist (see sys::limit_malloc_arenas).
    kelson::sys::limit_malloc_arenas(MALLOC_ARENAS);
    // Blocking work (mounts, unpacking, process spawns) runs on the blocking pool; a burst of
    // pod starts must not leave dozens of idle threads (and their malloc arenas) behind.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
        .context("starting tokio")?;
    rt.block_on(daemon::start(cfg))
}
