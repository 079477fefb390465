//! `serve --config FILE`: every `serve` setting in a TOML file, under the flag's own name.
//!
//! The file adds no second definition of any setting: its keys are read off the clap definition
//! of `serve` (and the global flags), so a flag added later is settable in the file with no code
//! here. Each key is checked by that flag's own value parser; the accepted ones become extra
//! command-line arguments for the flags neither the command line nor an `AIBRIDGE_*` variable
//! set, and the command line is parsed again. That gives the precedence
//! flags > environment > file > defaults by construction.
//!
//! Unknown keys and bad values are all reported in one run, each naming its key (exit 64).
//! Secrets are never written in the file: a value may be `{ env = "VAR" }` (read from that
//! variable) or `{ file = "PATH" }` (the file's content, trimmed), and a literal URL holding a
//! password is refused.

use super::Cli;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Flags that choose what one run does rather than how the proxy behaves: not file keys.
const NOT_SETTINGS: &[&str] = &["config", "check", "help", "version"];

/// Why the command line could not be turned into a [`Cli`].
#[derive(Debug)]
pub enum ParseError {
    /// The flags themselves (clap's own report).
    Flags(clap::Error),
    /// The config file: every problem, one line each, naming the key.
    File { path: PathBuf, errors: Vec<String> },
}

/// Parse `argv`, reading `serve --config FILE` (or `AIBRIDGE_CONFIG`) when given.
pub fn parse_from(argv: Vec<OsString>) -> Result<Cli, ParseError> {
    let argv = resolve(argv)?;
    let matches = Cli::command()
        .try_get_matches_from(argv)
        .map_err(ParseError::Flags)?;
    Cli::from_arg_matches(&matches).map_err(ParseError::Flags)
}

/// The command line with the file's settings appended as flags (unchanged without a file).
pub fn resolve(mut argv: Vec<OsString>) -> Result<Vec<OsString>, ParseError> {
    let cmd = Cli::command();
    let matches = cmd
        .clone()
        .try_get_matches_from(argv.clone())
        .map_err(ParseError::Flags)?;
    let Some(("serve", serve)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Some(path) = serve.get_one::<PathBuf>("config").cloned() else {
        return Ok(argv);
    };
    let fail = |errors: Vec<String>| ParseError::File {
        path: path.clone(),
        errors,
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| fail(vec![format!("cannot read: {e}")]))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| fail(vec![toml_error(&e)]))?;
    let settings = Settings::of(&cmd);
    let mut errors = Vec::new();
    let mut extra = Vec::new();
    for (key, value) in table {
        let Some((arg, global)) = settings.find(&key) else {
            errors.push(unknown_key(&key, &settings));
            continue;
        };
        match flag_args(arg, &key, value) {
            Ok(args) => {
                let set_by = if global { &matches } else { serve };
                if !set_elsewhere(set_by, arg) {
                    extra.extend(args);
                }
            }
            Err(e) => errors.push(format!("{key}: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(fail(errors));
    }
    argv.extend(extra);
    Ok(argv)
}

/// Whether the command line or the environment already gave this flag its value.
fn set_elsewhere(matches: &ArgMatches, arg: &Arg) -> bool {
    matches!(
        matches.value_source(arg.get_id().as_str()),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// The flags a file may set: `serve`'s own and the global ones (log format and level).
struct Settings {
    args: Vec<(Arg, bool)>,
}

impl Settings {
    fn of(cmd: &Command) -> Settings {
        let is_setting = |a: &Arg| a.get_long().is_some_and(|l| !NOT_SETTINGS.contains(&l));
        let mut args: Vec<(Arg, bool)> = cmd
            .get_arguments()
            .filter(|a| a.is_global_set() && is_setting(a))
            .map(|a| (a.clone(), true))
            .collect();
        if let Some(serve) = cmd.find_subcommand("serve") {
            args.extend(
                serve
                    .get_arguments()
                    .filter(|a| is_setting(a))
                    .map(|a| (a.clone(), false)),
            );
        }
        Settings { args }
    }

    fn find(&self, key: &str) -> Option<(&Arg, bool)> {
        self.args
            .iter()
            .find(|(a, _)| a.get_long() == Some(key))
            .map(|(a, g)| (a, *g))
    }

    /// Every key a file may hold, in definition order.
    fn keys(&self) -> impl Iterator<Item = &str> {
        self.args.iter().filter_map(|(a, _)| a.get_long())
    }
}

/// "unknown key", with the flag spelling when the key only differs by `_` for `-`.
fn unknown_key(key: &str, settings: &Settings) -> String {
    let dashed = key.replace('_', "-");
    if dashed != key && settings.find(&dashed).is_some() {
        format!("{key}: unknown key (did you mean `{dashed}`? keys are the flags' names)")
    } else {
        format!("{key}: unknown key (keys are the `serve` flags' names, e.g. `listen`)")
    }
}

/// One line from a TOML syntax error (its position included, the source excerpt dropped).
fn toml_error(e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => format!("invalid TOML at byte {}: {message}", span.start),
        None => format!("invalid TOML: {message}"),
    }
}

/// Where a value came from: written in the file, or referenced (and then never echoed).
enum Origin {
    Literal,
    Secret,
}

/// The command-line arguments that give `arg` this file value, checked by the flag's own
/// parser.
fn flag_args(arg: &Arg, key: &str, value: toml::Value) -> Result<Vec<OsString>, String> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return match value {
            toml::Value::Boolean(b) if b == matches!(arg.get_action(), ArgAction::SetTrue) => {
                Ok(vec![format!("--{key}").into()])
            }
            toml::Value::Boolean(_) => Ok(Vec::new()),
            _ => Err("must be true or false".to_string()),
        };
    }
    let items = match value {
        toml::Value::Array(items) => items,
        other => vec![other],
    };
    let mut args = Vec::with_capacity(items.len());
    let mut origins = Vec::with_capacity(items.len());
    for item in items {
        let (text, origin) = scalar(item)?;
        args.push(OsString::from(format!("--{key}={text}")));
        origins.push(origin);
    }
    check_with_parser(arg, &args, &origins)?;
    Ok(args)
}

/// A TOML value as the text a flag would take.
fn scalar(value: toml::Value) -> Result<(String, Origin), String> {
    match value {
        toml::Value::String(s) => {
            if url_has_password(&s) {
                return Err("holds a password: write { env = \"VAR\" } or { file = \"PATH\" } instead (for PostgreSQL, PGPASSWORD or PGPASSFILE work too)".to_string());
            }
            Ok((s, Origin::Literal))
        }
        toml::Value::Integer(i) => Ok((i.to_string(), Origin::Literal)),
        toml::Value::Float(f) => Ok((f.to_string(), Origin::Literal)),
        toml::Value::Boolean(b) => Ok((b.to_string(), Origin::Literal)),
        toml::Value::Table(t) => reference(&t).map(|s| (s, Origin::Secret)),
        toml::Value::Array(_) => Err("nested arrays are not a flag value".to_string()),
        toml::Value::Datetime(_) => {
            Err("a date is not a flag value (durations are written \"30s\", \"5m\")".to_string())
        }
    }
}

/// `{ env = "VAR" }` or `{ file = "PATH" }`: a value kept out of the file.
fn reference(t: &toml::Table) -> Result<String, String> {
    let one = |k: &str| t.get(k).and_then(toml::Value::as_str);
    match (t.len(), one("env"), one("file")) {
        (1, Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("environment variable {var} is not set")),
        },
        (1, None, Some(file)) => std::fs::read_to_string(file)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("cannot read {file}: {e}")),
        _ => Err("a table must be { env = \"VAR\" } or { file = \"PATH\" }".to_string()),
    }
}

/// Whether `s` is a URL whose user-info carries a password (`scheme://user:pass@host`).
fn url_has_password(s: &str) -> bool {
    let Some((_, rest)) = s.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// Run the flag's own parser over the values, alone, so each key's error is its own; a value
/// that came from a reference is not echoed in the error.
fn check_with_parser(arg: &Arg, args: &[OsString], origins: &[Origin]) -> Result<(), String> {
    // Only the value parser and arity matter here: not where else the flag could be read from.
    let probe = arg.clone().env(None::<&str>).required(false);
    let mut argv: Vec<OsString> = vec!["aibridge-proxy".into()];
    argv.extend(args.iter().cloned());
    match Command::new("aibridge-proxy")
        .arg(probe)
        .try_get_matches_from(argv)
    {
        Ok(_) => Ok(()),
        Err(_) if origins.iter().any(|o| matches!(o, Origin::Secret)) => {
            Err("invalid value (from a reference; not shown)".to_string())
        }
        Err(e) => Err(first_line(&e)),
    }
}

fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// Every key a config file may hold (the settable flags' names), for `--help` text and tests.
pub fn keys() -> Vec<String> {
    Settings::of(&Cli::command())
        .keys()
        .map(str::to_string)
        .collect()
}

/// Print a [`ParseError::File`]'s lines, one per problem.
pub fn report(path: &Path, errors: &[String]) {
    for e in errors {
        eprintln!("error: {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn serve_with(f: &tempfile::NamedTempFile, more: &[&str]) -> Result<ArgMatches, ParseError> {
        let mut argv: Vec<OsString> = vec!["aibridge-proxy".into(), "serve".into()];
        argv.extend(more.iter().map(OsString::from));
        argv.push("--config".into());
        argv.push(f.path().into());
        let argv = resolve(argv)?;
        Cli::command()
            .try_get_matches_from(argv)
            .map_err(ParseError::Flags)
    }

    fn file_errors(r: Result<ArgMatches, ParseError>) -> Vec<String> {
        match r {
            Err(ParseError::File { errors, .. }) => errors,
            Err(ParseError::Flags(e)) => panic!("flag error: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    /// A value the flag's own parser accepts: its default, or the first probe that passes.
    fn sample(arg: &Arg) -> Vec<String> {
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() {
            return defaults;
        }
        let probes = [
            "127.0.0.0/8",
            "127.0.0.1:1234",
            "http://127.0.0.1:4318",
            "sqlite://x.db",
            "1",
            "true",
            "x",
        ];
        probes
            .iter()
            .find(|p| {
                check_with_parser(
                    arg,
                    &[format!("--{}={p}", arg.get_long().unwrap_or_default()).into()],
                    &[Origin::Literal],
                )
                .is_ok()
            })
            .map(|p| vec![p.to_string()])
            .unwrap_or_else(|| panic!("no sample value for --{:?}", arg.get_long()))
    }

    /// The rule that makes a flag added later settable in the file: every `serve` flag (and
    /// global flag) is a file key, and the file's value is what the parsed command line holds.
    #[test]
    fn every_serve_flag_is_a_file_key() {
        let cmd = Cli::command();
        let settings = Settings::of(&cmd);
        let serve = cmd.find_subcommand("serve").unwrap();
        let mut count = 0;
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if NOT_SETTINGS.contains(&long) {
                continue;
            }
            assert!(settings.find(long).is_some(), "--{long} is not a file key");
            if arg.get_env().is_some_and(|v| std::env::var_os(v).is_some()) {
                continue; // The environment wins over the file, as it should.
            }
            let values = sample(arg);
            let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
            let value = if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
                matches!(arg.get_action(), ArgAction::SetTrue).to_string()
            } else if quoted.len() == 1 {
                // A single value is written as a scalar, as an operator would.
                quoted[0].clone()
            } else {
                format!("[{}]", quoted.join(", "))
            };
            let f = file(&format!("{long} = {value}\n"));
            let m = serve_with(&f, &[]).unwrap_or_else(|e| panic!("--{long}: {e:?}"));
            let (_, sm) = m.subcommand().unwrap();
            let id = arg.get_id().as_str();
            assert_eq!(
                sm.value_source(id),
                Some(ValueSource::CommandLine),
                "--{long} not taken from the file"
            );
            if arg.get_action().takes_values() {
                let got: Vec<String> = sm
                    .get_raw(id)
                    .unwrap()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                assert_eq!(got.join(","), values.join(","), "--{long}");
            }
            count += 1;
        }
        assert!(count > 20, "only {count} serve flags seen");
        assert!(keys().contains(&"log-level".to_string()));
    }

    #[test]
    fn every_bad_key_is_reported_in_one_run() {
        let f = file(
            "listen = \"nope\"\nmax-connections = -3\nmax_connections = 3\ncolour = 1\nconnect-ports = [443, \"x\"]\nauth = \"maybe\"\n",
        );
        let errors = file_errors(serve_with(&f, &[]));
        assert_eq!(errors.len(), 6, "{errors:?}");
        for key in [
            "listen:",
            "max-connections:",
            "max_connections: unknown key (did you mean `max-connections`?",
            "colour: unknown key",
            "connect-ports:",
            "auth:",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "{key} missing from {errors:?}"
            );
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let f = file("listen = \"127.0.0.1:7001\"\nadmin-listen = \"127.0.0.1:7002\"\nlog-level = \"debug\"\n");
        let m = serve_with(&f, &["--listen", "127.0.0.1:7003"]).unwrap();
        let (_, sm) = m.subcommand().unwrap();
        let get = |id: &str| sm.get_raw(id).unwrap().next().unwrap().to_owned();
        assert_eq!(get("listen"), "127.0.0.1:7003");
        assert_eq!(get("admin_listen"), "127.0.0.1:7002");
        assert_eq!(
            m.get_one::<String>("log_level").map(String::as_str),
            Some("debug")
        );
    }

    #[test]
    fn secrets_stay_out_of_the_file() {
        let f = file("database-url = \"postgres://app:hunter2@db/aibridge\"\n");
        let errors = file_errors(serve_with(&f, &[]));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("database-url: holds a password"));
        assert!(!errors[0].contains("hunter2"));

        let secret = file("postgres://app:hunter2@db/aibridge\n");
        let f = file(&format!(
            "database-url = {{ file = \"{}\" }}\n",
            secret.path().display()
        ));
        let m = serve_with(&f, &[]).unwrap();
        let (_, sm) = m.subcommand().unwrap();
        assert_eq!(
            sm.get_one::<String>("database_url").map(String::as_str),
            Some("postgres://app:hunter2@db/aibridge")
        );

        let f = file("database-url = { env = \"AIBRIDGE_TEST_SURELY_UNSET\" }\nlisten = { file = \"/nonexistent/x\" }\n");
        let errors = file_errors(serve_with(&f, &[]));
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn a_file_that_is_not_toml_says_where() {
        let f = file("listen = \n");
        let errors = file_errors(serve_with(&f, &[]));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("invalid TOML at byte"), "{errors:?}");
    }

    #[test]
    fn password_detection() {
        assert!(url_has_password("postgres://u:p@h/db"));
        assert!(!url_has_password("postgres://u@h/db"));
        assert!(!url_has_password("sqlite:///var/lib/a:b@c.db"));
        assert!(!url_has_password("127.0.0.1:8888"));
    }
}
