//! `workspace`, `user` and `apikey` commands.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::io::Read;
use std::process::ExitCode;
use voronka_core::role::{Role, Scope};
use voronka_core::{ApiKeyId, WorkspaceId};
use voronka_store::{DynStore, NewApiKey, NewUser};

/// Workspace commands.
#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace; prints its id.
    Create {
        /// Display name.
        name: String,
    },
    /// List workspaces (id, name, creation time), tab-separated.
    List,
}

/// User commands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user in a workspace (or add an existing user to it); prints the user id.
    ///
    /// The password comes from --password, the VORONKA_PASSWORD variable, or the first
    /// line of standard input with --password-stdin.
    Create(UserCreate),
}

/// Arguments of `user create`.
#[derive(Debug, Args)]
pub struct UserCreate {
    /// Workspace id.
    #[arg(long, value_name = "ID")]
    workspace: i64,
    /// Login e-mail.
    #[arg(long)]
    email: String,
    /// Display name.
    #[arg(long)]
    name: String,
    /// Role: owner, admin, marketer, operator or analyst.
    #[arg(long, default_value = "owner")]
    role: Role,
    /// Password (at least 8 characters). Prefer VORONKA_PASSWORD or --password-stdin:
    /// command lines are visible to other users of the machine.
    #[arg(
        long,
        env = "VORONKA_PASSWORD",
        hide_env_values = true,
        conflicts_with = "password_stdin"
    )]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

/// API key commands.
#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key; prints the token once (it cannot be shown again).
    Create {
        /// Workspace id.
        #[arg(long, value_name = "ID")]
        workspace: i64,
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// Scope to grant (repeat for several; default: all). One of contacts:read,
        /// contacts:write, contacts:erase, schema:write, channels:read, channels:write,
        /// admin.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<Scope>,
    },
    /// List a workspace's API keys, revoked ones included, tab-separated.
    List {
        /// Workspace id.
        #[arg(long, value_name = "ID")]
        workspace: i64,
    },
    /// Revoke an API key.
    Revoke {
        /// Workspace id.
        #[arg(long, value_name = "ID")]
        workspace: i64,
        /// The key's id (see `apikey list`).
        key_id: i64,
    },
}

/// Runs a workspace command.
pub async fn workspace(store: &DynStore, cmd: WorkspaceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkspaceCommand::Create { name } => {
            let name = voronka_core::channel::display_name("name", &name)?;
            let ws = store.create_workspace(&name).await?;
            out!("{}", ws.id);
        }
        WorkspaceCommand::List => {
            for ws in store.list_workspaces().await? {
                out!("{}\t{}\t{}", ws.id, ws.name, ws.created_at);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a user command.
pub async fn user(store: &DynStore, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let UserCommand::Create(args) = cmd;
    let password = match (args.password, args.password_stdin) {
        (_, true) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the password from standard input")?;
            text.lines().next().unwrap_or_default().to_string()
        }
        (Some(p), false) => p,
        (None, false) => {
            bail!("a password is needed: --password, VORONKA_PASSWORD or --password-stdin")
        }
    };
    let email = voronka_core::contact::email(args.email)?;
    let name = voronka_core::channel::display_name("name", &args.name)?;
    let password_hash = voronka_core::password::hash(&password)?;
    let ws = WorkspaceId(args.workspace);
    store
        .get_workspace(ws)
        .await
        .with_context(|| format!("workspace {ws}"))?;
    let member = store
        .create_user(
            ws,
            NewUser {
                email,
                name,
                password_hash,
                role: args.role,
            },
        )
        .await?;
    out!("{}", member.user.id);
    Ok(ExitCode::SUCCESS)
}

/// Runs an API key command.
pub async fn apikey(store: &DynStore, cmd: ApiKeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ApiKeyCommand::Create {
            workspace,
            name,
            scopes,
        } => {
            let ws = WorkspaceId(workspace);
            store
                .get_workspace(ws)
                .await
                .with_context(|| format!("workspace {ws}"))?;
            let name = voronka_core::channel::display_name("name", &name)?;
            let mut scopes = if scopes.is_empty() {
                Scope::ALL.to_vec()
            } else {
                scopes
            };
            scopes.sort();
            scopes.dedup();
            let generated = voronka_core::apikey::generate();
            let key = store
                .create_api_key(
                    ws,
                    NewApiKey {
                        name,
                        prefix: generated.prefix,
                        secret_hash: generated.hash,
                        scopes,
                    },
                )
                .await?;
            eprintln!(
                "created API key {} ({}); the token below is shown only once:",
                key.id, key.prefix
            );
            out!("{}", generated.token);
        }
        ApiKeyCommand::List { workspace } => {
            for k in store.list_api_keys(WorkspaceId(workspace)).await? {
                let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
                let opt = |t: Option<jiff::Timestamp>| {
                    t.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
                };
                out!(
                    "{}\t{}\t{}\t{}\tcreated {}\tlast used {}\trevoked {}",
                    k.id,
                    k.prefix,
                    k.name,
                    scopes.join(" "),
                    k.created_at,
                    opt(k.last_used_at),
                    opt(k.revoked_at)
                );
            }
        }
        ApiKeyCommand::Revoke { workspace, key_id } => {
            let k = store
                .revoke_api_key(WorkspaceId(workspace), ApiKeyId(key_id))
                .await?;
            out!(
                "revoked API key {} ({}) at {}",
                k.id,
                k.prefix,
                k.revoked_at.map(|t| t.to_string()).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
