//! The emulator driven by the QuickBooks client libraries people use, as they use them:
//! python-quickbooks with Intuit's own OAuth client (intuit-oauth), and node-quickbooks. Each
//! script (`tests/clients/`) connects over HTTPS by OAuth, refreshes, creates, reads, queries, updates,
//! voids, batches, reads the change feed and meets a refusal; any answer the library cannot
//! take as Intuit's fails it.
//!
//! `.ci/run` installs the libraries under `target/clients` (pinned versions). Elsewhere,
//! without them, the tests say how to install them and pass, unless
//! `TILLMESH_REQUIRE_CLIENTS=1` (as CI sets) makes their absence a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use tillmesh_qbo_emulator::{self as emulator, Config};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/clients")
}

/// The installed library folder, or `None` (after saying why) when it is absent and not
/// required.
fn installed(sub: &str, what: &str) -> Option<PathBuf> {
    let dir = clients_dir().join(sub);
    if dir.exists() {
        return Some(dir);
    }
    let how = format!(
        "{what} is not installed in {}: run the client install step of .ci/run",
        dir.display()
    );
    if std::env::var("TILLMESH_REQUIRE_CLIENTS").as_deref() == Ok("1") {
        panic!("{how}");
    }
    eprintln!("skipped: {how}");
    None
}

/// Runs `program script` against a fresh emulator serving HTTPS on loopback, with `env`. The
/// libraries trust the emulator's CA as a user's program would: Python's `requests` through
/// `REQUESTS_CA_BUNDLE`, Node through `NODE_EXTRA_CA_CERTS`.
async fn run_against_emulator(program: &str, script: &str, env: (&str, PathBuf)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = Config {
        tls: true,
        ..Config::new(dir.path())
    };
    let (ends, _task) = emulator::start(listener, config, std::future::pending())
        .await
        .unwrap();
    let ca = ends.ca_file.clone().expect("the emulator's CA");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let endpoints = serde_json::to_string(&ends).unwrap();
    let program = program.to_owned();
    let (var, path) = (env.0.to_owned(), env.1);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .arg(&script)
            .env(var, path)
            .env("REQUESTS_CA_BUNDLE", &ca)
            .env("NODE_EXTRA_CA_CERTS", &ca)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("QBO_ENDPOINTS", endpoints)
            .output()
            .unwrap_or_else(|e| panic!("{program} could not run: {e}"))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_quickbooks_and_intuit_oauth_take_it_for_quickbooks() {
    let Some(dir) = installed("python", "python-quickbooks") else {
        return;
    };
    let out = run_against_emulator("python3", "python_client.py", ("PYTHONPATH", dir)).await;
    assert!(
        out.contains("python-quickbooks:") && out.contains("calls ok"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_quickbooks_takes_it_for_quickbooks() {
    let Some(dir) = installed("node/node_modules", "node-quickbooks") else {
        return;
    };
    let out = run_against_emulator("node", "node_client.js", ("NODE_PATH", dir)).await;
    assert!(
        out.contains("node-quickbooks:") && out.contains("calls ok"),
        "{out}"
    );
}
