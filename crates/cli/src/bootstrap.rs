//! First start: an empty database gets a workspace and an owner API key, so a new install
//! can be used from the API at once without a second command.

use crate::config::{write_private_file, Config};
use anyhow::Context;
use std::path::PathBuf;
use voronka_core::role::Scope;
use voronka_store::{DynStore, NewApiKey};

/// Name of the file the first key is written to, beside the secret key file.
pub const BOOTSTRAP_KEY_FILE: &str = "bootstrap-api-key";

/// What the first start created.
#[derive(Debug)]
pub struct Bootstrapped {
    /// The new workspace.
    pub workspace: voronka_core::WorkspaceId,
    /// The owner key's token (shown once).
    pub token: String,
    /// Where the token was saved.
    pub file: PathBuf,
}

/// Creates a workspace and an all-scopes API key when the database has no workspace yet;
/// does nothing (returns `None`) otherwise.
pub async fn bootstrap(store: &DynStore, cfg: &Config) -> anyhow::Result<Option<Bootstrapped>> {
    if !store
        .list_workspaces()
        .await
        .context("cannot list workspaces")?
        .is_empty()
    {
        return Ok(None);
    }
    let ws = store
        .create_workspace("My workspace")
        .await
        .context("cannot create the first workspace")?;
    let generated = voronka_core::apikey::generate();
    store
        .create_api_key(
            ws.id,
            NewApiKey {
                name: "bootstrap".into(),
                prefix: generated.prefix.clone(),
                secret_hash: generated.hash.clone(),
                scopes: Scope::ALL.to_vec(),
            },
        )
        .await
        .context("cannot create the first API key")?;
    let file = cfg
        .key_file()
        .parent()
        .map(|d| d.join(BOOTSTRAP_KEY_FILE))
        .unwrap_or_else(|| PathBuf::from(BOOTSTRAP_KEY_FILE));
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match write_private_file(&file, generated.token.as_bytes()) {
        Ok(()) => {}
        // A stale file from an earlier install: replace it, the old key is gone with its database.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&file)
                .with_context(|| format!("cannot replace {}", file.display()))?;
            write_private_file(&file, generated.token.as_bytes())
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", file.display())),
    }
    Ok(Some(Bootstrapped {
        workspace: ws.id,
        token: generated.token,
        file,
    }))
}
