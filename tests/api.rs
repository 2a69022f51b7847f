//! The local HTTP API of one real node (store, writer and server in this process): the shapes a
//! till's developer relies on, the sale lifecycle, and bad input that must change nothing.

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tillmesh::testkit::{Api, InProcessNode, cash_sale, product};

async fn node() -> (tempfile::TempDir, InProcessNode) {
    let tmp = tempfile::tempdir().unwrap();
    let node = InProcessNode::init(&tmp.path().join("till"), "Till 1")
        .await
        .unwrap();
    (tmp, node)
}

async fn stock(api: &Api, id: &str) -> i64 {
    api.ok_get(&format!("/v1/products/{id}")).await.unwrap()["stock"]
        .as_i64()
        .unwrap()
}

async fn entries(api: &Api) -> u64 {
    api.ok_get("/v1/status").await.unwrap()["entries"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_shapes_work_as_written() {
    let (_tmp, node) = node().await;
    let api = &node.api;
    let (status, p) = api
        .post("/v1/products", &json!({"sku": "TEA-1", "name": "Green tea", "price": {"amount_minor": 350, "currency": "USD"}, "tax_code": "NON", "stock": 40}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(p["stock"], 40);
    assert_eq!(p["sku"], "TEA-1");
    let product_id = p["id"].as_str().unwrap().to_owned();

    let (status, s) = api
        .post("/v1/sales", &json!({"lines": [{"sku": "TEA-1", "qty": 2}], "payments": [{"method": "cash", "amount_minor": 700}]}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{s}");
    assert_eq!(s["status"], "completed");
    assert_eq!(s["total"], json!({"amount_minor": 700, "currency": "USD"}));
    assert!(s["id"].is_string());
    assert_eq!(s["receipt_number"], "TILL1-000001");
    assert_eq!(stock(api, &product_id).await, 38);

    let (status, c) = api
        .post(
            "/v1/customers",
            &json!({"display_name": "Jane Doe", "email": "jane@example.com"}),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{c}");
    assert_eq!(c["display_name"], "Jane Doe");
    assert!(c["id"].is_string());

    let got = api
        .ok_get(&format!("/v1/sales/{}", s["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(got["receipt_number"], "TILL1-000001");
    assert_eq!(got["lines"][0]["product_id"], product_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxes_follow_the_mesh_rates_and_round_per_line() {
    let (_tmp, node) = node().await;
    let api = &node.api;
    let (st, _) = api
        .put(
            "/v1/settings/tax-rates/TAX",
            &json!({"name": "Sales tax", "rate_ppm": 82_500}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK);
    let settings = api.ok_get("/v1/settings").await.unwrap();
    assert_eq!(
        settings["tax_rates"]["NON"]["rate_ppm"], 0,
        "NON always exists"
    );
    let mut mug = product("MUG-1", "Mug", 1200, 5);
    mug["tax_code"] = json!("TAX");
    api.ok_post("/v1/products", &mug).await.unwrap();
    api.ok_post("/v1/products", &product("TEA-1", "Tea", 350, 5))
        .await
        .unwrap();
    // 12.00 at 8.25 % = 0.99 tax; tea untaxed; the card pays the rest exactly.
    let s = api
        .ok_post("/v1/sales", &json!({"lines": [{"sku": "MUG-1", "qty": 1}, {"sku": "TEA-1", "qty": 1}], "payments": [{"method": "card"}]}))
        .await
        .unwrap();
    assert_eq!(s["subtotal"]["amount_minor"], 1550);
    assert_eq!(s["tax"]["amount_minor"], 99);
    assert_eq!(s["total"]["amount_minor"], 1649);
    assert_eq!(s["paid"]["amount_minor"], 1649);
    assert_eq!(s["change"]["amount_minor"], 0);
    let mut bad = product("X-1", "X", 100, 1);
    bad["tax_code"] = json!("VAT");
    let (st, e) = api.post("/v1/products", &bad).await.unwrap();
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("VAT"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn void_and_refund_are_new_facts_and_move_stock_back() {
    let (_tmp, node) = node().await;
    let api = &node.api;
    let p = api
        .ok_post("/v1/products", &product("CAKE-1", "Cake", 425, 20))
        .await
        .unwrap();
    let pid = p["id"].as_str().unwrap();
    let s1 = api
        .ok_post("/v1/sales", &cash_sale("CAKE-1", 3, 1275))
        .await
        .unwrap();
    let s2 = api
        .ok_post("/v1/sales", &cash_sale("CAKE-1", 4, 1700))
        .await
        .unwrap();
    assert_eq!(stock(api, pid).await, 13);

    let v = api
        .ok_post(
            &format!("/v1/sales/{}/void", s1["id"].as_str().unwrap()),
            &json!({"reason": "twice"}),
        )
        .await
        .unwrap();
    assert_eq!(v["status"], "voided");
    assert_eq!(
        v["total"]["amount_minor"], 1275,
        "a void keeps the sale's amounts"
    );
    assert_eq!(stock(api, pid).await, 16);
    let (st, e) = api
        .post(
            &format!("/v1/sales/{}/void", s1["id"].as_str().unwrap()),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    assert_eq!(
        stock(api, pid).await,
        16,
        "a refused second void moves nothing"
    );

    let sid = s2["id"].as_str().unwrap();
    let r = api
        .post(
            &format!("/v1/sales/{sid}/refund"),
            &json!({"lines": [{"sku": "CAKE-1", "qty": 1}], "reason": "stale"}),
        )
        .await
        .unwrap();
    assert_eq!(r.0, StatusCode::CREATED, "{}", r.1);
    assert_eq!(r.1["total"]["amount_minor"], 425);
    assert_eq!(
        r.1["method"], "cash",
        "refunds default to the sale's payment method"
    );
    assert_eq!(stock(api, pid).await, 17);
    let (st, e) = api
        .post(
            &format!("/v1/sales/{sid}/refund"),
            &json!({"lines": [{"sku": "CAKE-1", "qty": 4}]}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "over-refund: {e}");
    let (st, e) = api
        .post(&format!("/v1/sales/{sid}/void"), &json!({}))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CONFLICT, "void after a refund: {e}");
    let rest = api
        .ok_post(&format!("/v1/sales/{sid}/refund"), &json!({}))
        .await
        .unwrap();
    assert_eq!(rest["total"]["amount_minor"], 1275, "the rest: 3 cakes");
    let sale = api.ok_get(&format!("/v1/sales/{sid}")).await.unwrap();
    assert_eq!(sale["status"], "refunded");
    assert_eq!(
        sale["total"]["amount_minor"], 1700,
        "the sale's own amounts never change"
    );
    assert_eq!(sale["refunds"].as_array().unwrap().len(), 2);
    assert_eq!(stock(api, pid).await, 20);

    let adj = api
        .post(
            "/v1/stock-adjustments",
            &json!({"lines": [{"product_id": pid, "delta": -2}], "reason": "dropped"}),
        )
        .await
        .unwrap();
    assert_eq!(adj.0, StatusCode::CREATED, "{}", adj.1);
    assert_eq!(stock(api, pid).await, 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_list_newest_first_in_pages() {
    let (_tmp, node) = node().await;
    let api = &node.api;
    api.ok_post("/v1/products", &product("TEA-1", "Tea", 100, 1000))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(
            api.ok_post("/v1/sales", &cash_sale("TEA-1", 1, 100))
                .await
                .unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let page1 = api.ok_get("/v1/sales?limit=3").await.unwrap();
    let got: Vec<&str> = page1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![&ids[6], &ids[5], &ids[4]]);
    let after = page1["next_after"].as_str().unwrap();
    let page2 = api
        .ok_get(&format!("/v1/sales?limit=3&after={after}"))
        .await
        .unwrap();
    let got: Vec<&str> = page2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![&ids[3], &ids[2], &ids[1]]);
    let page3 = api
        .ok_get(&format!(
            "/v1/sales?limit=3&after={}",
            page2["next_after"].as_str().unwrap()
        ))
        .await
        .unwrap();
    assert_eq!(page3["items"].as_array().unwrap().len(), 1);
    assert!(page3["next_after"].is_null());
    let (st, _) = api.get("/v1/sales?limit=0").await.unwrap();
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = api.get("/v1/sales?after=yesterday").await.unwrap();
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_patch_field_by_field() {
    let (_tmp, node) = node().await;
    let api = &node.api;
    let c = api
        .ok_post(
            "/v1/customers",
            &json!({"display_name": "Jane Doe", "email": "jane@example.com", "phone": "555-0100"}),
        )
        .await
        .unwrap();
    let path = format!("/v1/customers/{}", c["id"].as_str().unwrap());
    let (st, p) = api
        .patch(&path, &json!({"phone": null, "notes": "prefers oat milk"}))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["email"], "jane@example.com", "untouched fields stay");
    assert!(p.get("phone").is_none(), "null clears: {p}");
    assert_eq!(p["notes"], "prefers oat milk");
    let (st, e) = api
        .patch(&path, &json!({"email": "not-an-email"}))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (st, e) = api
        .patch(&path, &json!({"ledger": {"qbo_id": "1"}}))
        .await
        .unwrap();
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "tills cannot write the ledger: {e}"
    );
    let list = api.all("/v1/customers").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["notes"], "prefers oat milk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_back_office_records_vendors_invoices_payments_and_expenses() {
    let (_tmp, node) = node().await;
    let api = &node.api;
    api.put(
        "/v1/settings/tax-rates/TAX",
        &json!({"name": "Sales tax", "rate_ppm": 82_500}),
    )
    .await
    .unwrap();
    api.ok_post("/v1/products", &json!({"sku": "MUG-1", "name": "Mug", "price": {"amount_minor": 1200, "currency": "USD"}, "tax_code": "TAX", "stock": 5}))
        .await
        .unwrap();
    let amy = api
        .ok_post("/v1/customers", &json!({"display_name": "Amy's Cafe"}))
        .await
        .unwrap();
    let amy = amy["id"].as_str().unwrap();
    let mill = api
        .ok_post("/v1/vendors", &json!({"display_name": "Mill Road Bakery"}))
        .await
        .unwrap();
    // Priced and taxed from the catalogue, as a sale is.
    let (st, inv) = api
        .post(
            "/v1/invoices",
            &json!({"customer_id": amy, "lines": [{"sku": "MUG-1", "qty": 10}], "due_in_days": 14}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CREATED, "{inv}");
    assert_eq!(inv["subtotal"]["amount_minor"], 12_000);
    assert_eq!(inv["tax"]["amount_minor"], 990);
    assert_eq!(inv["total"]["amount_minor"], 12_990);
    assert_eq!(inv["status"], "sent");
    assert!(inv["number"].as_str().unwrap().starts_with("INV-"), "{inv}");
    let (st, pay) = api
        .post("/v1/payments", &json!({"customer_id": amy, "invoice_id": inv["id"], "amount_minor": 12_990, "method": "bank transfer"}))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CREATED, "{pay}");
    let (st, exp) = api
        .post("/v1/expenses", &json!({"vendor_id": mill["id"], "method": "cash", "lines": [{"description": "flour", "account": "Supplies", "amount_minor": 2599}]}))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CREATED, "{exp}");
    assert_eq!(exp["total"]["amount_minor"], 2599);
    for (path, n) in [
        ("/v1/vendors", 1),
        ("/v1/invoices", 1),
        ("/v1/payments", 1),
        ("/v1/expenses", 1),
    ] {
        assert_eq!(api.all(path).await.unwrap().len(), n, "{path}");
    }
    let got = api
        .ok_get(&format!("/v1/invoices/{}", inv["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(got["total"], inv["total"]);
    // Bad input: refused with the reason, nothing written.
    let before = entries(api).await;
    for (path, body, why) in [
        (
            "/v1/invoices",
            json!({"customer_id": mill["id"], "lines": [{"sku": "MUG-1", "qty": 1}]}),
            "customer",
        ),
        (
            "/v1/invoices",
            json!({"customer_id": amy, "lines": [{"sku": "NOPE", "qty": 1}]}),
            "NOPE",
        ),
        (
            "/v1/invoices",
            json!({"customer_id": amy, "lines": [{"sku": "MUG-1", "qty": 1}], "due_in_days": 9999}),
            "due_in_days",
        ),
        (
            "/v1/invoices",
            json!({"customer_id": amy, "number": "INV-2026-11-0000000001", "lines": [{"sku": "MUG-1", "qty": 1}]}),
            "longer than 21 characters",
        ),
        (
            "/v1/expenses",
            json!({"method": "cash", "lines": [{"description": "x", "account": "A".repeat(101), "amount_minor": 5}]}),
            "longer than 100 characters",
        ),
        (
            "/v1/payments",
            json!({"customer_id": amy, "amount_minor": 0, "method": "cash"}),
            "amount",
        ),
        (
            "/v1/expenses",
            json!({"method": "cash", "lines": [{"description": "x", "account": "Supplies", "amount_minor": -5}]}),
            "amount",
        ),
    ] {
        let (st, e) = api.post(path, &body).await.unwrap();
        assert!(st.is_client_error(), "{path} {body}: {st} {e}");
        assert!(
            e.to_string().contains(why),
            "{path}: the error says why: {e}"
        );
    }
    assert_eq!(entries(api).await, before, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let (_tmp, node) = node().await;
    let api = &node.api;
    let p = api
        .ok_post("/v1/products", &product("TEA-1", "Tea", 350, 40))
        .await
        .unwrap();
    let pid = p["id"].as_str().unwrap();
    let before = entries(api).await;

    let (st, e) = api
        .raw(reqwest::Method::POST, "/v1/sales", b"{\"lines\": [")
        .await
        .unwrap();
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json")),
        "{e}"
    );
    let (st, e) = api
        .post(
            "/v1/sales",
            &json!({"lines": [{"sku": "TEA-1", "quantity": 2}], "payments": []}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("quantity"),
        "names the unknown field: {e}"
    );
    let (st, e) = api
        .post("/v1/sales", &cash_sale("NOPE-1", 1, 100))
        .await
        .unwrap();
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_product")),
        "{e}"
    );
    assert!(e["error"]["message"].as_str().unwrap().contains("NOPE-1"));
    let (st, e) = api
        .post("/v1/sales", &cash_sale("TEA-1", -2, 700))
        .await
        .unwrap();
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid")),
        "{e}"
    );
    let (st, e) = api
        .post("/v1/sales", &cash_sale("TEA-1", 2, 699))
        .await
        .unwrap();
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("underpaid")),
        "{e}"
    );
    let (st, e) = api
        .post(
            "/v1/sales/0190f1b2-7c3a-7def-8000-0123456789ab/void",
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "{e}"
    );
    let (st, _) = api
        .post("/v1/sales/not-an-id/void", &json!({}))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, e) = api
        .post("/v1/products", &product("TEA-1", "Tea again", 350, 1))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CONFLICT, "duplicate sku: {e}");
    let (st, e) = api
        .post(
            "/v1/products",
            &json!({"sku": "X", "name": "X", "price": {"amount_minor": -5, "currency": "USD"}}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "negative price: {e}");
    let (st, e) = api
        .post(
            "/v1/products",
            &json!({"sku": "X", "name": "X", "price": {"amount_minor": 5, "currency": "EUR"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        st,
        StatusCode::UNPROCESSABLE_ENTITY,
        "foreign currency: {e}"
    );
    let (st, e) = api.post("/v1/sales", &json!({"lines": [{"sku": "TEA-1", "qty": 1}], "payments": [{"method": "card", "amount_minor": 500}]})).await.unwrap();
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "card overpaid: {e}");
    let (st, e) = api.get("/v1/nothing-here").await.unwrap();
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    assert_eq!(
        entries(api).await,
        before,
        "no refused request wrote an entry"
    );
    assert_eq!(stock(api, pid).await, 40, "no refused sale moved stock");
    assert!(
        api.ok_get("/v1/sales").await.unwrap()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // And the node still serves.
    api.ok_post("/v1/sales", &cash_sale("TEA-1", 2, 700))
        .await
        .unwrap();
    assert_eq!(stock(api, pid).await, 38);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_carries_every_committed_change() {
    let (_tmp, node) = node().await;
    let api = &node.api;
    api.ok_post("/v1/products", &product("TEA-1", "Tea", 350, 40))
        .await
        .unwrap();
    let resp = api
        .client()
        .get(format!("{}/v1/events", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let sale = api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 2, 700))
        .await
        .unwrap();
    let mut seen = String::new();
    let mut events: Vec<Value> = Vec::new();
    while events.len() < 2 {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = seen.find("\n\n") {
            let block: String = seen.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                events.push(serde_json::from_str(data.trim()).unwrap());
            }
        }
    }
    let sale_event = events
        .iter()
        .find(|e| e["type"] == "sale")
        .expect("a sale event");
    assert_eq!(sale_event["doc_id"], sale["id"]);
    assert_eq!(sale_event["origin"], "local");
    assert_eq!(sale_event["doc"]["total"]["amount_minor"], 700);
    let product_event = events
        .iter()
        .find(|e| e["type"] == "product")
        .expect("the stock move");
    assert_eq!(product_event["doc"]["stock"], 38);
    assert_eq!(
        product_event["origin"], "stock",
        "the level moved because the sale did"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_describes_the_device() {
    let (_tmp, node) = node().await;
    let api = &node.api;
    api.ok_post("/v1/products", &product("TEA-1", "Tea", 350, 40))
        .await
        .unwrap();
    api.ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    let s = api.ok_get("/v1/status").await.unwrap();
    let me = node.repo.identity();
    assert_eq!(s["device"]["id"], me.device_id.to_string());
    assert_eq!(s["device"]["name"], "Till 1");
    assert_eq!(s["mesh_id"], me.mesh_id.to_string());
    assert_eq!(
        s["version_vector"][me.device_id.to_string()],
        3,
        "settings, product, sale"
    );
    assert_eq!(s["documents"]["sale"], 1);
    assert_eq!(s["documents"]["product"], 1);
    assert_eq!(s["rejected"]["count"], 0);
}

/// No web page and no other program without the node's token can drive the API: a
/// cross-origin `text/plain` POST (which a browser sends without asking), a rebound `Host`, a
/// wrong token and a body declared as anything but JSON (even an empty one) are each refused
/// with a clear JSON error, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_nodes_token_from_its_own_address_drives_the_api() {
    let (tmp, node) = node().await;
    let api = &node.api;
    let before = entries(api).await;
    let token = tillmesh_node::api::auth::read_token(&tmp.path().join("till")).unwrap();
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(tmp.path().join("till/api.token"))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode & 0o077, 0, "the token is the owner's alone");
    let port = api.base.rsplit(':').next().unwrap().to_owned();
    let admit = r#"{"device": "aa", "role": "admin", "name": "evil"}"#;
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/v1/members", api.base);
    let cases = [
        (
            "a page's cross-origin form post, no token",
            plain
                .post(&url)
                .header("origin", "http://evil.example")
                .header("content-type", "text/plain")
                .body(admit),
            403,
            "forbidden_origin",
        ),
        (
            "a name rebound to 127.0.0.1",
            plain
                .post(&url)
                .header("host", format!("evil.example:{port}"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(admit),
            403,
            "bad_host",
        ),
        (
            "a wrong token",
            plain
                .post(&url)
                .bearer_auth("0".repeat(64))
                .header("content-type", "application/json")
                .body(admit),
            401,
            "unauthorized",
        ),
        (
            "no token",
            plain.get(format!("{}/v1/status", api.base)),
            401,
            "unauthorized",
        ),
        (
            "the token, but a text/plain body",
            plain
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "text/plain")
                .body(admit),
            415,
            "unsupported_media_type",
        ),
        (
            "the token, and an empty text/plain post to an endpoint that reads no body",
            plain
                .post(format!(
                    "{}/v1/members/{}/revoke",
                    api.base,
                    "aa".repeat(32)
                ))
                .bearer_auth(&token)
                .header("content-type", "text/plain"),
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, req, status, code) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.len() > 20),
            "{what} says why: {body}"
        );
    }
    assert_eq!(entries(api).await, before, "nothing was written");
    // The CLI's way, and `localhost` at the same port, work.
    let ok = plain
        .get(format!("http://localhost:{port}/v1/status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
}

/// A page on an allowed origin can use the API from a browser: its preflight is answered
/// (without a token, as browsers send none), and answers carry `Access-Control-Allow-Origin`.
/// Any other origin's preflight is refused. `GET /v1/hello` proves the node holds the token
/// without showing it, bound to its own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_gets_cors_and_hello_proves_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tillmesh_node::Repo::init(
        &tmp.path().join("till"),
        "Till 1",
        tillmesh_protocol::Currency::USD,
    )
    .await
    .unwrap();
    let dir = repo.dir().to_owned();
    tillmesh_node::api::auth::ensure_token(&dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tillmesh_node::server::run_with(
        repo,
        listener,
        None,
        None,
        vec!["http://console.example".into()],
        std::future::pending(),
    ));
    // As `init` does; the server uses the same token.
    let token = tillmesh_node::api::auth::ensure_token(&dir).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{addr}");
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}/v1/sales"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight("http://console.example").await.unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "http://console.example");
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization"),
        "{h:?}"
    );
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let refused = preflight("http://evil.example").await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let real = http
        .get(format!("{base}/v1/status"))
        .header("origin", "http://console.example")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(real.status(), StatusCode::OK);
    assert_eq!(
        real.headers()["access-control-allow-origin"],
        "http://console.example"
    );

    // Hello: no token needed, and the answer is the HMAC only the token's holder can make.
    let nonce = "0123456789abcdef0123456789abcdef";
    let hello: Value = http
        .get(format!("{base}/v1/hello?nonce={nonce}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expected = tillmesh_node::api::auth::hello_proof(&token, &addr.to_string(), nonce);
    assert_eq!(hello["proof"], expected.as_str());
    assert!(
        !hello.to_string().contains(&token),
        "it never shows the token"
    );
    let other_addr = tillmesh_node::api::auth::hello_proof(&token, "127.0.0.1:1", nonce);
    assert_ne!(expected, other_addr, "the proof names the address");
    let bad = http
        .get(format!("{base}/v1/hello?nonce=zz"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    // A rebound name gets no proof either.
    let rebound = http
        .get(format!("{base}/v1/hello?nonce={nonce}"))
        .header("host", format!("evil.example:{}", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
}

/// Signs a client in to the console as `tillmesh console`'s link does; the `Set-Cookie`.
async fn console_sign_in(api: &Api, http: &reqwest::Client) -> String {
    let code = api.ok_post("/v1/console/login", &json!({})).await.unwrap();
    let link = format!(
        "{}{}{}",
        api.base,
        code["path"].as_str().unwrap(),
        code["code"].as_str().unwrap()
    );
    let r = http.get(link).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    r.headers()["set-cookie"].to_str().unwrap().to_owned()
}

/// The console's session: a random value per sign-in (nothing of the token, not the same for
/// every browser), in a cookie named for the API's port, with a lifetime; all cookies of
/// that name are looked at (another program on the host may plant one); signing out ends
/// that session on the node, and only that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_are_random_and_end_at_sign_out() {
    let (_tmp, node) = node().await;
    let api = &node.api;
    let token = tillmesh_node::api::auth::read_token(node.repo.dir()).unwrap();
    let port = api.base.rsplit(':').next().unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (first, second) = (
        console_sign_in(api, &http).await,
        console_sign_in(api, &http).await,
    );
    let name = format!("tillmesh_console_{port}=");
    for set in [&first, &second] {
        assert!(set.starts_with(&name), "{set}");
        for attr in ["HttpOnly", "SameSite=Strict", "Max-Age=43200"] {
            assert!(set.contains(attr), "{attr} in {set}");
        }
        assert!(!set.contains(&token), "{set}");
    }
    let cookie = |set: &str| set.split(';').next().unwrap().to_owned();
    let (a, b) = (cookie(&first), cookie(&second));
    assert_ne!(a, b, "each sign-in is its own session");
    let status_with = |cookie: String| {
        let http = http.clone();
        let url = format!("{}/v1/status", api.base);
        async move {
            http.get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status_with(a.clone()).await, StatusCode::OK);
    // A planted cookie of the same name, sent first, does not lock the console out.
    assert_eq!(
        status_with(format!("{name}0000; {a}")).await,
        StatusCode::OK
    );
    // Another port's name does not open this one.
    let value = a.split_once('=').unwrap().1;
    assert_eq!(
        status_with(format!("tillmesh_console_1={value}")).await,
        StatusCode::UNAUTHORIZED
    );
    let out = http
        .post(format!("{}/v1/console/logout", api.base))
        .header("cookie", &a)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let cleared = out.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with(&name) && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(status_with(a).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status_with(b).await,
        StatusCode::OK,
        "the other session stays"
    );
}
