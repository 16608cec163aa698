//! The voronka binary: serve the API, migrate, manage workspaces, users, API keys and
//! contacts, and run benchmarks.

/// `println!` that ends the process quietly when stdout is closed (`voronka … | head`)
/// instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!($($arg)*))
    };
}

mod admin;
mod bench;
mod bootstrap;
mod broadcast;
mod config;
mod contacts;
mod flow;
mod flow_test;
mod telemetry;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use voronka_store::DynStore;

/// Voronka: self-hosted messenger marketing.
///
/// Configuration comes from `voronka.toml` (or `--config FILE`) and `VORONKA_*`
/// environment variables, which win over the file. Keys: listen (default
/// 127.0.0.1:8080), database_url (default sqlite://./voronka-data/voronka.db), public_url,
/// secret_key (base64; default: the file secret.key beside the SQLite database, or in
/// ./voronka-data, generated on first use), log_format (text|json), log_level (default
/// info; RUST_LOG overrides).
///
/// Exit codes: 0 success, 1 error (message on stderr), 2 bad command line.
#[derive(Debug, Parser)]
#[command(name = "voronka", version, propagate_version = true)]
struct Cli {
    /// Configuration file (default: ./voronka.toml when it exists).
    #[arg(long, global = true, value_name = "FILE", env = "VORONKA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply database migrations, then serve the HTTP API until Ctrl-C or SIGTERM.
    Serve,
    /// Apply pending database migrations.
    Migrate,
    /// Manage workspaces.
    #[command(subcommand)]
    Workspace(admin::WorkspaceCommand),
    /// Manage users (people who log in to the admin UI).
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Apikey(admin::ApiKeyCommand),
    /// Import and export contacts as CSV.
    #[command(subcommand)]
    Contacts(contacts::ContactsCommand),
    /// Work with flow files (chatbot scenarios).
    #[command(subcommand)]
    Flow(flow::FlowCommand),
    /// Follow broadcasts from the terminal.
    #[command(subcommand)]
    Broadcast(broadcast::BroadcastCommand),
    /// Print the OpenAPI document of the HTTP API (JSON).
    Openapi,
    /// Measure performance.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run a protocol-faithful fake provider on 127.0.0.1 (for trying Voronka without
    /// real accounts, and for tests).
    #[command(subcommand)]
    Fake(FakeCommand),
}

#[derive(Debug, Subcommand)]
enum FakeCommand {
    /// A fake Telegram Bot API: point `telegram_api_url` at it.
    Telegram {
        /// Where to listen (loopback only).
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: std::net::SocketAddr,
        /// A bot to create, as `TOKEN:USERNAME` with TOKEN like `123456:ABC…`
        /// (repeatable; bots can also be added through `POST /_fake/bots`).
        #[arg(long = "bot", value_name = "TOKEN:USERNAME")]
        bots: Vec<String>,
        /// Messages per second each bot may send before answering 429.
        #[arg(long, default_value_t = 30.0)]
        bot_rate: f64,
        /// Messages per second to one chat before answering 429.
        #[arg(long, default_value_t = 1.0)]
        chat_rate: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Openapi = cli.command {
        let doc = voronka_server::openapi()
            .to_pretty_json()
            .context("cannot render the OpenAPI document")?;
        out!("{doc}");
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = config::Config::load(cli.config.as_deref(), std::env::vars())?;
    // Commands print their results on stdout; unless a level is configured, only the
    // server logs at info.
    let level = match cli.command {
        Command::Serve | Command::Fake(_) => cfg.log_level.as_str(),
        _ if cfg.log_level != config::Config::default().log_level => cfg.log_level.as_str(),
        // The database driver warns about every slow statement; a benchmark is all slow.
        Command::Bench(_) => "warn,sqlx=error",
        _ => "warn",
    };
    telemetry::init(cfg.log_format, level)?;
    match cli.command {
        Command::Serve => serve(&cfg).await.map(|()| ExitCode::SUCCESS),
        Command::Migrate => {
            let store = connect(&cfg).await?;
            let n = store.migrate().await.context("migration failed")?;
            out!("applied {n} migration(s) on {}", store.backend());
            Ok(ExitCode::SUCCESS)
        }
        Command::Workspace(c) => admin::workspace(&open(&cfg).await?, c).await,
        Command::User(c) => admin::user(&open(&cfg).await?, c).await,
        Command::Apikey(c) => admin::apikey(&open(&cfg).await?, c).await,
        Command::Contacts(c) => contacts::run(open(&cfg).await?, c).await,
        Command::Flow(c) => flow::run(&cfg, c).await,
        Command::Broadcast(c) => broadcast::run(&cfg, c).await,
        Command::Bench(c) => bench::run(c).await,
        Command::Fake(FakeCommand::Telegram {
            listen,
            bots,
            bot_rate,
            chat_rate,
        }) => {
            let mut parsed = Vec::new();
            for b in bots {
                // TOKEN itself contains one colon: split at the last.
                match b.rsplit_once(':') {
                    Some((token, name)) if token.contains(':') && !name.is_empty() => {
                        parsed.push((token.to_string(), name.to_string()))
                    }
                    _ => anyhow::bail!(
                        "--bot {b}: expected TOKEN:USERNAME, e.g. 123456:ABCdef:my_bot"
                    ),
                }
            }
            let config = voronka_fakes::telegram::FakeConfig {
                bot_rate_per_sec: bot_rate,
                chat_rate_per_sec: chat_rate,
                ..Default::default()
            };
            voronka_fakes::telegram::run(listen, config, parsed)
                .await
                .context("the fake Telegram server failed")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => Ok(ExitCode::SUCCESS),
    }
}

/// Writes one line to stdout; a closed pipe ends the process with success, as the
/// reader has all it wanted.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{args}").and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Connects without migrating; creates the SQLite file's directory first.
async fn connect(cfg: &config::Config) -> anyhow::Result<DynStore> {
    if let Some(path) = cfg.sqlite_path() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        }
    }
    voronka_store::connect(&cfg.database_url)
        .await
        .with_context(|| format!("cannot open the database {}", redact(&cfg.database_url)))
}

/// Connects and applies pending migrations, so management commands work on a new install.
async fn open(cfg: &config::Config) -> anyhow::Result<DynStore> {
    let store = connect(cfg).await?;
    store.migrate().await.context("migration failed")?;
    Ok(store)
}

/// Hides a password in a database URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn serve(cfg: &config::Config) -> anyhow::Result<()> {
    let store = open(cfg).await?;
    let secret = cfg.secret()?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let url = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    tracing::info!(%url, listen = %local, backend = store.backend(), "voronka is serving");
    if let Some(b) = bootstrap::bootstrap(&store, cfg).await? {
        tracing::info!(workspace = %b.workspace, file = %b.file.display(), "first start: created a workspace and an owner API key");
        eprintln!(
            "\nFirst start: created workspace {} and an owner API key (shown once):\n\n    {}\n\nIt is also saved in {} (mode 0600): store it elsewhere and delete the file.\nTry: curl -H \"Authorization: Bearer $(cat {})\" {url}/api/v1/workspace\n",
            b.workspace,
            b.token,
            b.file.display(),
            b.file.display(),
        );
    }
    let messaging = voronka_engine::messaging::Messaging::new(store, secret, cfg.messaging()?);
    messaging
        .start()
        .await
        .context("cannot start the channels")?;
    let flows = voronka_engine::flows::Flows::new(messaging.clone(), cfg.flows()?);
    flows.start().await.context("cannot start the flows")?;
    // Tracked links use the messaging runtime's public URL.
    let broadcasts = voronka_engine::broadcasts::Broadcasts::new(
        flows.clone(),
        voronka_engine::broadcasts::BroadcastsConfig::default(),
    );
    broadcasts
        .start()
        .await
        .context("cannot start the broadcasts")?;
    let state = voronka_server::AppState::with_runtimes(
        messaging.clone(),
        flows.clone(),
        broadcasts.clone(),
    );
    voronka_server::serve(listener, state, shutdown_signal())
        .await
        .context("the server failed")?;
    broadcasts.stop();
    flows.stop();
    messaging.stop();
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(
            super::redact("postgres://u:pw@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
