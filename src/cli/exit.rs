//! Exit codes and the one-line error report.
//!
//! Every command, local or remote, ends with one of these codes (sysexits where one fits):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 64 | usage or invalid input: a bad flag or value, a field the store or the API refused, an unreadable key or token file |
//! | 65 | refused by a rule or a conflict: a name taken, the last default model, a key that would mix clear and encrypted rows |
//! | 69 | the database or the admin API cannot be reached (or the API says its database is down) |
//! | 1 | anything else, including "no such provider / model / token" |
//!
//! The error is one line on stderr, `error: ...`, naming the field or the flag; never a key
//! or a token.

use crate::provider::ProviderError;
use crate::store::StoreError;

/// Done.
pub const OK: i32 = 0;
/// Usage error or invalid input (EX_USAGE).
pub const USAGE: i32 = 64;
/// Refused by a rule: a conflict with what is stored (EX_DATAERR).
pub const REFUSED: i32 = 65;
/// The database or the admin API is unreachable (EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
/// Anything else.
pub const OTHER: i32 = 1;

/// Why a command failed, classified once for its exit code; the text is what the operator reads.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: a value the store or the API refused, a flag that cannot be used so.
    #[error("{0}")]
    Invalid(String),
    /// A rule refused the change (a name taken, the only default model).
    #[error("{0}")]
    Conflict(String),
    /// What the command names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The database or the admin API cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn code(&self) -> i32 {
        match self {
            CliError::Invalid(_) => USAGE,
            CliError::Conflict(_) => REFUSED,
            CliError::Unavailable(_) => UNAVAILABLE,
            CliError::NotFound(_) | CliError::Failed(_) => OTHER,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => CliError::NotFound(format!("no such {what}")),
            StoreError::Conflict(detail) => CliError::Conflict(detail),
            StoreError::Invalid(e) => CliError::Invalid(e.to_string()),
            StoreError::InvalidInput(detail) => CliError::Invalid(detail.to_string()),
            e @ StoreError::UnsupportedUrl => CliError::Invalid(format!("--database-url: {e}")),
            StoreError::Database(db) if unreachable(&db) => {
                CliError::Unavailable(format!("the database cannot be reached: {db}"))
            }
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(db)) if unreachable(&db) => {
                CliError::Unavailable(format!("the database cannot be reached: {db}"))
            }
            e => CliError::Failed(e.to_string()),
        }
    }
}

/// Whether a database error means "not reachable" rather than "refused this statement".
fn unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

/// The exit code for a failed command: the first cause in the chain that says what it was.
pub fn code_of(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return match e {
                StoreError::Invalid(_) | StoreError::InvalidInput(_) => USAGE,
                StoreError::UnsupportedUrl => USAGE,
                StoreError::Conflict(_) => REFUSED,
                StoreError::Database(db) if unreachable(db) => UNAVAILABLE,
                _ => OTHER,
            };
        }
        if cause.downcast_ref::<ProviderError>().is_some() {
            return USAGE;
        }
    }
    OTHER
}

/// One line: anyhow's chain joined with ": ", any line break in a cause folded into a space.
pub fn one_line(e: &anyhow::Error) -> String {
    fold(&format!("{e:#}"))
}

fn fold(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A command-line parse error as one line (the usage block and the help hint dropped, the
/// `tip:` kept), with its exit code: 64 for an error, 0 for `--help` and `--version` (whose
/// text is printed as clap formats it).
pub fn clap_exit(e: clap::Error) -> i32 {
    if !e.use_stderr() {
        // --help, --version: not an error.
        let _ = e.print();
        return OK;
    }
    let text = e.render().to_string();
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .collect();
    let line = fold(&lines.join("\n"));
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    eprintln!("error: {line} (see --help)");
    USAGE
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn clap_errors_are_usage_errors() {
        let e = crate::cli::Cli::try_parse_from(["aibridge-proxy", "providers", "create"])
            .err()
            .map(clap_exit);
        assert_eq!(e, Some(USAGE));
        let help = crate::cli::Cli::try_parse_from(["aibridge-proxy", "--version"])
            .err()
            .map(|e| e.use_stderr());
        assert_eq!(help, Some(false));
    }

    #[test]
    fn store_errors_map_to_codes() {
        let conflict: anyhow::Error = StoreError::Conflict("taken".into()).into();
        assert_eq!(code_of(&conflict), REFUSED);
        let invalid: anyhow::Error = StoreError::InvalidInput("model must be...").into();
        assert_eq!(code_of(&invalid), USAGE);
        let cli: anyhow::Error = CliError::from(StoreError::NotFound("model")).into();
        assert_eq!(code_of(&cli), OTHER);
        assert_eq!(one_line(&cli), "no such model");
        let down: anyhow::Error = StoreError::Database(sqlx::Error::PoolTimedOut).into();
        assert_eq!(code_of(&down), UNAVAILABLE);
        let chained = anyhow::Error::from(CliError::Invalid("a\nb".into())).context("reading x");
        assert_eq!(one_line(&chained), "reading x: a b");
        assert_eq!(code_of(&chained), USAGE);
    }
}
