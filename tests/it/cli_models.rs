//! The default model from the command line under concurrency: two processes setting different
//! defaults at the same moment, round after round, always leave exactly one default (the last
//! writer's), on both backends. The single-process rules (set, changed, refused when it would
//! leave none) are steps of `cli_data`.

use crate::support::bin::{bin, stderr, Target};
use crate::support::db::{writer, TestDb};
use crate::support::*;

async fn two_processes_leave_one_default(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let t = Target::local(dir.path(), &db.url);
    t.expect(
        0,
        &[
            "providers",
            "create",
            "--name",
            "openai",
            "--kind",
            "openai",
            "--base-url",
            "https://api.openai.com",
        ],
    )
    .await;
    for m in ["gpt-a", "gpt-b", "gpt-c"] {
        t.expect(
            0,
            &["models", "create", "--provider", "openai", "--model", m],
        )
        .await;
    }
    let store = writer(&db.url).await;
    for round in 0..8 {
        let (first, second) = if round % 2 == 0 {
            ("openai/gpt-b", "openai/gpt-c")
        } else {
            ("gpt-c", "gpt-b")
        };
        let spawn = |model: &str| {
            bin()
                .args(["models", "default", model])
                .args(&t.flags)
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(first), spawn(second));
        let (a, b) = tokio::task::spawn_blocking(move || {
            (a.wait_with_output().unwrap(), b.wait_with_output().unwrap())
        })
        .await
        .unwrap();
        assert!(a.status.success(), "round {round}: {}", stderr(&a));
        assert!(b.status.success(), "round {round}: {}", stderr(&b));
        let models = store.list_models().await.unwrap();
        let defaults: Vec<&str> = models
            .iter()
            .filter(|m| m.is_default)
            .map(|m| m.model.as_str())
            .collect();
        assert_eq!(defaults.len(), 1, "round {round}: {defaults:?}");
        assert!(
            ["gpt-b", "gpt-c"].contains(&defaults[0]),
            "round {round}: {defaults:?}"
        );
    }
    store.close().await;
}
both_backends!(concurrent_models_default, two_processes_leave_one_default);
