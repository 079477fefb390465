//! `token create --user NAME | list | revoke ID`.

use super::DbArgs;
use clap::Subcommand;
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; the clear token is printed once, alone on the last line.
    Create {
        #[command(flatten)]
        db: DbArgs,
        /// The user label recorded with every request made with this token.
        #[arg(long)]
        user: String,
    },
    /// List tokens (never the tokens themselves).
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a token by id.
    Revoke {
        #[command(flatten)]
        db: DbArgs,
        id: Uuid,
    },
}

pub async fn run(cmd: TokenCommand) -> anyhow::Result<i32> {
    match cmd {
        TokenCommand::Create { db, user } => {
            let store = db.connect().await?;
            let (row, token) = store.create_token(&user).await?;
            store.close().await;
            eprintln!(
                "created token {} for user {:?}; it is shown only now:",
                row.id, row.user
            );
            println!("{}", token.expose());
            Ok(0)
        }
        TokenCommand::List { db } => {
            let store = db.connect().await?;
            let tokens = store.list_tokens().await?;
            store.close().await;
            println!("{:<36}  {:<20}  {:<8}  created_at", "id", "user", "status");
            for t in tokens {
                let status = if t.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<36}  {:<20}  {:<8}  {}",
                    t.id, t.user, status, t.created_at
                );
            }
            Ok(0)
        }
        TokenCommand::Revoke { db, id } => {
            let store = db.connect().await?;
            let revoked = store.revoke_token(id).await?;
            store.close().await;
            if revoked {
                println!("revoked {id}");
                Ok(0)
            } else {
                eprintln!("no active token with id {id}");
                Ok(1)
            }
        }
    }
}
