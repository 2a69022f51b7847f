//! The console in a real browser (headless Chromium, driven by `tests/console/drive.mjs` with
//! playwright-core), against real node processes on loopback: sign in with the one-time link,
//! see a till go offline when its process is killed and come back, settle a customer's phone
//! that two tills changed while apart by picking a value on the page, see the other till show
//! it, undo it, and sign out. Each page is written as a screenshot to
//! `target/console-screenshots/`.
//!
//! `.ci/run` installs Chromium (apt) and playwright-core (npm, into `target/browser`).
//! Without them the test says how to install them and passes, unless
//! `TILLMESH_REQUIRE_BROWSER=1` (as CI sets) makes their absence a failure.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tillmesh::testkit::{self, Api, LOOPBACK_NET, NodeProcess, product, tillmesh, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_tillmesh");
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Chromium and playwright-core, or `None` (after saying why) when absent and not required.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let playwright = workspace().join("target/browser/node_modules/playwright-core");
    match chromium {
        Some(c) if playwright.is_dir() => Some((c, playwright)),
        _ => {
            let how = format!(
                "the console's browser test needs Chromium (`apt-get install chromium`) and playwright-core in {} (`npm install --prefix target/browser playwright-core@1.65.2`); .ci/run installs both",
                playwright.display()
            );
            if std::env::var("TILLMESH_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("{how}");
            }
            eprintln!("skipped: {how}");
            None
        }
    }
}

/// The browser driver: one JSON command in, one JSON answer out.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driver {
    fn start(chromium: &Path, playwright: &Path, shots: &Path) -> Driver {
        let mut child = Command::new("node")
            .arg(workspace().join("tests/console/drive.mjs"))
            .env("CHROMIUM", chromium)
            .env("PLAYWRIGHT_CORE_DIR", playwright)
            .env("SCREENSHOTS", shots)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs the browser driver");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Driver {
            child,
            stdin,
            stdout,
        }
    }

    /// Runs one command in a blocking thread's stead (the driver answers within its own
    /// timeouts), failing the test with the page's error.
    fn run(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let answer: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the driver answered {line:?} to {cmd}: {e}"));
        assert_eq!(answer["ok"], true, "{cmd} failed in the browser: {answer}");
        answer
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The customer's phone on `api`'s node; null until the customer has reached it.
async fn phone(api: &Api, id: &str) -> anyhow::Result<Value> {
    let (status, c) = api.get(&format!("/v1/customers/{id}")).await?;
    Ok(if status.is_success() {
        c["phone"].clone()
    } else {
        Value::Null
    })
}

async fn wait_phone(api: &Api, id: &str, want: &Value) -> anyhow::Result<()> {
    wait_for(&format!("phone {want}"), SYNC_TIMEOUT, || async {
        Ok((phone(api, id).await? == *want).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_mesh_and_settles_a_conflict_in_a_browser() -> anyhow::Result<()> {
    let Some((chromium, playwright)) = browser() else {
        return Ok(());
    };
    let shots = workspace().join("target/console-screenshots");
    std::fs::create_dir_all(&shots)?;
    let root = tempfile::tempdir()?;
    let mut nodes = testkit::shop(
        BIN.as_ref(),
        root.path(),
        2,
        &LOOPBACK_NET,
        &product("TEA-1", "Green tea", 350, 100),
    )
    .await?;
    let (a, b) = (nodes[0].api.clone(), nodes[1].api.clone());
    let b_id = b.ok_get("/v1/status").await?["device"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let customer = a
        .ok_post(
            "/v1/customers",
            &json!({ "display_name": "Ada Lovelace", "phone": "555-0100" }),
        )
        .await?;
    let cid = customer["id"].as_str().unwrap().to_owned();
    wait_phone(&b, &cid, &json!("555-0100")).await?;

    // Sign in with the link `tillmesh console` prints; it works once.
    let link = testkit::tillmesh_json(
        BIN.as_ref(),
        &[
            "console",
            "--data",
            nodes[0].dir.to_str().unwrap(),
            "--no-open",
        ],
    )?;
    let url = link["url"].as_str().unwrap().to_owned();
    let mut page = Driver::start(&chromium, &playwright, &shots);
    let me = page.run(json!({ "do": "login", "url": url }));
    assert!(me["me"].as_str().unwrap().contains("Till 0"), "{me}");
    let reused = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(&url)
        .send()
        .await?;
    assert_eq!(reused.status(), 401, "a used sign-in link is refused");

    // The mesh: the other till synced, then offline when its process dies, then back.
    page.run(json!({ "do": "wait_state", "device": b_id, "state": "synced" }));
    page.run(json!({ "do": "screenshot", "name": "1-mesh" }));
    nodes[1].kill9();
    page.run(json!({ "do": "wait_state", "device": b_id, "state": "offline" }));
    page.run(json!({ "do": "screenshot", "name": "2-mesh-till-offline" }));

    // Apart: the owner changes the phone while the till is down; then the till, started with
    // no way to reach the owner (no saved peers, no mDNS), changes it too.
    a.patch(
        &format!("/v1/customers/{cid}"),
        &json!({ "phone": "555-0111" }),
    )
    .await?;
    let peers = nodes[1].dir.join("peers");
    let aside = nodes[1].dir.join("peers.aside");
    std::fs::rename(&peers, &aside)?;
    let mut apart = NodeProcess::spawn(BIN.as_ref(), &nodes[1].dir, &LOOPBACK_NET, &[]).await?;
    apart
        .api
        .patch(
            &format!("/v1/customers/{cid}"),
            &json!({ "phone": "555-0222" }),
        )
        .await?;
    apart.stop()?;
    std::fs::rename(&aside, &peers)?;
    nodes[1] = NodeProcess::start(BIN.as_ref(), &nodes[1].dir).await?;
    let b = nodes[1].api.clone();
    page.run(json!({ "do": "wait_state", "device": b_id, "state": "conflict" }));

    // The conflict, with both values and who set each; the owner picks one.
    page.run(json!({ "do": "goto", "hash": "conflicts" }));
    let found = page.run(json!({ "do": "wait_conflict", "doc": cid, "path": "phone" }));
    let values = found["values"].to_string();
    assert!(
        values.contains("555-0111") && values.contains("Till 0"),
        "{values}"
    );
    assert!(
        values.contains("555-0222") && values.contains("Till 1"),
        "{values}"
    );
    page.run(json!({ "do": "screenshot", "name": "3-conflicts" }));

    // The same list from the command line; a pick that is not one of the values, or made on
    // a till, is refused with the reason.
    let dir = |i: usize| nodes[i].dir.to_str().unwrap().to_owned();
    let listed = tillmesh(BIN.as_ref(), &["conflicts", "--data", &dir(0)])?;
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("FIELD") && text.contains("555-0111") && text.contains("555-0222"),
        "{text}"
    );
    let wrong = tillmesh(
        BIN.as_ref(),
        &[
            "conflicts",
            "--data",
            &dir(0),
            "--pick",
            &cid,
            "phone",
            "555-0333",
        ],
    )?;
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("not one of the values"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let till = tillmesh(
        BIN.as_ref(),
        &[
            "conflicts",
            "--data",
            &dir(1),
            "--pick",
            &cid,
            "phone",
            "555-0222",
        ],
    )?;
    assert!(
        String::from_utf8_lossy(&till.stderr).contains("for a manager, an admin or the owner"),
        "{}",
        String::from_utf8_lossy(&till.stderr)
    );
    // Pick the value Automerge does not show, so both the pick and its undo change what
    // every till shows.
    let shown_before = phone(&a, &cid).await?;
    let pick = if shown_before == json!("555-0222") {
        "555-0111"
    } else {
        "555-0222"
    };
    page.run(json!({ "do": "pick", "doc": cid, "path": "phone", "value": pick }));
    page.run(json!({ "do": "screenshot", "name": "4-conflict-resolved" }));
    wait_phone(&a, &cid, &json!(pick)).await?;
    wait_phone(&b, &cid, &json!(pick)).await?;
    let listed = b.ok_get("/v1/conflicts").await?;
    assert!(
        !listed.to_string().contains(&cid),
        "settled everywhere: {listed}"
    );

    // Undo puts back what the field showed before the pick, on every till.
    assert_ne!(shown_before, json!(pick));
    page.run(json!({ "do": "undo" }));
    wait_phone(&a, &cid, &shown_before).await?;
    wait_phone(&b, &cid, &shown_before).await?;
    page.run(json!({ "do": "screenshot", "name": "5-resolution-undone" }));

    // The other pages draw, and the till is back in sync.
    page.run(json!({ "do": "goto", "hash": "mesh" }));
    page.run(json!({ "do": "wait_state", "device": b_id, "state": "synced" }));
    for (hash, name) in [
        ("alerts", "6-alerts"),
        ("members", "7-members"),
        ("bridge", "8-bridge"),
    ] {
        page.run(json!({ "do": "goto", "hash": hash }));
        page.run(json!({ "do": "text", "selector": "main section h2" }));
        if hash == "members" {
            // An invite from the page: the code large, the whole invite, and its QR code.
            let invite = page.run(json!({ "do": "invite", "role": "manager" }));
            let line = invite["line"].as_str().unwrap();
            let code = invite["code"].as_str().unwrap();
            assert!(
                line.starts_with("tm2:") && line.contains("/p2p/"),
                "{invite}"
            );
            assert!(
                line.contains(&code.replace('-', "")) || line.contains(code),
                "{invite}"
            );
            assert!(invite["qr_width"].as_u64().unwrap() >= 240, "{invite}");
            let for_whom = invite["for"].as_str().unwrap();
            assert!(for_whom.contains("for a manager"), "{invite}");
        }
        page.run(json!({ "do": "screenshot", "name": name }));
    }
    let errors = page.run(json!({ "do": "errors" }));
    assert_eq!(errors["errors"], json!([]), "the page threw");

    // Signing out ends the session on the node: the cookie the browser held opens nothing.
    let out = page.run(json!({ "do": "signout" }));
    assert_eq!(out["left"], 0, "the browser forgot the cookie: {out}");
    let held = out["cookies"][0]
        .as_str()
        .expect("a session cookie was held");
    let after = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("{}/v1/status", nodes[0].api.base))
        .header("cookie", held)
        .send()
        .await?;
    assert_eq!(after.status(), 401, "a signed-out session is refused");
    for n in &mut nodes {
        n.stop()?;
    }
    Ok(())
}
