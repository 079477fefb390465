//! Corpus-as-regression (Envoy's rule, RELIABILITY.md F-2): every committed fuzz input under
//! `fuzz/corpus/<target>/` — seeds, what fuzz runs added, and past crashes kept as regression
//! files — plus any local `fuzz/artifacts/<target>/` finding is replayed through the same
//! oracle the fuzz target calls (`fuzz/oracles/`, included here by `#[path]`). A missing or
//! empty corpus fails, so a renamed target cannot silently stop being checked.

#[macro_use]
#[path = "../../fuzz/oracles/mod.rs"]
mod oracles;

use aibridge_proxy::usage::sse::Event;
use oracles::streams::reference_events;
use oracles::{Outcome, Violation, TARGETS};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Regular files directly in `dir`, sorted; none if it does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Run one oracle on one input, turning a panic inside the parsers into a reported failure.
fn replay(oracle: fn(&[u8]) -> Result<(), Violation>, data: &[u8]) -> Result<(), String> {
    match std::panic::catch_unwind(|| oracle(data)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(v)) => Err(format!("invariant broken: {v}")),
        Err(panic) => Err(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string payload)")
        )),
    }
}

#[test]
fn every_corpus_file_passes_its_oracle() {
    let root = fuzz_dir();
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, oracle) in TARGETS {
        let corpus = files_in(&root.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz corpus {}/corpus/{name} is missing or empty",
            root.display()
        );
        let artifacts = files_in(&root.join("artifacts").join(name));
        for file in corpus.iter().chain(&artifacts) {
            let data = std::fs::read(file).unwrap();
            if let Err(e) = replay(*oracle, &data) {
                failures.push(format!("{}: {e}", file.display()));
            }
            replayed += 1;
        }
    }
    println!("replayed {replayed} fuzz inputs");
    assert!(
        failures.is_empty(),
        "{} of {replayed} fuzz inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The fuzz project, its shims, its corpora and `oracles::TARGETS` name the same targets.
#[test]
fn fuzz_targets_corpora_and_oracles_agree() {
    let root = fuzz_dir();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("\n[workspace]\n"),
        "fuzz/Cargo.toml must keep its own empty [workspace]"
    );
    let mut corpora: Vec<String> = std::fs::read_dir(root.join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    corpora.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(
        corpora, names,
        "one corpus directory per oracle, no orphans"
    );
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} is not a [[bin]] of fuzz/Cargo.toml"
        );
        let shim =
            std::fs::read_to_string(root.join("fuzz_targets").join(format!("{name}.rs"))).unwrap();
        assert!(
            shim.contains(&format!("check({name}(data))")),
            "fuzz_targets/{name}.rs must call oracles::{name}::{name}"
        );
    }
}

/// The replay can fail: a known-bad input trips each kind of oracle check.
#[test]
fn replay_reports_violations_and_panics() {
    fn broken(_: &[u8]) -> Result<(), Violation> {
        Err(Violation("always".into()))
    }
    fn panics(_: &[u8]) -> Result<(), Violation> {
        panic!("boom")
    }
    assert!(replay(broken, b"x").unwrap_err().contains("always"));
    assert!(replay(panics, b"x").unwrap_err().contains("boom"));
}

#[test]
fn oracles_accept_known_good_inputs() {
    let cases: &[(&str, &[u8])] = &[
        ("connect_target", b"API.OpenAI.com.:443"),
        ("connect_target", b"[::ffff:1.2.3.4]:443"),
        ("proxy_authorization", b"Basic YWdlbnQ6dG9r"),
        ("proxy_authorization", b"Bearer x"),
        ("sse_openai", b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\r\n\r\ndata: [DONE]\r\r"),
        ("sse_anthropic", b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        ("usage_json", br#"{"model":"m","usage":{"input_tokens":1,"output_tokens":2}}"#),
        ("base_url", b"https://API.example.com:8443/v1/\n//evil.example/x?y"),
    ];
    for (name, input) in cases {
        let (_, oracle) = TARGETS.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(
            oracle(input),
            Ok(()),
            "{name} on {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn reference_framing_matches_known_transcript() {
    let events = reference_events(b": c\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\ndata: x\rdata");
    assert_eq!(
        events,
        vec![Event {
            event: "a".into(),
            data: "one\ntwo".into()
        }]
    );
}

#[test]
fn violations_are_reported_not_hidden() {
    // The oracle machinery itself must be able to fail.
    let check = |x: u8| -> Outcome {
        ensure_eq!(x, 1, "x must be one");
        Ok(())
    };
    assert!(check(1).is_ok());
    let err = check(2).unwrap_err();
    assert!(err.0.contains("x must be one"), "{err}");
}
