//! Business data at rest: nothing a till sold, nor whom to, is readable in its data folder,
//! whether the node stopped cleanly or lost power with writes still in its log; and a store
//! sealed with a passphrase opens with that passphrase only, and says so.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tillmesh::testkit::{LOOPBACK_NET, NodeProcess, product, tillmesh};

const BIN: &str = env!("CARGO_BIN_EXE_tillmesh");

const PRODUCT_NAME: &str = "Zanzibar-Plum-Tart-7Q";
const SKU: &str = "KUMQUAT-SKU-93Z";
const CUSTOMER: &str = "Philomena Quasimodo-Brightwater";
const EMAIL: &str = "philomena.q@example.org";
const DEVICE: &str = "Quokka-Till-9X";
const MEMBER: &str = "Wombat-Phone-4K";

/// Every file under `dir` that holds one of `needles` in plain bytes, with the needle.
fn plain_hits(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for item in std::fs::read_dir(dir).unwrap() {
        let path = item.unwrap().path();
        if path.is_dir() {
            hits.extend(plain_hits(&path, needles));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                hits.push(format!("{} holds '{n}'", path.display()));
            }
        }
    }
    hits
}

const SECRETS: [&str; 6] = [PRODUCT_NAME, SKU, CUSTOMER, EMAIL, DEVICE, MEMBER];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_folder_holds_no_business_data_in_plain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("till");
    NodeProcess::init(BIN.as_ref(), &dir, DEVICE).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("storage.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is owner-only");
    }

    // A long checkpoint interval: when the node is killed, its writes are in the log only.
    let mut node =
        NodeProcess::start_with(BIN.as_ref(), &dir, &[("TILLMESH_CHECKPOINT_MS", "600000")])
            .await
            .unwrap();
    let p = node
        .api
        .ok_post("/v1/products", &product(SKU, PRODUCT_NAME, 725, 12))
        .await
        .unwrap();
    // A member's name travels in a membership operation: sealed like the rest.
    let phone = tillmesh_protocol::DeviceKey::from_secret([44; 32]).device_id();
    node.api
        .ok_post(
            "/v1/members",
            &json!({"device_id": phone, "role": "viewer", "name": MEMBER}),
        )
        .await
        .unwrap();
    let c = node
        .api
        .ok_post(
            "/v1/customers",
            &json!({"display_name": CUSTOMER, "email": EMAIL}),
        )
        .await
        .unwrap();
    let sale = node
        .api
        .ok_post(
            "/v1/sales",
            &json!({"lines": [{"sku": SKU, "qty": 2}], "payments": [{"method": "card"}]}),
        )
        .await
        .unwrap();

    node.kill9();
    let wal = std::fs::metadata(dir.join("tillmesh.wal")).unwrap().len();
    assert!(wal > 0, "the log should hold the writes after a kill");
    assert_eq!(
        plain_hits(&dir, &SECRETS),
        Vec::<String>::new(),
        "after kill -9"
    );

    // Replayed from the sealed log, and readable through the node.
    let mut node = NodeProcess::start(BIN.as_ref(), &dir).await.unwrap();
    let id = p["id"].as_str().unwrap();
    let got = node
        .api
        .ok_get(&format!("/v1/products/{id}"))
        .await
        .unwrap();
    assert_eq!(got["name"], PRODUCT_NAME);
    assert_eq!(got["stock"], 10);
    let cid = c["id"].as_str().unwrap();
    let got = node
        .api
        .ok_get(&format!("/v1/customers/{cid}"))
        .await
        .unwrap();
    assert_eq!(got["display_name"], CUSTOMER);
    let sid = sale["id"].as_str().unwrap();
    node.api.ok_get(&format!("/v1/sales/{sid}")).await.unwrap();

    node.stop().unwrap();
    assert_eq!(
        plain_hits(&dir, &SECRETS),
        Vec::<String>::new(),
        "after a clean stop"
    );
}

/// Runs `tillmesh run` and expects it to refuse; returns its stderr.
fn run_refused(dir: &Path, extra: &[&str]) -> String {
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--data",
            &dir.to_string_lossy(),
            "--api",
            "127.0.0.1:0",
        ])
        .args(LOOPBACK_NET)
        .args(extra)
        .env_remove("TILLMESH_DATA")
        .env_remove("TILLMESH_PASSPHRASE_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tillmesh run {extra:?} opened the store; it should have refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passphrase_store_opens_with_its_passphrase_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("till");
    let d = dir.to_str().unwrap();
    let right = tmp.path().join("right.txt");
    let wrong = tmp.path().join("wrong.txt");
    std::fs::write(&right, "correct horse battery staple\n").unwrap();
    std::fs::write(&wrong, "correct horse battery stable\n").unwrap();
    let out = tillmesh(
        BIN.as_ref(),
        &[
            "init",
            "--data",
            d,
            "--name",
            DEVICE,
            "--passphrase-file",
            right.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dir.join("storage.key").exists(),
        "a passphrase store keeps no key on disk"
    );

    let err = run_refused(&dir, &["--passphrase-file", wrong.to_str().unwrap()]);
    assert!(
        err.contains("passphrase does not unlock the store"),
        "{err}"
    );
    let err = run_refused(&dir, &[]);
    assert!(err.contains("sealed with a passphrase"), "{err}");
    assert!(err.contains("--passphrase-file"), "{err}");

    let env = [("TILLMESH_PASSPHRASE_FILE", right.to_str().unwrap())];
    let mut node = NodeProcess::spawn(BIN.as_ref(), &dir, &LOOPBACK_NET, &env)
        .await
        .unwrap();
    let p = node
        .api
        .ok_post("/v1/products", &product(SKU, PRODUCT_NAME, 725, 12))
        .await
        .unwrap();
    node.stop().unwrap();
    assert_eq!(plain_hits(&dir, &SECRETS), Vec::<String>::new());

    let node = NodeProcess::spawn(BIN.as_ref(), &dir, &LOOPBACK_NET, &env)
        .await
        .unwrap();
    let id = p["id"].as_str().unwrap();
    let got = node
        .api
        .ok_get(&format!("/v1/products/{id}"))
        .await
        .unwrap();
    assert_eq!(got["name"], PRODUCT_NAME);
    assert_eq!(got["sku"], SKU);
}
