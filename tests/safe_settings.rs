//! Settings that would quietly expose or lose data are refused or made safe, through the
//! real binary: the embedded store is private whatever the umask, store URLs the program
//! cannot use exit 2, plain http off this machine needs `--allow-http`, and a manifest on
//! standard input needs `--files-root`.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use visibuild_sandbox::SandboxConfig;

/// The binary run by `sh` under `umask 000` (files it makes would be world-writable unless
/// it sets their mode itself), with no `DATABASE_URL` unless `database_url` is given.
fn under_umask_0(
    state: &Path,
    database_url: Option<&str>,
    args: &[&str],
) -> tokio::process::Command {
    let mut sh = tokio::process::Command::new("sh");
    sh.arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("XDG_STATE_HOME", state)
        .kill_on_drop(true);
    for var in [
        "DATABASE_URL",
        "RUST_LOG",
        "VISIBUILD_TOKEN",
        "VISIBUILD_LOG_FORMAT",
        "VISIBUILD_UI_TOKEN",
    ] {
        sh.env_remove(var);
    }
    if let Some(url) = database_url {
        sh.env("DATABASE_URL", url);
    }
    sh
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_and_its_folder_are_readable_by_their_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // The default store, held open by `ui` so that its -wal and -shm files exist.
    let server = spawn(under_umask_0(
        &state,
        None,
        &["ui", "--listen", "127.0.0.1:0"],
    ));
    let folder = state.join("visibuild-import");
    let db = folder.join("queue.db");
    let mut waited = 0;
    while !std::fs::read_to_string(&server.stderr)
        .unwrap_or_default()
        .contains("dashboard listening on")
    {
        assert!(waited < 600, "ui did not start: {}", server.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(mode(&folder), 0o700, "{}", folder.display());
    assert_eq!(mode(&db), 0o600, "{}", db.display());
    for suffix in ["-wal", "-shm"] {
        let file = folder.join(format!("queue.db{suffix}"));
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    server.terminate();
    let out = server.wait().await;
    assert_eq!(out.code, 0, "{out:?}");

    // `sqlite:PATH` in a folder that does not exist yet: the same.
    let elsewhere = tmp.path().join("new-folder").join("mine.db");
    let url = format!("sqlite:{}", elsewhere.display());
    let out = output(under_umask_0(&state, Some(&url), &["migrate"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(mode(elsewhere.parent().unwrap()), 0o700);
    assert_eq!(mode(&elsewhere), 0o600);

    // A store that exists is left as its owner made it.
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = output(under_umask_0(&state, Some(&url), &["status"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(mode(&elsewhere), 0o640);
}

#[tokio::test]
async fn store_urls_the_program_cannot_use_exit_2_naming_the_accepted_forms() {
    let manifest = Manifest::new(1, |_| 1);
    for url in [
        "mysql://importer:hunter2@127.0.0.1:3306/visibuild",
        "sqlite::memory:",
        "sqlite:",
        "redis://127.0.0.1/0",
    ] {
        for args in [
            vec!["migrate"],
            vec!["status"],
            vec!["enqueue", manifest.arg()],
            vec!["import", manifest.arg(), "--sandbox"],
        ] {
            let out = output(bin_on(url, &args)).await;
            assert_eq!(out.code, 2, "{url} {args:?}: {out:?}");
            for accepted in ["unset", "sqlite:PATH", "postgres://"] {
                assert!(out.stderr.contains(accepted), "{url} {args:?}: {out:?}");
            }
            assert!(!out.all().contains("hunter2"), "{out:?}");
            assert!(!out.all().contains("no such table"), "{out:?}");
        }
    }
}

async fn plain_http_to_another_machine_needs_allow_http(db: Db) {
    let sb = start(SandboxConfig::default()).await;
    let port = sb.base_url().rsplit(':').next().unwrap().to_string();
    // 0.0.0.0 reaches this machine but is not a loopback name: it stands for a remote host.
    let remote = format!("http://0.0.0.0:{port}");
    let manifest = Manifest::new(2, |_| 1);

    let out = output(with_token(
        &db,
        &["import", manifest.arg(), "--api-url", &remote],
    ))
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("plain http") && out.stderr.contains("--allow-http"),
        "{out:?}"
    );
    assert!(sb.tickets().is_empty());

    let out = output(with_token(
        &db,
        &[
            "import",
            manifest.arg(),
            "--api-url",
            &remote,
            "--allow-http",
        ],
    ))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stderr.matches("over plain http").count(),
        1,
        "warned once: {out:?}"
    );
    assert_eq!(created_by_title(&sb), each_once(2));

    let mut by_env = with_token(&db, &["run", "--api-url", &remote]);
    by_env.env("VISIBUILD_ALLOW_HTTP", "1");
    let out = output(by_env).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("over plain http"), "{out:?}");

    // Loopback needs no flag and says nothing.
    let out = output(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stderr.contains("plain http"), "{out:?}");
}
on_both!(plain_http_to_another_machine_needs_allow_http);

/// The binary with `file` as its standard input.
async fn with_stdin(mut cmd: tokio::process::Command, file: &Path) -> Out {
    let out = cmd
        .stdin(Stdio::from(std::fs::File::open(file).unwrap()))
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn a_manifest_on_standard_input_needs_files_root() {
    let db = Db::sqlite("stdin");
    let manifest = Manifest::new(2, |_| 1);
    let root = manifest.dir.path().to_str().unwrap();
    for given in ["-", "/dev/stdin"] {
        for command in ["check", "enqueue"] {
            let out = with_stdin(bin(&db, &[command, given]), &manifest.path).await;
            assert_eq!(out.code, 2, "{command} {given}: {out:?}");
            assert!(
                out.stderr.contains("--files-root") && out.stderr.contains("stream"),
                "{command} {given}: {out:?}"
            );
        }
        let out = with_stdin(
            bin(&db, &["check", given, "--files-root", root]),
            &manifest.path,
        )
        .await;
        assert_eq!(out.code, 0, "{given}: {out:?}");
        assert!(out.stdout.contains("ok: 2 tickets"), "{out:?}");
    }
    let out = output(bin(&db, &["status", "--json"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        !out.stdout.contains("DEF-0000"),
        "nothing was loaded: {out:?}"
    );
}

async fn a_manifest_on_standard_input_is_imported_from_its_files_root(db: Db) {
    let sb = start(SandboxConfig::default()).await;
    let manifest = Manifest::new(3, |t| t % 2 + 1);
    let root = manifest.dir.path().to_str().unwrap();
    let out = with_stdin(
        with_token(
            &db,
            &[
                "import",
                "-",
                "--files-root",
                root,
                "--api-url",
                &sb.base_url(),
            ],
        ),
        &manifest.path,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(created_by_title(&sb), each_once(3));
    assert_eq!(sb.objects().len(), 1 + 2 + 1, "every file uploaded");
}
on_both!(a_manifest_on_standard_input_is_imported_from_its_files_root);
