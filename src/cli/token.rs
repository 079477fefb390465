//! `token create --user NAME [--expires 30d|RFC3339] | list | revoke ID`.
//!
//! The clear token is shown once: alone on the last line of stdout (the table output), or as
//! the `token` field of the JSON object (`--output json`). Lists never show tokens.

use super::conn::ConnArgs;
use super::exit::CliError;
use super::output::{self, OutputArgs, Table};
use clap::Subcommand;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// `--expires`: a duration from now or an RFC 3339 time, in the future either way (a usage
/// error, exit 64, otherwise; clap names the flag).
fn parse_expiry(s: &str) -> Result<OffsetDateTime, String> {
    let now = OffsetDateTime::now_utc();
    let at = match OffsetDateTime::parse(s, &Rfc3339) {
        Ok(t) => t,
        Err(_) => {
            let d = humantime::parse_duration(s).map_err(|_| {
                format!("{s:?} is neither a duration such as 30d nor an RFC 3339 time")
            })?;
            let d = time::Duration::try_from(d).map_err(|_| format!("{s:?} is too long"))?;
            now.checked_add(d)
                .ok_or_else(|| format!("{s:?} is too long"))?
        }
    };
    if at <= now {
        return Err(format!("{s:?} is not in the future"));
    }
    Ok(at)
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; the clear token is printed once, alone on the last line. With several
    /// `--user`, one token each, written in one transaction (a table of USER and TOKEN).
    Create {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        out: OutputArgs,
        /// The user label recorded with every request made with this token (repeat it to
        /// create many at once).
        #[arg(long, required = true)]
        user: Vec<String>,
        /// Refuse the token after this: a duration from now (`30d`, `12h`) or an RFC 3339 time.
        #[arg(long, value_name = "DURATION|TIME", value_parser = parse_expiry)]
        expires: Option<OffsetDateTime>,
    },
    /// List tokens (never the tokens themselves).
    List {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Revoke a token by id.
    Revoke {
        #[command(flatten)]
        conn: ConnArgs,
        id: Uuid,
    },
}

pub async fn run(cmd: TokenCommand) -> anyhow::Result<i32> {
    match cmd {
        TokenCommand::Create {
            conn,
            out,
            user,
            expires,
        } => {
            let conn = conn.open().await?;
            if user.len() > 1 {
                let created = conn.create_tokens(&user, expires).await;
                conn.close().await;
                let created = created?;
                if out.output == output::Output::Table {
                    eprintln!("created {} tokens; they are shown only now:", created.len());
                }
                return output::list(out.output, &created, || {
                    let mut t = Table::new(&["ID", "USER", "EXPIRES", "TOKEN"]);
                    for c in &created {
                        let expires = c.rest.get("expires_at").and_then(|v| v.as_str());
                        t.row(vec![
                            c.id.to_string(),
                            c.user.clone(),
                            output::opt_time(expires),
                            c.token.clone(),
                        ]);
                    }
                    t
                })
                .map(|()| 0);
            }
            let user = user.concat();
            let created = conn.create_token(&user, expires).await;
            conn.close().await;
            let created = created?;
            if out.output == output::Output::Table {
                eprintln!(
                    "created token {} for user {:?}; it is shown only now:",
                    created.id, created.user
                );
            }
            output::one(out.output, &created, || created.token.clone())?;
            Ok(0)
        }
        TokenCommand::List { conn, out } => {
            let conn = conn.open().await?;
            let tokens = conn.tokens().await;
            conn.close().await;
            let tokens = tokens?;
            output::list(out.output, &tokens, || {
                let mut t = Table::new(&[
                    "ID",
                    "USER",
                    "STATUS",
                    "CREATED",
                    "LAST_USED",
                    "REVOKED",
                    "EXPIRES",
                ]);
                let now = time::OffsetDateTime::now_utc();
                for tok in &tokens {
                    // `expires_at` comes with token expiry in the API; read it when present.
                    let expires = tok.rest.get("expires_at").and_then(|v| v.as_str());
                    let expired = expires
                        .and_then(|e| time::OffsetDateTime::parse(e, &Rfc3339).ok())
                        .is_some_and(|e| e <= now);
                    let status = if tok.revoked_at.is_some() {
                        "revoked"
                    } else if expired {
                        "expired"
                    } else {
                        "active"
                    };
                    t.row(vec![
                        tok.id.to_string(),
                        tok.user.clone(),
                        status.into(),
                        output::time(&tok.created_at),
                        output::opt_time(tok.last_used_at.as_deref()),
                        output::opt_time(tok.revoked_at.as_deref()),
                        output::opt_time(expires),
                    ]);
                }
                t
            })?;
            Ok(0)
        }
        TokenCommand::Revoke { conn, id } => {
            let conn = conn.open().await?;
            let revoked = conn.revoke_token(id).await;
            conn.close().await;
            if !revoked? {
                return Err(CliError::NotFound(format!("no active token with id {id}")).into());
            }
            output::print(&format!("revoked {id}\n"))?;
            Ok(0)
        }
    }
}
