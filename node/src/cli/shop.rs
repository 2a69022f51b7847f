//! Shop commands: each builds an API request, sends it through the [`Client`], and prints the
//! answer as text (or JSON with `--json`).

use std::path::Path;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tillmesh_protocol::Currency;
use tillmesh_protocol::money::parse_decimal;

use super::Command;
use super::client::Client;
use crate::store::KeySource;

#[derive(Subcommand)]
pub enum ProductCmd {
    /// Add a product to the catalogue.
    Add {
        #[arg(long)]
        sku: String,
        #[arg(long)]
        name: String,
        /// Price before tax, as a decimal amount ("3.50").
        #[arg(long)]
        price: String,
        #[arg(long, default_value = "NON")]
        tax_code: String,
        /// Units in stock to start with.
        #[arg(long, default_value_t = 0)]
        stock: i64,
        /// Never oversell it: its stock is held as rights per device, and a till sells only
        /// the units it holds rights to (asking connected devices for more).
        #[arg(long)]
        strict: bool,
        /// Raise an alert when the level falls to this or below.
        #[arg(long)]
        low_stock: Option<i64>,
    },
    /// List the catalogue.
    List,
    /// Change a product's name, price, tax code or active flag (a manager's or an admin's
    /// right): `tillmesh product set TEA-1 --price 3.75`.
    Set {
        /// The product's SKU or id.
        product: String,
        #[arg(long)]
        name: Option<String>,
        /// Price before tax, as a decimal amount ("3.75").
        #[arg(long)]
        price: Option<String>,
        #[arg(long)]
        tax_code: Option<String>,
        /// `true` to sell it again, `false` to take it off sale.
        #[arg(long)]
        active: Option<bool>,
    },
}

#[derive(Args)]
pub struct SellArgs {
    /// Items as SKU or SKU:QTY.
    #[arg(required = true)]
    items: Vec<String>,
    /// Cash handed over, as a decimal amount; change is given back.
    #[arg(long)]
    cash: Option<String>,
    /// Method that pays the rest of the total exactly (default: cash, when --cash is not given).
    #[arg(long)]
    pay: Option<String>,
    /// Customer id.
    #[arg(long)]
    customer: Option<String>,
}

#[derive(Args)]
pub struct RefundArgs {
    sale_id: String,
    /// A part to refund, as LINE:QTY (line numbers start at 0); repeatable. None: everything.
    #[arg(long = "line")]
    lines: Vec<String>,
    #[arg(long, default_value = "")]
    reason: String,
    /// The goods are not put back in stock (damaged, say).
    #[arg(long)]
    no_restock: bool,
}

#[derive(Args)]
pub struct StockArgs {
    /// Adjust stock: SKU:DELTA ("TEA-1:24" after a delivery, "TEA-1:-2" for breakage); repeatable.
    #[arg(long = "adjust")]
    adjust: Vec<String>,
    /// Why stock is adjusted (required with --adjust).
    #[arg(long)]
    reason: Option<String>,
    /// Give rights to a strict product's units to another device: SKU:QTY (with --to).
    #[arg(long, requires = "to", conflicts_with = "adjust")]
    give: Option<String>,
    /// The device that receives the rights: its name or id.
    #[arg(long)]
    to: Option<String>,
    /// Take back the rights a revoked device held to a strict product: SKU (with --from; an
    /// admin's or the owner's right).
    #[arg(long, requires = "from", conflicts_with_all = ["adjust", "give"])]
    reclaim: Option<String>,
    /// The revoked device whose rights are reclaimed: its name or id.
    #[arg(long)]
    from: Option<String>,
}

#[derive(Subcommand)]
pub enum CustomerCmd {
    /// Add a customer.
    Add {
        /// The name shown on receipts and in lists.
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        phone: Option<String>,
    },
    /// List customers.
    List,
}

#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn show(&self, value: &Value, text: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            println!("{}", text());
        }
    }
}

fn split_pair<'a>(text: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    text.rsplit_once(':')
        .with_context(|| format!("'{text}' should be {what}"))
}

pub fn money(v: &Value) -> String {
    let amount = v.get("amount_minor").and_then(Value::as_i64).unwrap_or(0);
    match v
        .get("currency")
        .and_then(Value::as_str)
        .and_then(|c| c.parse::<Currency>().ok())
    {
        Some(c) => format!("{} {c}", c.format_amount(amount)),
        None => amount.to_string(),
    }
}

async fn currency(client: &Client) -> anyhow::Result<Currency> {
    let settings = client.get("/v1/settings").await?;
    Ok(serde_json::from_value(settings["currency"].clone())?)
}

pub async fn dispatch(
    data: &Path,
    command: Command,
    out: Output,
    keys: &KeySource,
) -> anyhow::Result<()> {
    let client = Client::connect(data, keys).await?;
    match command {
        Command::Status { watch: true } => watch_catch_up(&client, out).await?,
        Command::Status { watch: false } => {
            let s = client.get("/v1/status").await?;
            out.show(&s, || {
                let docs = s["documents"].as_object().map(|m| {
                    m.iter().filter(|(_, n)| n.as_u64() != Some(0)).map(|(t, n)| format!("{t}: {n}")).collect::<Vec<_>>().join(", ")
                });
                let mut text = format!(
                    "device   {} ({})\nmesh     {}\nentries  {} from {} device(s)\ndocs     {}\nrejected {}",
                    s["device"]["name"].as_str().unwrap_or("?"),
                    s["device"]["id"].as_str().unwrap_or("?"),
                    s["mesh_id"].as_str().unwrap_or("?"),
                    s["entries"],
                    s["version_vector"].as_object().map(|m| m.len()).unwrap_or(0),
                    docs.unwrap_or_default(),
                    s["rejected"]["count"],
                );
                if let Some(undone) = s["undone"]["recent"].as_array().filter(|u| !u.is_empty()) {
                    text.push_str(&format!(
                        "\nundone   {} entries held but not applied (the membership says they do not stand); the documents they touched were rebuilt without them:",
                        s["undone"]["count"]
                    ));
                    for u in undone {
                        text.push_str(&format!(
                            "\n  {}:{} {}",
                            u["author"].as_str().map_or("?", |a| &a[..a.len().min(8)]),
                            u["seq"],
                            u["reason"].as_str().unwrap_or("")
                        ));
                    }
                }
                for a in s["alerts"].as_array().into_iter().flatten() {
                    text.push_str(&format!("\nALERT    {}", a["message"].as_str().unwrap_or("?")));
                }
                text.push_str(&network_text(&s["network"]));
                text
            });
        }
        Command::Product(ProductCmd::Add {
            sku,
            name,
            price,
            tax_code,
            stock,
            strict,
            low_stock,
        }) => {
            let cur = currency(&client).await?;
            let amount = cur.parse_amount(&price)?;
            let mut body = json!({ "sku": sku, "name": name, "price": { "amount_minor": amount, "currency": cur }, "tax_code": tax_code, "stock": stock });
            if strict {
                body["stock_policy"] = "strict".into();
            }
            if let Some(l) = low_stock {
                body["low_stock_at"] = l.into();
            }
            let p = client.post("/v1/products", &body).await?;
            out.show(&p, || {
                format!(
                    "added {} {} at {} ({} in stock), id {}",
                    p["sku"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or(""),
                    money(&p["price"]),
                    p["stock"],
                    p["id"].as_str().unwrap_or("")
                )
            });
        }
        Command::Product(ProductCmd::List) => print_catalogue(&client, out).await?,
        Command::Product(ProductCmd::Set {
            product,
            name,
            price,
            tax_code,
            active,
        }) => {
            let mut patch = serde_json::Map::new();
            if let Some(v) = name {
                patch.insert("name".into(), json!(v));
            }
            if let Some(v) = price {
                let cur = currency(&client).await?;
                let amount = cur.parse_amount(&v)?;
                patch.insert(
                    "price".into(),
                    json!({ "amount_minor": amount, "currency": cur }),
                );
            }
            if let Some(v) = tax_code {
                patch.insert("tax_code".into(), json!(v));
            }
            if let Some(v) = active {
                patch.insert("active".into(), json!(v));
            }
            if patch.is_empty() {
                bail!("say what changes: --name, --price, --tax-code or --active");
            }
            let id = match product.parse::<tillmesh_protocol::DocId>() {
                Ok(id) => id.to_string(),
                Err(_) => all_pages(&client, "/v1/products")
                    .await?
                    .into_iter()
                    .find(|p| p["sku"] == product.as_str())
                    .and_then(|p| p["id"].as_str().map(str::to_owned))
                    .with_context(|| format!("no product has the SKU or id '{product}'"))?,
            };
            let p = client
                .patch(&format!("/v1/products/{id}"), &Value::Object(patch))
                .await?;
            out.show(&p, || {
                format!(
                    "{} {} at {}{}",
                    p["sku"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or(""),
                    money(&p["price"]),
                    if p["active"] == false {
                        " (off sale)"
                    } else {
                        ""
                    }
                )
            });
        }
        Command::Stock(StockArgs {
            reclaim: Some(sku),
            from: Some(from),
            ..
        }) => {
            let r = client
                .post("/v1/stock-reclaims", &json!({ "sku": sku, "from": from }))
                .await?;
            out.show(&r, || {
                format!(
                    "reclaimed rights to {} of {sku} from {from}; they are on their way to device {}, which takes them in when it next runs",
                    r["qty"],
                    r["to"].as_str().map_or("?", |d| &d[..d.len().min(8)])
                )
            });
        }
        Command::Stock(StockArgs {
            give: Some(give),
            to: Some(to),
            ..
        }) => {
            let (sku, qty) = split_pair(&give, "SKU:QTY")?;
            let qty: i64 = qty
                .parse()
                .with_context(|| format!("'{qty}' in '{give}' is not a whole number"))?;
            let t = client
                .post(
                    "/v1/stock-transfers",
                    &json!({ "sku": sku, "to": to, "qty": qty }),
                )
                .await?;
            out.show(&t, || {
                format!("gave rights to {qty} of {sku} to {to}; they are its own once it takes them into a sale")
            });
        }
        Command::Stock(StockArgs {
            adjust,
            reason: None,
            ..
        }) if adjust.is_empty() => print_stock(&client, out).await?,
        Command::Stock(StockArgs { adjust, reason, .. }) => {
            if adjust.is_empty() {
                bail!("--reason goes with --adjust SKU:DELTA");
            }
            let reason = reason.context(
                "say why stock moves with --reason (\"delivery\", \"breakage\", \"count\")",
            )?;
            let mut lines = Vec::new();
            for a in &adjust {
                let (sku, delta) = split_pair(a, "SKU:DELTA")?;
                let delta: i64 = delta
                    .parse()
                    .with_context(|| format!("'{delta}' in '{a}' is not a whole number"))?;
                lines.push(json!({ "sku": sku, "delta": delta }));
            }
            let adj = client
                .post(
                    "/v1/stock-adjustments",
                    &json!({ "lines": lines, "reason": reason }),
                )
                .await?;
            out.show(&adj, || {
                format!(
                    "stock adjusted ({} line(s)), record {}",
                    lines.len(),
                    adj["id"].as_str().unwrap_or("")
                )
            });
        }
        Command::Sell(SellArgs {
            items,
            cash,
            pay,
            customer,
        }) => {
            let mut lines = Vec::new();
            for item in &items {
                let (sku, qty) = match item.rsplit_once(':') {
                    Some((s, q)) => (
                        s,
                        q.parse::<i64>()
                            .with_context(|| format!("'{q}' in '{item}' is not a quantity"))?,
                    ),
                    None => (item.as_str(), 1),
                };
                lines.push(json!({ "sku": sku, "qty": qty }));
            }
            let mut payments = Vec::new();
            if let Some(cash) = &cash {
                let cur = currency(&client).await?;
                payments.push(json!({ "method": "cash", "amount_minor": cur.parse_amount(cash)? }));
            }
            if let Some(method) = pay.or_else(|| cash.is_none().then(|| "cash".to_owned())) {
                payments.push(json!({ "method": method }));
            }
            let mut body = json!({ "lines": lines, "payments": payments });
            if let Some(c) = customer {
                body["customer_id"] = json!(c);
            }
            let s = client.post("/v1/sales", &body).await?;
            out.show(&s, || {
                let mut t = format!(
                    "sale {}  total {}  paid {}",
                    s["receipt_number"].as_str().unwrap_or(""),
                    money(&s["total"]),
                    money(&s["paid"])
                );
                if s["change"]["amount_minor"].as_i64().unwrap_or(0) > 0 {
                    t += &format!("  change {}", money(&s["change"]));
                }
                t + &format!("\nid {}", s["id"].as_str().unwrap_or(""))
            });
        }
        Command::Conflicts { pick: Some(pick) } => {
            let [doc_id, field, value] = &pick[..] else {
                bail!("--pick takes DOC_ID FIELD VALUE");
            };
            let value: Value =
                serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.clone()));
            let path: Vec<&str> = field.split('.').collect();
            let answer = client
                .post(
                    "/v1/conflicts/resolve",
                    &json!({ "resolutions": [{ "doc_id": doc_id, "path": path, "value": value }] }),
                )
                .await?;
            let r = &answer["results"][0];
            if let Some(e) = r.get("error") {
                bail!(
                    "{} ({})",
                    e["message"].as_str().unwrap_or("refused"),
                    e["code"].as_str().unwrap_or("error")
                );
            }
            out.show(&answer, || {
                format!(
                    "{field} of {doc_id} is now {value} on every device (it showed {})",
                    r["previous"]
                )
            });
        }
        Command::Conflicts { pick: None } => {
            let list = client.get("/v1/conflicts").await?;
            out.show(&list, || conflicts_text(&list));
        }
        Command::Sales { limit } => {
            let page = client.get(&format!("/v1/sales?limit={limit}")).await?;
            out.show(&page, || {
                let mut t = format!(
                    "{:<16} {:<10} {:>12}  {:<36}",
                    "RECEIPT", "STATUS", "TOTAL", "ID"
                );
                for s in page["items"].as_array().into_iter().flatten() {
                    t += &format!(
                        "\n{:<16} {:<10} {:>12}  {}",
                        s["receipt_number"].as_str().unwrap_or(""),
                        s["status"].as_str().unwrap_or(""),
                        money(&s["total"]),
                        s["id"].as_str().unwrap_or("")
                    );
                }
                t
            });
        }
        Command::Void { sale_id, reason } => {
            let s = client
                .post(
                    &format!("/v1/sales/{sale_id}/void"),
                    &json!({ "reason": reason }),
                )
                .await?;
            out.show(&s, || {
                format!(
                    "sale {} voided; its goods are back in stock",
                    s["receipt_number"].as_str().unwrap_or("")
                )
            });
        }
        Command::Refund(RefundArgs {
            sale_id,
            lines,
            reason,
            no_restock,
        }) => {
            let mut parts = Vec::new();
            for l in &lines {
                let (line, qty) = split_pair(l, "LINE:QTY")?;
                parts.push(json!({ "line": line.parse::<usize>().context("line numbers are whole numbers")?, "qty": qty.parse::<i64>().context("quantities are whole numbers")? }));
            }
            let r = client
                .post(
                    &format!("/v1/sales/{sale_id}/refund"),
                    &json!({ "lines": parts, "reason": reason, "restock": !no_restock }),
                )
                .await?;
            out.show(&r, || {
                format!(
                    "refunded {} by {} against sale {}",
                    money(&r["total"]),
                    r["method"].as_str().unwrap_or(""),
                    r["sale_receipt_number"].as_str().unwrap_or("")
                )
            });
        }
        Command::Customer(CustomerCmd::Add { name, email, phone }) => {
            let mut body = json!({ "display_name": name });
            if let Some(e) = email {
                body["email"] = json!(e);
            }
            if let Some(p) = phone {
                body["phone"] = json!(p);
            }
            let c = client.post("/v1/customers", &body).await?;
            out.show(&c, || {
                format!(
                    "added customer {}, id {}",
                    c["display_name"].as_str().unwrap_or(""),
                    c["id"].as_str().unwrap_or("")
                )
            });
        }
        Command::Customer(CustomerCmd::List) => {
            let list = all_pages(&client, "/v1/customers").await?;
            out.show(&Value::Array(list.clone()), || {
                let mut t = format!("{:<30} {:<30} {}", "NAME", "EMAIL", "ID");
                for c in &list {
                    t += &format!(
                        "\n{:<30} {:<30} {}",
                        c["display_name"].as_str().unwrap_or(""),
                        c["email"].as_str().unwrap_or(""),
                        c["id"].as_str().unwrap_or("")
                    );
                }
                t
            });
        }
        Command::Settings { time_zone } => {
            let s = match time_zone {
                Some(zone) => {
                    client
                        .put("/v1/settings/time-zone", &json!({ "time_zone": zone }))
                        .await?
                }
                None => client.get("/v1/settings").await?,
            };
            out.show(&s, || {
                format!(
                    "{} ({}), time zone {}",
                    s["business_name"].as_str().unwrap_or(""),
                    s["currency"].as_str().unwrap_or(""),
                    s["time_zone"].as_str().unwrap_or("UTC (not set)")
                )
            });
        }
        Command::Tax {
            code,
            percent,
            name,
        } => {
            let ppm = parse_decimal(&percent, 4)
                .with_context(|| format!("'{percent}' is not a percentage like 8.25"))?;
            let rate_ppm = u32::try_from(ppm)
                .ok()
                .filter(|p| *p <= 1_000_000)
                .with_context(|| format!("{percent} % is not between 0 and 100"))?;
            let s = client
                .put(
                    &format!("/v1/settings/tax-rates/{code}"),
                    &json!({ "name": name.unwrap_or_else(|| code.clone()), "rate_ppm": rate_ppm }),
                )
                .await?;
            out.show(&s, || format!("tax code {code} is now {percent} %"));
        }
        Command::Init { .. }
        | Command::Run { .. }
        | Command::ApiToken
        | Command::Demo { .. }
        | Command::Console { .. }
        | Command::Invite { .. }
        | Command::Join { .. }
        | Command::Members
        | Command::Revoke { .. }
        | Command::Role { .. }
        | Command::Rejected { .. } => {
            unreachable!("handled by the caller")
        }
    }
    Ok(())
}

async fn print_catalogue(client: &Client, out: Output) -> anyhow::Result<()> {
    let list = all_pages(client, "/v1/products").await?;
    out.show(&Value::Array(list.clone()), || {
        let mut s = format!(
            "{:<16} {:<28} {:>12} {:>7}",
            "SKU", "NAME", "PRICE", "STOCK"
        );
        for p in &list {
            s += &format!(
                "\n{:<16} {:<28} {:>12} {:>7}",
                p["sku"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or(""),
                money(&p["price"]),
                p["stock"]
            );
        }
        s
    });
    Ok(())
}

/// The catalogue's levels, and for each strict product who holds the rights to its units.
async fn print_stock(client: &Client, out: Output) -> anyhow::Result<()> {
    let mut list = all_pages(client, "/v1/products").await?;
    for p in list.iter_mut().filter(|p| p["stock_policy"] == "strict") {
        *p = client
            .get(&format!("/v1/products/{}", p["id"].as_str().unwrap_or("")))
            .await?;
    }
    out.show(&Value::Array(list.clone()), || {
        let mut s = format!(
            "{:<16} {:<28} {:<7} {:>7}",
            "SKU", "NAME", "POLICY", "STOCK"
        );
        for p in &list {
            let strict = p["stock_policy"] == "strict";
            s += &format!(
                "\n{:<16} {:<28} {:<7} {:>7}",
                p["sku"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or(""),
                if strict { "strict" } else { "track" },
                p["stock"],
            );
            for d in p["rights"]["devices"].as_array().into_iter().flatten() {
                let who = d["name"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .unwrap_or_else(|| {
                        let id = d["device"].as_str().unwrap_or("?");
                        format!("device {}", &id[..id.len().min(8)])
                    });
                s += &format!("\n    {:<49} {:>7}", who, d["units"]);
            }
            if p["rights"]["in_transit"].as_i64().is_some_and(|n| n != 0) {
                s += &format!(
                    "\n    {:<49} {:>7}",
                    "given, not yet taken", p["rights"]["in_transit"]
                );
            }
        }
        s
    });
    Ok(())
}

/// Walks every page of a listing.
async fn all_pages(client: &Client, path: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(a) => format!("{path}?limit=1000&after={a}"),
            None => format!("{path}?limit=1000"),
        };
        let page = client.get(&url).await?;
        out.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => return Ok(out),
        }
    }
}

/// The network part of `tillmesh status`: where this node listens and how each peer stands.
fn network_text(n: &Value) -> String {
    if n.is_null() {
        return "\nnetwork  not running (start the node with `tillmesh run`)".into();
    }
    let mut out = format!(
        "\npeer id  {}\nreach    {}{}{}",
        n["peer_id"].as_str().unwrap_or("?"),
        n["reachability"].as_str().unwrap_or("?"),
        if n["mdns"] == true {
            ", mDNS on"
        } else {
            ", mDNS off"
        },
        if n["relay"] == true { ", relaying" } else { "" },
    );
    for a in n["listen"].as_array().into_iter().flatten() {
        out.push_str(&format!("\nlisten   {}", a.as_str().unwrap_or("?")));
    }
    let peers = n["peers"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("\npeers    {}", peers.len()));
    for p in &peers {
        out.push_str(&format!(
            "\n  {}  found by {}, {} {}, rtt {}, {}",
            p["device_id"]
                .as_str()
                .map(|d| &d[..d.len().min(12)])
                .unwrap_or("?"),
            p["found_by"].as_str().unwrap_or("?"),
            p["transport"].as_str().unwrap_or("?"),
            p["address"].as_str().unwrap_or("?"),
            p["rtt_ms"]
                .as_f64()
                .map(|r| format!("{r:.1} ms"))
                .unwrap_or_else(|| "-".into()),
            if p["synced"] == true {
                "synced"
            } else {
                "syncing"
            },
        ));
        if let Some(detail) = p["hole_punch"]["detail"].as_str() {
            out.push_str(&format!("\n    {detail}"));
        }
    }
    out
}

/// `tillmesh conflicts` as text: one block per conflict.
fn conflicts_text(list: &Value) -> String {
    let items = list["conflicts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if items.is_empty() {
        return "no conflicts".into();
    }
    let mut t = String::new();
    for c in items {
        let line = match c["kind"].as_str().unwrap_or("") {
            "field" => {
                let path: Vec<&str> = c["path"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut s = format!(
                    "FIELD    {} {} ({}) {}:",
                    c["doc_type"].as_str().unwrap_or(""),
                    c["name"].as_str().unwrap_or(""),
                    c["doc_id"].as_str().unwrap_or(""),
                    path.join(".")
                );
                for v in c["values"].as_array().into_iter().flatten() {
                    s += &format!(
                        "\n           {} from {}{}",
                        v["value"],
                        v["device_name"].as_str().unwrap_or("an unknown device"),
                        if v["shown"] == true {
                            " (shown now)"
                        } else {
                            ""
                        }
                    );
                }
                s + &format!(
                    "\n           settle it: tillmesh conflicts --pick {} {} VALUE",
                    c["doc_id"].as_str().unwrap_or(""),
                    path.join(".")
                )
            }
            "oversold" => format!(
                "OVERSOLD {} at {}: {}",
                c["sku"].as_str().unwrap_or(""),
                c["stock"],
                c["resolution"].as_str().unwrap_or("")
            ),
            "qbo_total" => format!(
                "QBO      sale {}: QuickBooks says {}, the till rang up {} (QuickBooks wins)",
                c["receipt_number"].as_str().unwrap_or(""),
                money(&c["qbo_total"]),
                money(&c["till_total"])
            ),
            "void_and_refund" => format!(
                "VOID+REF sale {}: {}",
                c["receipt_number"].as_str().unwrap_or(""),
                c["resolution"].as_str().unwrap_or("")
            ),
            other => format!("{other}: {c}"),
        };
        if !t.is_empty() {
            t.push('\n');
        }
        t += &line;
    }
    t
}

/// How often `status --watch` looks, and over how many looks it measures the rate.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const WATCH_RATE_LOOKS: usize = 5;

/// `tillmesh status --watch`: the catch-up as a progress bar on a terminal, and as one plain
/// line per change elsewhere (a log, a pipe). Runs until stopped.
async fn watch_catch_up(client: &Client, out: Output) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if matches!(client, Client::Local { .. }) {
        bail!(
            "no node is running on this folder; --watch follows a running node's catch-up: start it with `tillmesh run`"
        );
    }
    let bar = (!out.json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} entries  {msg}")
                .expect("a fixed template"),
        );
        b
    });
    let mut looks: std::collections::VecDeque<(std::time::Instant, u64)> =
        std::collections::VecDeque::new();
    let mut last_line = String::new();
    loop {
        let s = client.get("/v1/status").await?;
        let have = s["entries"].as_u64().unwrap_or(0);
        let known = s["network"]["known_entries"]
            .as_u64()
            .unwrap_or(0)
            .max(have);
        let peers = s["network"]["peers"].as_array().map_or(0, Vec::len);
        let now = std::time::Instant::now();
        looks.push_back((now, have));
        if looks.len() > WATCH_RATE_LOOKS {
            looks.pop_front();
        }
        let rate = match (looks.front(), looks.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let left = known - have;
        let eta = if left == 0 {
            "caught up".to_owned()
        } else if rate > 0.0 {
            format!("{:.0} s left", left as f64 / rate)
        } else {
            "waiting for peers".to_owned()
        };
        let msg = format!("{rate:.0}/s, {eta}, {peers} peer(s)");
        match &bar {
            Some(b) => {
                b.set_length(known);
                b.set_position(have);
                b.set_message(msg);
            }
            None if out.json => {
                let line = json!({ "entries": have, "known_entries": known, "rate_per_s": rate, "peers": peers }).to_string();
                if line != last_line {
                    println!("{line}");
                    last_line = line;
                }
            }
            None => {
                let line = format!("{have}/{known} entries, {msg}");
                if line != last_line {
                    println!("{line}");
                    last_line = line;
                }
            }
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}
