//! The `secrets` commands of the real binary, and key files it refuses.

use super::*;

#[tokio::test]
async fn secrets_init_status_and_rotate_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = cli_db(d);
    let key = "sk-cli-secret-value-abcd";
    let mut printed = String::new();
    let mut run = |args: &str, env: &[(&str, &str)]| {
        let out = cli(d, args, env);
        printed.push_str(&stdout(&out));
        printed.push_str(&stderr(&out));
        out
    };

    let init = run("secrets init --secrets-key-file keys/old.key", &[]);
    assert!(init.status.success(), "{}", stderr(&init));
    let old_path = d.join("keys/old.key");
    let mode = std::fs::metadata(&old_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let old_text = std::fs::read_to_string(&old_path).unwrap();
    let old_id = SecretsKey::load(&old_path).unwrap().id().to_string();
    assert!(stdout(&init).contains(&old_id), "{}", stdout(&init));
    let again = run("secrets init --secrets-key-file keys/old.key", &[]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(
        std::fs::read_to_string(&old_path).unwrap(),
        old_text,
        "kept"
    );

    // The key file can come from the environment, like every flag.
    let create = run(
        &format!("providers create --name openai --kind openai --base-url https://api.openai.com --key-env K --database-url {db}"),
        &[("K", key), ("AIBRIDGE_SECRETS_KEY_FILE", "keys/old.key")],
    );
    assert!(create.status.success(), "{}", stderr(&create));
    assert!(raw_keys(&db).await[0]
        .2
        .starts_with(&format!("enc:v1:{old_id}:")));

    let list = run(&format!("providers list --database-url {db}"), &[]);
    assert!(
        stdout(&list).contains(aibridge_proxy::store::UNREADABLE_MASK),
        "{}",
        stdout(&list)
    );
    let with_key = format!("--database-url {db} --secrets-key-file keys/old.key");
    let list = run(&format!("providers list {with_key}"), &[]);
    assert!(stdout(&list).contains("sk-...abcd"), "{}", stdout(&list));
    let status = run(&format!("secrets status {with_key}"), &[]);
    let line = format!("encrypted under secrets key {old_id}: 1 (--secrets-key-file)");
    assert!(stdout(&status).contains(&line), "{}", stdout(&status));

    let init = run("secrets init --secrets-key-file keys/new.key", &[]);
    assert!(init.status.success(), "{}", stderr(&init));
    let new_id = SecretsKey::load(&d.join("keys/new.key"))
        .unwrap()
        .id()
        .to_string();
    let rotate = format!("secrets rotate --database-url {db}");
    let to_new =
        format!("{rotate} --secrets-key-file keys/old.key --new-secrets-key-file keys/new.key");
    let rotated = run(&to_new, &[]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let line =
        format!("re-encrypted 1 of 1 provider keys under secrets key {new_id} (0 already were)");
    assert!(stdout(&rotated).contains(&line), "{}", stdout(&rotated));
    assert!(raw_keys(&db).await[0]
        .2
        .starts_with(&format!("enc:v1:{new_id}:")));
    let twice = run(&to_new, &[]);
    assert!(
        stdout(&twice).contains("re-encrypted 0 of 1"),
        "{}",
        stdout(&twice)
    );
    // Without the key the rows are under, the rotation refuses and names the provider.
    let lost = run(
        &format!("{rotate} --new-secrets-key-file keys/old.key"),
        &[],
    );
    assert!(!lost.status.success());
    let err = stderr(&lost);
    assert!(err.contains("openai") && err.contains(&new_id), "{err}");
    let neither = run(&format!("{rotate} --secrets-key-file keys/new.key"), &[]);
    assert_eq!(
        neither.status.code(),
        Some(64),
        "--new-secrets-key-file or --to-plaintext"
    );

    let plain = run(
        &format!("{rotate} --secrets-key-file keys/new.key --to-plaintext"),
        &[],
    );
    assert!(
        stdout(&plain).contains("decrypted 1 of 1"),
        "{}",
        stdout(&plain)
    );
    assert_eq!(raw_keys(&db).await[0].2, key, "back in clear");
    let status = run(&format!("secrets status --database-url {db}"), &[]);
    assert!(
        stdout(&status).contains("in clear: 1"),
        "{}",
        stdout(&status)
    );

    let new_text = std::fs::read_to_string(d.join("keys/new.key")).unwrap();
    for secret in [key, old_text.trim(), new_text.trim()] {
        assert!(!printed.contains(secret), "a secret was printed");
    }
}

#[test]
fn a_group_readable_key_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = cli_db(d);
    let init = cli(d, "secrets init --secrets-key-file open.key", &[]);
    assert!(init.status.success(), "{}", stderr(&init));
    std::fs::set_permissions(d.join("open.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let serve = cli(
        d,
        &format!("serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --database-url {db} --secrets-key-file open.key"),
        &[],
    );
    assert_eq!(serve.status.code(), Some(64), "{}", stderr(&serve));
    let err = stderr(&serve);
    assert!(
        err.contains("open.key") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(
        !d.join("certs/ca-key.pem").exists(),
        "refused before generating anything"
    );
    let list = cli(
        d,
        &format!("providers list --database-url {db} --previous-secrets-key-file open.key"),
        &[],
    );
    assert!(!list.status.success());
    let err = stderr(&list);
    assert!(
        err.contains("open.key") && err.contains("chmod 600"),
        "{err}"
    );
}
