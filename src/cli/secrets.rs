//! `secrets init | rotate | status`: the secrets key that encrypts provider keys at rest
//! (see `store::crypto` for the stored form). No key, clear or encrypted, is ever printed.
//!
//! Rotating without downtime:
//! 1. `secrets init --secrets-key-file new.key`;
//! 2. restart the proxies with `--secrets-key-file new.key --previous-secrets-key-file old.key`
//!    (they read both and write under the new one);
//! 3. `secrets rotate --secrets-key-file old.key --new-secrets-key-file new.key`: every key is
//!    rewritten in one transaction and the proxies reload;
//! 4. drop `--previous-secrets-key-file`.

use super::DbArgs;
use crate::store::{SecretsKey, Store};
use clap::Subcommand;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Generate a secrets key file: 32 random bytes as 64 hex characters, mode 0600.
    Init {
        /// Where to write it.
        #[arg(long, env = "AIBRIDGE_SECRETS_KEY_FILE")]
        secrets_key_file: PathBuf,
        /// Replace an existing file (provider keys encrypted under it become unreadable).
        #[arg(long)]
        force: bool,
    },
    /// Rewrite every provider key under a new secrets key, or in clear, in one transaction.
    /// Keys are read with --secrets-key-file (and --previous-secrets-key-file).
    Rotate {
        #[command(flatten)]
        db: DbArgs,
        /// The secrets key every provider key is encrypted under afterwards.
        #[arg(
            long,
            env = "AIBRIDGE_NEW_SECRETS_KEY_FILE",
            required_unless_present = "to_plaintext",
            conflicts_with = "to_plaintext"
        )]
        new_secrets_key_file: Option<PathBuf>,
        /// Decrypt every provider key and store it in clear instead.
        #[arg(long)]
        to_plaintext: bool,
    },
    /// Count provider keys by how they are stored.
    Status {
        #[command(flatten)]
        db: DbArgs,
    },
}

pub async fn run(cmd: SecretsCommand) -> anyhow::Result<i32> {
    match cmd {
        SecretsCommand::Init {
            secrets_key_file,
            force,
        } => {
            let key = SecretsKey::generate(&secrets_key_file, force)?;
            println!(
                "wrote secrets key {} to {} (0600)",
                key.id(),
                secrets_key_file.display()
            );
            Ok(0)
        }
        SecretsCommand::Rotate {
            db,
            new_secrets_key_file,
            to_plaintext: _,
        } => {
            let target = new_secrets_key_file
                .as_deref()
                .map(SecretsKey::load)
                .transpose()
                .map_err(|e| anyhow::anyhow!("new secrets key: {e}"))?
                .map(Arc::new);
            let store = db.connect().await?;
            let rotated = store.rotate_keys(target.clone()).await;
            store.close().await;
            let r = rotated?;
            let total = r.rewritten + r.unchanged;
            match &target {
                Some(key) => println!(
                    "re-encrypted {} of {total} provider keys under secrets key {} ({} already were)",
                    r.rewritten,
                    key.id(),
                    r.unchanged
                ),
                None => {
                    println!(
                        "decrypted {} of {total} provider keys to clear text ({} already were)",
                        r.rewritten, r.unchanged
                    );
                    eprintln!("warning: provider keys are now stored in clear in the database");
                }
            }
            Ok(0)
        }
        SecretsCommand::Status { db } => {
            let store = db.connect().await?;
            let storage = status(&store).await;
            store.close().await;
            for line in storage? {
                println!("{line}");
            }
            Ok(0)
        }
    }
}

async fn status(store: &Store) -> anyhow::Result<Vec<String>> {
    let storage = store.key_storage().await?;
    let keyring = store.keyring();
    let mut lines = vec![format!("in clear: {}", storage.clear)];
    for (id, count) in &storage.encrypted {
        let given = if keyring.primary().is_some_and(|k| k.id() == *id) {
            "--secrets-key-file"
        } else if keyring.can_open(*id) {
            "--previous-secrets-key-file"
        } else {
            "key file not given"
        };
        lines.push(format!(
            "encrypted under secrets key {id}: {count} ({given})"
        ));
    }
    if storage.unknown > 0 {
        lines.push(format!("unknown form: {}", storage.unknown));
    }
    Ok(lines)
}
