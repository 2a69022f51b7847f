// Drives the QBO emulator with node-quickbooks (OAuth 2.0), used as its README shows; only the
// base URLs point at the emulator. node-quickbooks has no authorization-code exchange of its
// own, so the script does it as an app's callback would (a POST to the token endpoint).
//
// Reads the emulator's first line (JSON) from QBO_ENDPOINTS. Prints
// `node-quickbooks: N calls ok` and exits 0, or says what differed and exits 1.
// Run: NODE_PATH=target/clients/node/node_modules QBO_ENDPOINTS='{...}' node node_client.js

'use strict'

const QuickBooks = require('node-quickbooks')

let calls = 0

function fail (msg) {
  console.error('node-quickbooks against the emulator: ' + msg)
  process.exit(1)
}

function check (cond, msg) {
  if (!cond) fail(msg)
}

function show (e) {
  if (e && e.response) {
    return 'HTTP ' + e.response.status + ' ' + JSON.stringify(e.response.data)
  }
  if (e && e.Fault) return JSON.stringify(e.Fault)
  return e && e.stack ? e.stack : JSON.stringify(e)
}

// A node-quickbooks method (callback last) as a promise; an error fails the run.
function call (name, qbo, method, ...args) {
  return new Promise((resolve) => {
    qbo[method](...args, (err, data) => {
      if (err) fail(name + ' (' + method + ') failed: ' + show(err))
      calls++
      resolve(data)
    })
  })
}

// The same, for a call that must fail: resolves with the error.
function refused (name, qbo, method, ...args) {
  return new Promise((resolve) => {
    qbo[method](...args, (err, data) => {
      if (!err) fail(name + ' (' + method + ') succeeded: ' + JSON.stringify(data))
      calls++
      resolve(err)
    })
  })
}

// A refusal reaches the callback as axios' error (status 4xx) with QBO's body in
// err.response.data, or (status 200 with a Fault) as the body itself.
function faultOf (err) {
  const body = err && err.Fault ? err : err && err.response ? err.response.data : null
  return (body && body.Fault && body.Fault.Error && body.Fault.Error[0]) || {}
}

function faultCode (err) {
  return faultOf(err).code
}

async function main () {
  check(process.env.QBO_ENDPOINTS, "QBO_ENDPOINTS is not set (the emulator's first line, JSON)")
  const ends = JSON.parse(process.env.QBO_ENDPOINTS)
  const base = ends.base_url
  const realm = ends.realm_id
  const redirectUri = 'http://localhost:8000/callback'

  // node-quickbooks reads these when it builds a request: point them at the emulator before
  // constructing. (setOauthVersion('2.0') would fetch Intuit's discovery document: not called.)
  QuickBooks.V3_ENDPOINT_BASE_URL = base + '/v3/company/'
  QuickBooks.TOKEN_URL = ends.token_url
  QuickBooks.REVOKE_URL = ends.revoke_url

  // ---- OAuth 2.0: the consent redirect and the code exchange, as an app's callback does ----
  const discovery = await fetch(base + '/.well-known/openid_configuration/').then((r) => r.json())
  check(discovery.token_endpoint === ends.token_url, 'discovery token_endpoint ' + discovery.token_endpoint)
  const state = 'st-' + Math.random().toString(36).slice(2)
  const authorize = new URL(ends.authorize_url)
  authorize.search = new URLSearchParams({
    client_id: ends.client_id,
    response_type: 'code',
    scope: 'com.intuit.quickbooks.accounting',
    redirect_uri: redirectUri,
    state
  }).toString()
  const consent = await fetch(authorize, { redirect: 'manual' })
  calls++
  check([302, 303, 307].includes(consent.status), 'authorize answered ' + consent.status)
  const back = new URL(consent.headers.get('location'))
  check(back.origin + back.pathname === redirectUri, 'redirected to ' + back)
  check(back.searchParams.get('state') === state, 'state ' + back.searchParams.get('state'))
  check(back.searchParams.get('realmId') === realm, 'realmId ' + back.searchParams.get('realmId'))
  const exchange = await fetch(ends.token_url, {
    method: 'POST',
    headers: {
      Accept: 'application/json',
      'Content-Type': 'application/x-www-form-urlencoded',
      Authorization: 'Basic ' + Buffer.from(ends.client_id + ':' + ends.client_secret).toString('base64')
    },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code: back.searchParams.get('code'),
      redirect_uri: redirectUri
    }).toString()
  })
  calls++
  const tokens = await exchange.json()
  check(exchange.status === 200, 'code exchange answered ' + exchange.status + ' ' + JSON.stringify(tokens))
  check(tokens.token_type === 'bearer' && tokens.expires_in === 3600, 'token response ' + JSON.stringify(tokens))

  const qbo = new QuickBooks(
    ends.client_id,
    ends.client_secret,
    tokens.access_token,
    false, // no token secret with OAuth 2.0
    realm,
    false, // production URLs (the emulator's)
    false, // debug
    75, // minor version
    '2.0',
    tokens.refresh_token
  )
  check(qbo.endpoint === base + '/v3/company/', 'endpoint ' + qbo.endpoint)

  const refreshed = await call('refresh', qbo, 'refreshAccessToken')
  check(refreshed.access_token && refreshed.access_token !== tokens.access_token, 'refresh kept the access token')
  check(qbo.token === refreshed.access_token, 'the client did not take the new access token')
  check(qbo.refreshToken === refreshed.refresh_token && qbo.refreshToken !== tokens.refresh_token,
    'the refresh token did not rotate')

  // The spent refresh token is refused (rotation): invalid_grant, 400, with intuit_tid.
  const stale = new QuickBooks(ends.client_id, ends.client_secret, tokens.access_token, false, realm,
    false, false, 75, '2.0', tokens.refresh_token)
  const rotated = await refused('refresh with a spent token', stale, 'refreshAccessToken')
  check(rotated.response && rotated.response.status === 400 && rotated.response.data.error === 'invalid_grant',
    'a spent refresh token answered ' + show(rotated))
  check(rotated.response.headers.intuit_tid, 'no intuit_tid on the refused refresh')

  const tag = Math.random().toString(36).slice(2, 10)
  const name = 'Node Customer ' + tag
  const since = new Date(Date.now() - 60 * 1000)

  // Create, read.
  const created = await call('create customer', qbo, 'createCustomer', {
    DisplayName: name,
    GivenName: 'Grace',
    FamilyName: 'Hopper',
    PrimaryEmailAddr: { Address: 'grace@example.com' },
    BillAddr: { Line1: '1 Compiler Way', City: 'Arlington', CountrySubDivisionCode: 'VA', PostalCode: '22201' }
  })
  check(created.Id && created.SyncToken === '0', 'created ' + JSON.stringify(created))
  check(created.DisplayName === name && created.FullyQualifiedName === name, 'names ' + JSON.stringify(created))
  check(created.PrimaryEmailAddr.Address === 'grace@example.com', 'PrimaryEmailAddr')
  check(created.BillAddr.Id && created.BillAddr.City === 'Arlington', 'BillAddr ' + JSON.stringify(created.BillAddr))
  const got = await call('read customer', qbo, 'getCustomer', created.Id)
  check(got.Id === created.Id && got.DisplayName === name, 'read ' + JSON.stringify(got))

  // Queries in the library's criteria forms (GET /query with its own escaping).
  let found = await call('find customers (map)', qbo, 'findCustomers', { DisplayName: name })
  check(found.QueryResponse.Customer && found.QueryResponse.Customer.length === 1 &&
    found.QueryResponse.Customer[0].Id === created.Id, 'findCustomers(map) ' + JSON.stringify(found.QueryResponse))
  check(found.QueryResponse.startPosition === 1 && found.QueryResponse.maxResults === 1, 'page ' + JSON.stringify(found.QueryResponse))
  found = await call('find customers (array)', qbo, 'findCustomers', [
    { field: 'DisplayName', value: 'Node Customer%', operator: 'LIKE' },
    { field: 'Active', value: true },
    { field: 'desc', value: 'MetaData.LastUpdatedTime' },
    { field: 'limit', value: 5 }
  ])
  check((found.QueryResponse.Customer || []).some((c) => c.Id === created.Id), 'findCustomers(LIKE) ' + JSON.stringify(found.QueryResponse))
  found = await call('find customers (IN)', qbo, 'findCustomers', { Id: [created.Id, '99999'] })
  check((found.QueryResponse.Customer || []).length === 1, 'findCustomers(IN) ' + JSON.stringify(found.QueryResponse))
  found = await call('find customers (string)', qbo, 'findCustomers', "where DisplayName = '" + name.replace(/'/g, "\\'") + "'")
  check((found.QueryResponse.Customer || []).length === 1, 'findCustomers(string) ' + JSON.stringify(found.QueryResponse))
  found = await call('find customers (quote)', qbo, 'findCustomers', { DisplayName: "O'Hara & Sons #1 " + tag })
  check(!found.QueryResponse.Customer, 'a quoted name matched ' + JSON.stringify(found.QueryResponse))
  found = await call('count customers', qbo, 'findCustomers', { count: true })
  check(found.QueryResponse.totalCount >= 1, 'count ' + JSON.stringify(found.QueryResponse))
  found = await call('find all customers', qbo, 'findCustomers', { fetchAll: true })
  check((found.QueryResponse.Customer || []).some((c) => c.Id === created.Id), 'fetchAll ' + JSON.stringify(found.QueryResponse))
  found = await call('find customers (none)', qbo, 'findCustomers')
  check(Array.isArray(found.QueryResponse.Customer), 'findCustomers() ' + JSON.stringify(found.QueryResponse))

  // Sparse update (the library's default: sparse true, ?operation=update).
  const updated = await call('update customer', qbo, 'updateCustomer', {
    Id: created.Id, SyncToken: created.SyncToken, CompanyName: 'Cobol Inc'
  })
  check(updated.SyncToken === '1' && updated.CompanyName === 'Cobol Inc', 'updated ' + JSON.stringify(updated))
  check(updated.GivenName === 'Grace' && updated.DisplayName === name, 'sparse update lost fields')

  // Company info and preferences.
  const info = await call('company info', qbo, 'getCompanyInfo', realm)
  check(info.CompanyName && info.Country, 'CompanyInfo ' + JSON.stringify(info))
  const prefs = await call('preferences', qbo, 'getPreferences')
  check(prefs.CurrencyPrefs && prefs.CurrencyPrefs.HomeCurrency.value === ends.currency, 'Preferences ' + JSON.stringify(prefs))

  // An item on the income account found by query, and a sales receipt for it.
  const accounts = await call('find accounts', qbo, 'findAccounts', { AccountType: 'Income' })
  const income = (accounts.QueryResponse.Account || []).find((a) => a.Name === 'Sales of Product Income') ||
    (accounts.QueryResponse.Account || [])[0]
  check(income, 'no Income account: ' + JSON.stringify(accounts.QueryResponse))
  const item = await call('create item', qbo, 'createItem', {
    Name: 'Node Widget ' + tag,
    Type: 'NonInventory',
    UnitPrice: 7.25,
    IncomeAccountRef: { value: income.Id, name: income.Name }
  })
  check(item.Id && item.Type === 'NonInventory' && item.IncomeAccountRef.value === income.Id, 'item ' + JSON.stringify(item))
  const items = await call('find items', qbo, 'findItems', { Name: item.Name })
  check((items.QueryResponse.Item || []).length === 1, 'findItems ' + JSON.stringify(items.QueryResponse))

  const receipt = await call('create sales receipt', qbo, 'createSalesReceipt', {
    CustomerRef: { value: created.Id },
    Line: [{
      Amount: 14.5,
      DetailType: 'SalesItemLineDetail',
      SalesItemLineDetail: { ItemRef: { value: item.Id }, Qty: 2, UnitPrice: 7.25 }
    }]
  })
  check(receipt.Id && receipt.SyncToken === '0' && receipt.TotalAmt === 14.5, 'receipt ' + JSON.stringify(receipt))
  check(receipt.CustomerRef.value === created.Id && receipt.DocNumber, 'receipt refs ' + JSON.stringify(receipt))
  check(receipt.Line.some((l) => l.DetailType === 'SalesItemLineDetail' && l.SalesItemLineDetail.ItemRef.value === item.Id),
    'receipt lines ' + JSON.stringify(receipt.Line))

  // One requestid, sent twice: made once. Then delete it, named by its id (the library reads
  // it first and sends it back with ?operation=delete).
  const requestId = 'rid-' + tag
  const line = { Amount: 7.25, DetailType: 'SalesItemLineDetail', SalesItemLineDetail: { ItemRef: { value: item.Id } } }
  const once = await call('sales receipt (requestid)', qbo, 'createSalesReceipt',
    { CustomerRef: { value: created.Id }, Line: [line], requestId })
  const again = await call('sales receipt (same requestid)', qbo, 'createSalesReceipt',
    { CustomerRef: { value: created.Id }, Line: [line], requestId })
  check(once.Id === again.Id && once.Id !== receipt.Id, 'requestid made ' + once.Id + ' and ' + again.Id)
  const deleted = await call('delete sales receipt', qbo, 'deleteSalesReceipt', once.Id)
  check(deleted.SalesReceipt && deleted.SalesReceipt.status === 'Deleted', 'delete ' + JSON.stringify(deleted))
  const gone = await refused('read deleted receipt', qbo, 'getSalesReceipt', once.Id)
  check(faultCode(gone) === '610', 'a deleted receipt answered ' + show(gone))

  // Void: node-quickbooks has no voidSalesReceipt; its way (mcohen01/node-quickbooks#43) is an
  // update with `void: true`, which it sends as ?operation=update&include=void.
  const voided = await call('void sales receipt', qbo, 'updateSalesReceipt', {
    Id: receipt.Id, SyncToken: receipt.SyncToken, void: true
  })
  check(voided.TotalAmt === 0 && voided.SyncToken === '1', 'voided ' + JSON.stringify(voided))
  const reread = await call('read sales receipt', qbo, 'getSalesReceipt', receipt.Id)
  check(reread.TotalAmt === 0 && /Voided/.test(reread.PrivateNote || ''), 'void not kept ' + JSON.stringify(reread))

  // Batch: creates and a query in one request.
  const batch = await call('batch', qbo, 'batch', [
    { bId: 'b1', operation: 'create', Customer: { DisplayName: 'Node Batch A ' + tag } },
    { bId: 'b2', operation: 'create', Customer: { DisplayName: 'Node Batch B ' + tag } },
    { bId: 'b3', operation: 'create', Customer: { DisplayName: name } },
    { bId: 'b4', Query: "select * from Customer where DisplayName = '" + name + "'" }
  ])
  const byId = Object.fromEntries((batch.BatchItemResponse || []).map((r) => [r.bId, r]))
  check(byId.b1 && byId.b1.Customer && byId.b1.Customer.Id, 'batch b1 ' + JSON.stringify(batch))
  check(byId.b2 && byId.b2.Customer && byId.b2.Customer.Id, 'batch b2 ' + JSON.stringify(batch))
  check(byId.b3 && byId.b3.Fault && byId.b3.Fault.Error[0].code === '6240', 'batch b3 ' + JSON.stringify(byId.b3))
  check(byId.b4 && byId.b4.QueryResponse && byId.b4.QueryResponse.Customer[0].Id === created.Id, 'batch b4 ' + JSON.stringify(byId.b4))

  // Change data capture since a minute ago (a Date: the library formats it with its offset).
  const cdc = await call('change data capture', qbo, 'changeDataCapture', ['Customer', 'Item', 'SalesReceipt'], since)
  const responses = cdc.CDCResponse[0].QueryResponse
  const ids = (entity) => responses.flatMap((r) => (r[entity] || []).map((x) => x.Id))
  check(ids('Customer').includes(created.Id) && ids('Customer').includes(byId.b1.Customer.Id), 'CDC customers ' + JSON.stringify(responses))
  check(ids('Item').includes(item.Id) && ids('SalesReceipt').includes(receipt.Id), 'CDC item/receipt ' + JSON.stringify(responses))

  // Errors: a duplicate name (6240), a stale SyncToken (5010), an unknown id (610).
  let err = await refused('duplicate customer', qbo, 'createCustomer', { DisplayName: name })
  check(faultCode(err) === '6240', 'duplicate answered ' + show(err))
  check(faultOf(err).Message === 'Duplicate Name Exists Error', 'duplicate message ' + show(err))
  err = await refused('stale update', qbo, 'updateCustomer', { Id: created.Id, SyncToken: '0', Notes: 'late' })
  check(faultCode(err) === '5010', 'stale update answered ' + show(err))
  err = await refused('missing customer', qbo, 'getCustomer', '999999')
  check(faultCode(err) === '610', 'missing customer answered ' + show(err))

  // An access token that expired (the emulator's admin switch, not Intuit's): 401 with QBO's
  // AUTHENTICATION fault; refresh and carry on, as an app does.
  const expire = await fetch(base + '/admin/expire-tokens', { method: 'POST' })
  check(expire.ok, 'admin/expire-tokens answered ' + expire.status)
  err = await refused('read with an expired token', qbo, 'getCustomer', created.Id)
  check(err.response && err.response.status === 401, 'expired token answered ' + show(err))
  check(err.response.data.fault.error[0].code === '3200', 'expired token fault ' + show(err))
  await call('refresh (after expiry)', qbo, 'refreshAccessToken')
  const afterRefresh = await call('read after refresh', qbo, 'getCustomer', created.Id)
  check(afterRefresh.Id === created.Id, 'read after refresh ' + JSON.stringify(afterRefresh))

  console.log('node-quickbooks: ' + calls + ' calls ok')
}

main().catch((e) => fail('unexpected: ' + show(e)))
