"""Drives the QBO emulator with python-quickbooks and Intuit's own OAuth client (intuit-oauth),
used exactly as their documentation shows; only the base URLs point at the emulator.

Reads the emulator's first line (JSON) from QBO_ENDPOINTS. Prints
`python-quickbooks: N calls ok` and exits 0, or says what differed and exits 1.
Run: PYTHONPATH=target/clients/python REQUESTS_CA_BUNDLE=<ca_file> QBO_ENDPOINTS='{...}'
python3 python_client.py
"""

import json
import os
import sys
import traceback
import uuid
import warnings
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlparse

# The emulator serves HTTPS under its own CA, which `requests` trusts through
# REQUESTS_CA_BUNDLE (set by tests/clients.rs), as a user's program would.
warnings.simplefilter("ignore", DeprecationWarning)

import requests  # noqa: E402
from intuitlib.client import AuthClient  # noqa: E402
from intuitlib.enums import Scopes  # noqa: E402
from intuitlib.exceptions import AuthClientError  # noqa: E402
from quickbooks import QuickBooks  # noqa: E402
from quickbooks.batch import batch_create  # noqa: E402
from quickbooks.cdc import change_data_capture  # noqa: E402
from quickbooks.exceptions import AuthorizationException, ObjectNotFoundException, QuickbooksException  # noqa: E402
from quickbooks.objects.account import Account  # noqa: E402
from quickbooks.objects.base import Address, EmailAddress  # noqa: E402
from quickbooks.objects.company_info import CompanyInfo  # noqa: E402
from quickbooks.objects.customer import Customer  # noqa: E402
from quickbooks.objects.detailline import SalesItemLine, SalesItemLineDetail  # noqa: E402
from quickbooks.objects.item import Item  # noqa: E402
from quickbooks.objects.preferences import Preferences  # noqa: E402
from quickbooks.objects.salesreceipt import SalesReceipt  # noqa: E402

CALLS = 0


def fail(msg):
    print("python-quickbooks against the emulator: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def step(name, fn):
    """One library call (or a few that belong together); any exception fails the run."""
    global CALLS
    try:
        out = fn()
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        fail("{0} raised {1}: {2}".format(name, type(e).__name__, e))
    CALLS += 1
    return out


def main():
    global CALLS
    raw = os.environ.get("QBO_ENDPOINTS")
    check(raw, "QBO_ENDPOINTS is not set (the emulator's first line, JSON)")
    ends = json.loads(raw)
    base, realm = ends["base_url"], ends["realm_id"]
    redirect_uri = "http://localhost:8000/callback"

    # ---- OAuth 2.0 with intuit-oauth -------------------------------------------------
    # The environment may be the discovery document's URL; intuitlib's own URLs end in '/'.
    auth = step(
        "AuthClient (discovery document)",
        lambda: AuthClient(
            ends["client_id"],
            ends["client_secret"],
            redirect_uri,
            base + "/.well-known/openid_configuration/",
        ),
    )
    check(auth.token_endpoint == ends["token_url"], "discovery token_endpoint " + auth.token_endpoint)
    check(auth.auth_endpoint == ends["authorize_url"], "discovery authorization_endpoint " + auth.auth_endpoint)
    check(auth.revoke_endpoint == ends["revoke_url"], "discovery revocation_endpoint " + auth.revoke_endpoint)

    # Accounting only: with `openid` Intuit adds a signed id_token, which the emulator does
    # not issue.
    url = auth.get_authorization_url([Scopes.ACCOUNTING])
    consent = step("authorize", lambda: requests.get(url, allow_redirects=False))
    check(consent.status_code in (302, 303, 307), "authorize answered {0}".format(consent.status_code))
    location = urlparse(consent.headers["Location"])
    check(location.geturl().startswith(redirect_uri), "redirected to " + location.geturl())
    qs = parse_qs(location.query)
    check(qs.get("state") == [auth.state_token], "state {0} != {1}".format(qs.get("state"), auth.state_token))
    check(qs.get("realmId") == [realm], "realmId {0}".format(qs.get("realmId")))
    step("get_bearer_token", lambda: auth.get_bearer_token(qs["code"][0], realm_id=qs["realmId"][0]))
    check(auth.access_token and auth.refresh_token, "no tokens after the code exchange")
    check(auth.expires_in == 3600, "expires_in {0}".format(auth.expires_in))
    check(auth.x_refresh_token_expires_in > 0, "x_refresh_token_expires_in missing")
    first_access, first_refresh = auth.access_token, auth.refresh_token
    step("refresh", lambda: auth.refresh())
    check(auth.access_token != first_access, "refresh kept the access token")
    check(auth.refresh_token != first_refresh, "refresh did not rotate the refresh token")
    # A spent code and a rotated-out refresh token are refused: AuthClientError, 400,
    # invalid_grant, with Intuit's intuit_tid header.
    for what, spent in (
        ("a spent code", lambda: auth.get_bearer_token(qs["code"][0])),
        ("a rotated refresh token", lambda: auth.refresh(refresh_token=first_refresh)),
    ):
        try:
            spent()
        except AuthClientError as e:
            check(e.status_code == 400, "{0}: status {1}".format(what, e.status_code))
            check(json.loads(e.content)["error"] == "invalid_grant", "{0}: {1}".format(what, e.content))
            check(e.intuit_tid, "{0}: no intuit_tid header".format(what))
        else:
            fail(what + " was accepted")
        CALLS += 1

    # ---- python-quickbooks -------------------------------------------------------------
    QuickBooks.api_url_v3 = base + "/v3"
    QuickBooks.sandbox_api_url_v3 = base + "/v3"
    qb = QuickBooks(
        auth_client=auth,
        refresh_token=auth.refresh_token,
        company_id=realm,
        minorversion=75,
    )
    check(qb.api_url == base + "/v3", "api_url " + qb.api_url)

    tag = uuid.uuid4().hex[:8]
    name = "Py Customer {0}".format(tag)
    since = (datetime.now(timezone.utc) - timedelta(minutes=1)).astimezone()

    # Create (the library sends its defaults: empty strings, zeros, SyncToken 0).
    c = Customer()
    c.DisplayName = name
    c.GivenName = "Ada"
    c.FamilyName = "Lovelace"
    c.CompanyName = "Analytical Engines"
    c.PrimaryEmailAddr = EmailAddress()
    c.PrimaryEmailAddr.Address = "ada@example.com"
    c.BillAddr = Address()
    c.BillAddr.Line1 = "12 Engine Row"
    c.BillAddr.City = "London"
    c.BillAddr.PostalCode = "N1 9GU"
    created = step("Customer.save (create)", lambda: c.save(qb=qb))
    check(created.Id and int(created.Id) > 0, "no Id on the created customer")
    check(str(created.SyncToken) == "0", "SyncToken {0} on create".format(created.SyncToken))
    check(created.DisplayName == name, "DisplayName " + str(created.DisplayName))
    check(created.PrimaryEmailAddr.Address == "ada@example.com", "PrimaryEmailAddr lost")
    check(created.BillAddr.City == "London", "BillAddr lost")
    check(created.MetaData["CreateTime"], "MetaData.CreateTime missing")
    check(created.FullyQualifiedName == name, "FullyQualifiedName " + str(created.FullyQualifiedName))
    check(created.Active is True, "Active {0}".format(created.Active))

    # Read by id.
    got = step("Customer.get", lambda: Customer.get(created.Id, qb=qb))
    check(got.Id == created.Id and got.DisplayName == name, "read back another customer")
    check(got.GivenName == "Ada" and got.FamilyName == "Lovelace", "names lost on read")

    # Queries, as the library writes them (POST, application/text).
    found = step("Customer.filter", lambda: Customer.filter(DisplayName=name, qb=qb))
    check([x.Id for x in found] == [created.Id], "filter found {0}".format([x.Id for x in found]))
    found = step("Customer.filter (Active=True)", lambda: Customer.filter(Active=True, DisplayName=name, qb=qb))
    check(len(found) == 1, "filter Active=True found {0}".format(len(found)))
    quoted = step("Customer.filter (quote)", lambda: Customer.filter(DisplayName="O'Brien {0}".format(tag), qb=qb))
    check(quoted == [], "a quoted name matched {0}".format(len(quoted)))
    like = step(
        "Customer.where",
        lambda: Customer.where("DisplayName LIKE 'Py Customer%'", order_by="DisplayName DESC", max_results=10, qb=qb),
    )
    check(created.Id in [x.Id for x in like], "where LIKE missed the customer")
    everyone = step("Customer.all", lambda: Customer.all(qb=qb))
    check(created.Id in [x.Id for x in everyone], "all missed the customer")
    chosen = step("Customer.choose", lambda: Customer.choose([created.Id], qb=qb))
    check([x.Id for x in chosen] == [created.Id], "choose found {0}".format([x.Id for x in chosen]))
    n = step("Customer.count", lambda: Customer.count("Active = true", qb=qb))
    check(isinstance(n, int) and n >= 1, "count {0}".format(n))
    none = step("Customer.filter (nothing)", lambda: Customer.filter(DisplayName="no such " + tag, qb=qb))
    check(none == [], "found a customer that does not exist")

    # Sparse update: the read object, sparse set, saved.
    got.sparse = True
    got.CompanyName = "Difference Engines"
    updated = step("Customer.save (sparse update)", lambda: got.save(qb=qb))
    check(updated.Id == created.Id, "update made another customer")
    check(str(updated.SyncToken) == "1", "SyncToken {0} after one update".format(updated.SyncToken))
    check(updated.CompanyName == "Difference Engines", "CompanyName not updated")
    check(updated.GivenName == "Ada", "sparse update lost GivenName")
    # A minimal sparse body: only what changes.
    sparse = Customer()
    sparse.Id = updated.Id
    sparse.SyncToken = updated.SyncToken
    sparse.sparse = True
    for k in list(sparse.__dict__):
        if k not in ("Id", "SyncToken", "sparse", "domain"):
            setattr(sparse, k, None)
    sparse.Notes = "sparse note"
    updated2 = step("Customer.save (minimal sparse)", lambda: sparse.save(qb=qb))
    check(str(updated2.SyncToken) == "2", "SyncToken {0} after two updates".format(updated2.SyncToken))
    check(updated2.Notes == "sparse note" and updated2.CompanyName == "Difference Engines", "minimal sparse lost fields")
    check(updated2.DisplayName == name, "minimal sparse changed DisplayName")

    # Company info and preferences.
    info = step("CompanyInfo.get", lambda: CompanyInfo.get(realm, qb=qb))
    check(info.CompanyName, "CompanyInfo without CompanyName")
    check(info.Country, "CompanyInfo without Country")
    infos = step("CompanyInfo.all", lambda: CompanyInfo.all(qb=qb))
    check(len(infos) == 1 and infos[0].CompanyName == info.CompanyName, "CompanyInfo query")
    prefs = step("Preferences.get", lambda: Preferences.get(qb=qb))
    check(prefs.CurrencyPrefs.HomeCurrency.value == ends["currency"], "HomeCurrency")
    check(prefs.SalesFormsPrefs is not None and prefs.TaxPrefs is not None, "Preferences sections missing")

    # An item whose income account comes from an Account query, and a sales receipt for it.
    incomes = step("Account.filter", lambda: Account.filter(AccountType="Income", qb=qb))
    check(incomes, "no Income account")
    income = [a for a in incomes if a.Name == "Sales of Product Income"] or incomes
    item = Item()
    item.Name = "Py Widget {0}".format(tag)
    item.Type = "NonInventory"
    item.UnitPrice = 12.5
    item.IncomeAccountRef = income[0].to_ref()
    item = step("Item.save (create)", lambda: item.save(qb=qb))
    check(item.Id and item.Type == "NonInventory", "item {0}".format(item.to_json()))
    check(item.IncomeAccountRef.value == income[0].Id, "IncomeAccountRef")
    items = step("Item.all", lambda: Item.all(qb=qb))
    check(item.Id in [x.Id for x in items], "Item.all (SELECT *, Sku) missed the item")

    receipt = SalesReceipt()
    receipt.CustomerRef = updated2.to_ref()
    line = SalesItemLine()
    line.Amount = 25
    line.Description = "two widgets"
    line.SalesItemLineDetail = SalesItemLineDetail()
    line.SalesItemLineDetail.ItemRef = item.to_ref()
    line.SalesItemLineDetail.Qty = 2
    line.SalesItemLineDetail.UnitPrice = 12.5
    receipt.Line = [line]
    receipt = step("SalesReceipt.save (create)", lambda: receipt.save(qb=qb))
    check(receipt.Id and str(receipt.SyncToken) == "0", "sales receipt not created")
    check(float(receipt.TotalAmt) == 25.0, "TotalAmt {0}".format(receipt.TotalAmt))
    check(receipt.TxnDate and len(receipt.TxnDate) == 10, "TxnDate {0!r}".format(receipt.TxnDate))
    check(receipt.CustomerRef.value == created.Id, "CustomerRef")
    sales = [x for x in receipt.Line if x.DetailType == "SalesItemLineDetail"]
    # SalesReceipt has no detail_dict: the library leaves a line's detail a plain dict.
    check(len(sales) == 1 and sales[0].SalesItemLineDetail["ItemRef"]["value"] == item.Id, "sales line")
    check(float(sales[0].SalesItemLineDetail["Qty"]) == 2, "sales line Qty")

    # The same receipt sent twice under one requestid is made once (the library's own
    # integration test, against QBO, does this with invoices).
    rid = str(uuid.uuid4())

    def twice():
        r = SalesReceipt()
        r.CustomerRef = updated2.to_ref()
        r.Line = [line]
        return r.save(qb=qb, request_id=rid), r.save(qb=qb, request_id=rid)

    first, second = step("SalesReceipt.save (requestid, twice)", twice)
    check(first.Id == second.Id and first.Id != receipt.Id, "requestid made {0} and {1}".format(first.Id, second.Id))
    deleted = step("SalesReceipt.delete", lambda: first.delete(qb=qb))
    check(deleted["SalesReceipt"]["status"] == "Deleted", "delete answered {0}".format(deleted))
    gone = step("SalesReceipt.filter (deleted)", lambda: SalesReceipt.filter(Id=first.Id, qb=qb))
    check(gone == [], "a deleted receipt is still found")

    voided = step("SalesReceipt.void", lambda: receipt.void(qb=qb))
    check("SalesReceipt" in voided, "void answered {0}".format(list(voided)))
    check(float(voided["SalesReceipt"]["TotalAmt"]) == 0, "voided TotalAmt")
    check(voided["SalesReceipt"]["SyncToken"] == "1", "voided SyncToken")
    again = step("SalesReceipt.get (voided)", lambda: SalesReceipt.get(receipt.Id, qb=qb))
    check(float(again.TotalAmt) == 0 and str(again.SyncToken) == "1", "void not kept")

    # Batch create.
    batch = []
    for i in range(3):
        b = Customer()
        b.DisplayName = "Py Batch {0} {1}".format(tag, i)
        batch.append(b)
    results = step("batch_create", lambda: batch_create(batch, qb=qb))
    check(len(results.successes) == 3 and not results.faults, "batch: {0} ok, {1} faults".format(
        len(results.successes), [str(e) for f in results.faults for e in f.Error]))
    check(sorted(x.DisplayName for x in results.successes) == sorted(b.DisplayName for b in batch), "batch names")
    check(all(x.Id for x in results.successes), "batch ids")
    # A batch whose one item fails: the library reports it as a fault, not an exception.
    dup = Customer()
    dup.DisplayName = name
    results = step("batch_create (a duplicate)", lambda: batch_create([dup], qb=qb))
    check(len(results.faults) == 1 and not results.successes, "batch duplicate not a fault")
    check(str(results.faults[0].Error[0].code) == "6240", "batch fault code {0}".format(results.faults[0].Error[0].code))

    # Change data capture, as a datetime: the library formats it without an offset (QBO reads
    # that in the company's zone), so look back a day to be clear of any zone.
    day_ago = datetime.now() - timedelta(days=1)
    cdc = step("change_data_capture", lambda: change_data_capture([Customer, Item, SalesReceipt], day_ago, qb=qb))
    cdc_customers = [x.Id for x in getattr(cdc, "Customer", [])]
    check(created.Id in cdc_customers, "CDC Customer missed {0}: {1}".format(created.Id, cdc_customers))
    check(all(x.Id in cdc_customers for x in results.original_list if x.Id), "CDC missed a batch customer")
    check(item.Id in [x.Id for x in getattr(cdc, "Item", [])], "CDC missed the item")
    check(receipt.Id in [x.Id for x in getattr(cdc, "SalesReceipt", [])], "CDC missed the receipt")
    # A minute ago as a string with an offset, as Intuit documents it.
    stamp = since.strftime("%Y-%m-%dT%H:%M:%S") + since.strftime("%z")[:3] + ":" + since.strftime("%z")[3:]
    cdc = step("change_data_capture (string)", lambda: change_data_capture([Customer], stamp, qb=qb))
    check(created.Id in [x.Id for x in getattr(cdc, "Customer", [])], "CDC (string) missed the customer")

    # The error case: a duplicate DisplayName raises the library's exception with 6240.
    dup = Customer()
    dup.DisplayName = name
    try:
        dup.save(qb=qb)
    except QuickbooksException as e:
        check(e.error_code == 6240, "duplicate raised code {0}: {1}".format(e.error_code, e))
        check("Duplicate Name Exists Error" in e.message, "duplicate message " + e.message)
    else:
        fail("a duplicate DisplayName was accepted")
    CALLS += 1

    # A stale SyncToken raises 5010 (QuickbooksException: outside the library's named
    # ranges), an unknown id 610 (ObjectNotFoundException).
    stale = Customer.get(created.Id, qb=qb)
    CALLS += 1
    stale.SyncToken = "0"
    stale.sparse = True
    try:
        stale.save(qb=qb)
    except QuickbooksException as e:
        check(e.error_code == 5010, "stale update raised {0}".format(e.error_code))
    else:
        fail("a stale SyncToken was accepted")
    CALLS += 1

    try:
        Customer.get(999999, qb=qb)
    except ObjectNotFoundException as e:
        check(e.error_code == 610, "missing customer raised {0}".format(e.error_code))
    else:
        fail("a customer that does not exist was read")
    CALLS += 1

    # An access token that expired (the emulator's admin switch, not Intuit's): 401, the
    # library's AuthorizationException; refresh and carry on, as an app does.
    requests.post(base + "/admin/expire-tokens").raise_for_status()
    try:
        Customer.get(created.Id, qb=qb)
    except AuthorizationException as e:
        check(e.error_code == 401, "expired token raised {0}".format(e.error_code))
        check("Token expired" in e.detail, "expired token detail " + e.detail)
    else:
        fail("an expired access token was accepted")
    CALLS += 1
    step("refresh (after expiry)", lambda: auth.refresh())
    qb = QuickBooks(auth_client=auth, refresh_token=auth.refresh_token, company_id=realm, minorversion=75)
    back = step("Customer.get (refreshed)", lambda: Customer.get(created.Id, qb=qb))
    check(back.Id == created.Id, "read after refresh")

    print("python-quickbooks: {0} calls ok".format(CALLS))


if __name__ == "__main__":
    main()
