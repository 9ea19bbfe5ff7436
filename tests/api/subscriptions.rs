//! Subscriptions over `graphql-transport-ws` at `/graphql/ws`, driven by a
//! real WebSocket client: scope and tag visibility while several writers
//! tag at once, resuming with `afterSeq`, the close codes for refused and
//! revoked tokens, the limits, and changes made on another instance.

use std::time::Duration;

use entity::tag_event;
use futures_util::{SinkExt, StreamExt};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use tagbase::config::Limits;
use tagbase::service::jobs::Worker;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{TestApp, row_id};
use crate::{on_both_databases, on_both_databases_with};

const TAG: &str = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }";
const UNTAG: &str =
    "mutation($c: [ID!]!, $t: [ID!]!) { untagCustomers(input: { customerIds: $c, tagIds: $t }) { removed } }";
const BULK_TAG: &str = "mutation($input: BulkTagInput!) { bulkTag(input: $input) { id status } }";
const TAG_CHANGES: &str = "subscription($u: ID, $t: [ID!], $after: Int) {
    tagChanges(orgUnitId: $u, tagIds: $t, afterSeq: $after) { seq op customerId tagId orgUnitId source occurredAt } }";

/// How long one message may take before the test fails instead of
/// hanging (a wait for something that never comes, not a timing).
const PATIENCE: Duration = Duration::from_secs(60);

/// A server of `app`'s router on a port of its own.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("ws://{address}/graphql/ws")
}

/// What the server sent.
#[derive(Debug)]
enum Received {
    Json(Value),
    Closed(u16, String),
}

struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    async fn connect(url: &str) -> Self {
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
        let (socket, response) = tokio_tungstenite::connect_async(request).await.expect("websocket handshake");
        assert_eq!(response.headers()["sec-websocket-protocol"], "graphql-transport-ws");
        Self { socket }
    }

    async fn send(&mut self, message: Value) {
        self.socket.send(Message::Text(message.to_string().into())).await.unwrap();
    }

    async fn receive(&mut self) -> Received {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a message from the server")
                .map(|m| m.unwrap_or(Message::Close(None)));
            match message {
                Some(Message::Text(text)) => return Received::Json(serde_json::from_str(&text).unwrap()),
                Some(Message::Close(Some(frame))) => {
                    return Received::Closed(frame.code.into(), frame.reason.to_string());
                }
                Some(Message::Close(None)) | None => return Received::Closed(1005, String::new()),
                Some(_) => {}
            }
        }
    }

    /// `connection_init` with `payload`: the acknowledgement, or the close.
    async fn init(&mut self, payload: Value) -> Received {
        self.send(json!({ "type": "connection_init", "payload": payload })).await;
        self.receive().await
    }

    /// A connection signed in with `token`.
    async fn signed_in(url: &str, token: &str) -> Self {
        let mut client = Self::connect(url).await;
        match client.init(json!({ "Authorization": format!("Bearer {token}") })).await {
            Received::Json(ack) => assert_eq!(ack["type"], "connection_ack"),
            other => panic!("not acknowledged: {other:?}"),
        }
        client
    }

    async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.send(json!({ "type": "subscribe", "id": id, "payload": { "query": query, "variables": variables } }))
            .await;
    }

    /// The next `tagChanges` item of subscription `id` (panics on anything
    /// else).
    async fn tag_change(&mut self, id: &str) -> Value {
        match self.receive().await {
            Received::Json(m) if m["type"] == "next" && m["id"] == id => {
                assert!(m["payload"].get("errors").is_none(), "{m}");
                m["payload"]["data"]["tagChanges"].clone()
            }
            other => panic!("expected a tag change of {id}, got {other:?}"),
        }
    }

    async fn tag_changes(&mut self, id: &str, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.tag_change(id).await);
        }
        out
    }
}

fn seqs(changes: &[Value]) -> Vec<i64> {
    changes.iter().map(|c| c["seq"].as_i64().unwrap()).collect()
}

/// Tag events after `seq` on customers of `store`, as the log has them.
async fn events_after(app: &TestApp, seq: i64, customers: &[String]) -> Vec<tag_event::Model> {
    tag_event::Entity::find()
        .filter(tag_event::Column::Seq.gt(seq))
        .filter(tag_event::Column::CustomerId.is_in(customers.iter().map(|c| row_id(c))))
        .order_by_asc(tag_event::Column::Seq)
        .all(&app.db)
        .await
        .unwrap()
}

async fn newest_seq(app: &TestApp) -> i64 {
    tag_event::Entity::find().order_by_desc(tag_event::Column::Seq).one(&app.db).await.unwrap().map_or(0, |e| e.seq)
}

/// Waits until the hub of `app` has released everything up to `seq`, and
/// so registers new subscribers above it.
async fn hub_past(app: &tagbase::startup::Application, seq: i64) {
    app.state.realtime.ready().await.unwrap();
    wait_until("the hub", || app.state.realtime.stable_seq() >= seq).await;
}

/// Waits until `done` holds (failing after [`PATIENCE`]).
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "waited in vain for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `n` tag change subscribers are registered on `app`.
async fn tag_subscribers(app: &tagbase::startup::Application, n: usize) {
    wait_until("the subscribers", || app.state.realtime.tag_subscribers() >= n).await;
}

fn worker(app: &TestApp) -> Worker {
    Worker {
        db: app.db.clone(),
        authz: app.app.state.authz.clone(),
        index: app.app.state.index.clone(),
        limits: app.app.state.settings.limits.clone(),
        instance: "subscriptions-test".to_owned(),
    }
}

async fn store_subscribers_see_only_their_own_customers_while_a_salesperson_and_an_hq_job_tag(app: TestApp) {
    let url = serve(app.app.router()).await;
    let inquiry = app.tag_id("活动", "询价").await;
    let (sz01, bj01) = (app.customers_of("sz01").await, app.customers_of("bj01").await);
    let start = newest_seq(&app).await;
    let mut south = Client::signed_in(&url, &app.token("sz01.sales")).await;
    let mut north = Client::signed_in(&url, &app.token("bj01.sales")).await;
    south.subscribe("s", TAG_CHANGES, json!({ "u": app.unit_id("sz01"), "after": start })).await;
    north.subscribe("n", TAG_CHANGES, json!({ "u": app.unit_id("bj01"), "after": start })).await;
    // A store's subscriber may not ask for another store.
    let mut nosy = Client::signed_in(&url, &app.token("bj01.sales")).await;
    nosy.subscribe("x", TAG_CHANGES, json!({ "u": app.unit_id("sz01") })).await;
    match nosy.receive().await {
        Received::Json(m) => {
            assert_eq!(m["type"], "error", "{m}");
            assert_eq!(m["payload"][0]["extensions"]["code"], "NOT_FOUND");
        }
        other => panic!("{other:?}"),
    }

    // HQ bulk-tags every customer of both stores with 询价 while the
    // salespeople tag their own with a stage (another group: the job holds
    // a modification lock on 活动 while it runs).
    let prospect = app.tag_id("客户阶段", "潜在客户").await;
    let mut everyone = sz01.clone();
    everyone.extend(bj01.iter().cloned());
    let job = app
        .gql("admin", BULK_TAG, json!({ "input": { "customers": { "customerIds": everyone }, "add": [inquiry] } }))
        .await;
    assert_eq!(job.ok()["bulkTag"]["status"], "QUEUED", "{:?}", job.ok());
    let w = worker(&app);
    let run = tokio::spawn(async move { w.run_next().await });
    let (a, b) = tokio::join!(
        app.gql("sz01.sales", TAG, json!({ "c": sz01[..2], "t": [prospect] })),
        app.gql("bj01.sales", TAG, json!({ "c": bj01[..2], "t": [prospect] })),
    );
    a.ok();
    b.ok();
    run.await.unwrap().unwrap();
    let (a, b) = tokio::join!(
        app.gql("sz01.sales", UNTAG, json!({ "c": [sz01[1]], "t": [inquiry] })),
        app.gql("bj01.sales", UNTAG, json!({ "c": [bj01[1]], "t": [inquiry] })),
    );
    a.ok();
    b.ok();

    for (client, id, customers, unit) in [(&mut south, "s", &sz01, "sz01"), (&mut north, "n", &bj01, "bj01")] {
        let expected = events_after(&app, start, customers).await;
        assert!(!expected.is_empty());
        let got = client.tag_changes(id, expected.len()).await;
        assert_eq!(
            seqs(&got),
            expected.iter().map(|e| e.seq).collect::<Vec<_>>(),
            "{unit}: every change, in log order"
        );
        for change in &got {
            assert_eq!(change["orgUnitId"], app.unit_id(unit), "only the store's own customers");
            assert!(customers.contains(&change["customerId"].as_str().unwrap().to_owned()));
        }
    }
    // Nothing else comes: the next message is the answer to a ping.
    for client in [&mut south, &mut north] {
        client.send(json!({ "type": "ping" })).await;
        match client.receive().await {
            Received::Json(m) => assert_eq!(m["type"], "pong", "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

async fn a_subscriber_that_resumes_with_after_seq_loses_nothing_and_gets_nothing_twice(app: TestApp) {
    let url = serve(app.app.router()).await;
    let inquiry = app.tag_id("活动", "询价").await;
    let sz01 = app.customers_of("sz01").await;
    let start = newest_seq(&app).await;
    let mut client = Client::signed_in(&url, &app.token("sz01.sales")).await;
    client.subscribe("1", TAG_CHANGES, json!({ "t": [inquiry], "after": start })).await;
    app.gql("sz01.sales", UNTAG, json!({ "c": sz01[..3], "t": [inquiry] })).await.ok();
    app.gql("sz01.sales", TAG, json!({ "c": sz01[..3], "t": [inquiry] })).await.ok();
    let first = events_after(&app, start, &sz01).await;
    assert!(first.len() >= 3);
    // Part of them, then the connection drops.
    let seen = client.tag_changes("1", 2).await;
    drop(client);
    app.gql("sz01.sales", UNTAG, json!({ "c": sz01[2..5], "t": [inquiry] })).await.ok();
    let last = seen[1]["seq"].as_i64().unwrap();
    let mut again = Client::signed_in(&url, &app.token("sz01.sales")).await;
    again.subscribe("2", TAG_CHANGES, json!({ "t": [inquiry], "after": last })).await;
    app.gql("sz01.sales", TAG, json!({ "c": sz01[4..6], "t": [inquiry] })).await.ok();
    let rest = events_after(&app, last, &sz01).await;
    let resumed = again.tag_changes("2", rest.len()).await;
    let mut all = seqs(&seen);
    all.extend(seqs(&resumed));
    assert_eq!(all, events_after(&app, start, &sz01).await.iter().map(|e| e.seq).collect::<Vec<_>>());
    assert!(all.windows(2).all(|w| w[0] < w[1]), "in order, none twice: {all:?}");
}

async fn a_bad_token_or_a_subscribe_before_init_closes_with_the_protocol_code(app: TestApp) {
    let url = serve(app.app.router()).await;
    for payload in [json!({ "Authorization": "Bearer not-a-token" }), json!({}), json!({ "token": "x.y.z" })] {
        let mut client = Client::connect(&url).await;
        match client.init(payload).await {
            Received::Closed(code, reason) => {
                assert_eq!(code, 4403, "{reason}");
                assert!(reason.starts_with("Forbidden"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    // The token also goes by `token`, without its scheme.
    let mut client = Client::connect(&url).await;
    match client.init(json!({ "token": app.token("sz01.sales") })).await {
        Received::Json(m) => assert_eq!(m["type"], "connection_ack"),
        other => panic!("{other:?}"),
    }
    let mut early = Client::connect(&url).await;
    early.subscribe("1", TAG_CHANGES, json!({})).await;
    match early.receive().await {
        Received::Closed(code, _) => assert_eq!(code, 4401),
        other => panic!("{other:?}"),
    }
}

async fn a_revoked_session_closes_an_open_stream_with_4403(app: TestApp) {
    let url = serve(app.app.router()).await;
    let auth = &app.app.state.auth;
    let member = app.staff("sz01.sales");
    let tokens =
        tagbase::auth::session::open(&app.db, &auth.keys, auth.lifetimes, member, "wecom").await.expect("session");
    let mut client = Client::signed_in(&url, &tokens.access_token).await;
    client.subscribe("1", TAG_CHANGES, json!({})).await;
    tag_subscribers(&app.app, 1).await;
    let customer = app.customers_of("sz01").await[0].clone();
    let inquiry = app.tag_id("活动", "询价").await;
    app.gql("sz01.sales", UNTAG, json!({ "c": [customer], "t": [inquiry] })).await.ok();
    app.gql("sz01.sales", TAG, json!({ "c": [customer], "t": [inquiry] })).await.ok();
    client.tag_change("1").await;
    tagbase::auth::session::revoke(&app.db, &tokens.session_id, tagbase::auth::RevokeReason::SignOut).await.unwrap();
    loop {
        match client.receive().await {
            Received::Closed(code, reason) => {
                assert_eq!(code, 4403, "{reason}");
                break;
            }
            Received::Json(m) => assert_eq!(m["type"], "next", "{m}"),
        }
    }
}

async fn a_role_taken_away_applies_to_a_stream_already_open(app: TestApp) {
    let url = serve(app.app.router()).await;
    let inquiry = app.tag_id("活动", "询价").await;
    let (sz01, bj01) = (app.customers_of("sz01").await, app.customers_of("bj01").await);
    let binding = json!({ "i": { "staffId": app.staff("bj01.sales").id.to_string(), "role": "sales", "orgUnitId": app.unit_id("sz01") } });
    let assign = "mutation($i: RoleBindingInput!) { assignRole(input: $i) { changed } }";
    let revoke = "mutation($i: RoleBindingInput!) { revokeRole(input: $i) { changed } }";
    assert_eq!(app.gql("admin", assign, binding.clone()).await.ok()["assignRole"]["changed"], true);
    let start = newest_seq(&app).await;
    let mut client = Client::signed_in(&url, &app.token("bj01.sales")).await;
    client.subscribe("1", TAG_CHANGES, json!({ "t": [inquiry], "after": start })).await;
    // While it holds the role, it sees sz01's changes.
    app.gql("sz01.sales", UNTAG, json!({ "c": [sz01[0]], "t": [inquiry] })).await.ok();
    app.gql("sz01.sales", TAG, json!({ "c": [sz01[0]], "t": [inquiry] })).await.ok();
    let expected = events_after(&app, start, &sz01).await;
    let got = client.tag_changes("1", expected.len()).await;
    assert!(got.iter().all(|c| c["orgUnitId"] == app.unit_id("sz01")));
    // Taken away: sz01's next change is not sent; bj01's is.
    assert_eq!(app.gql("admin", revoke, binding).await.ok()["revokeRole"]["changed"], true);
    let before = newest_seq(&app).await;
    app.gql("sz01.sales", UNTAG, json!({ "c": [sz01[0]], "t": [inquiry] })).await.ok();
    app.gql("bj01.sales", UNTAG, json!({ "c": bj01, "t": [inquiry] })).await.ok();
    app.gql("bj01.sales", TAG, json!({ "c": [bj01[0]], "t": [inquiry] })).await.ok();
    let own = events_after(&app, before, &bj01).await;
    assert!(!own.is_empty());
    let next = client.tag_changes("1", own.len()).await;
    assert_eq!(seqs(&next), own.iter().map(|e| e.seq).collect::<Vec<_>>(), "only its own store's changes");
}

async fn a_token_that_expires_while_connected_closes_the_connection_with_4403(app: TestApp) {
    let strict = app.instance_with(|s| s.token_leeway = Duration::ZERO).await;
    let url = serve(strict.router()).await;
    let token = strict.state.keys.mint(app.staff("sz01.sales"), Duration::from_secs(2)).unwrap();
    let mut client = Client::signed_in(&url, &token).await;
    client.subscribe("1", TAG_CHANGES, json!({})).await;
    match client.receive().await {
        Received::Closed(code, reason) => {
            assert_eq!(code, 4403, "{reason}");
            assert!(reason.starts_with("Forbidden"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // And an expired token is refused at once.
    let mut late = Client::connect(&url).await;
    match late.init(json!({ "Authorization": format!("Bearer {token}") })).await {
        Received::Closed(code, _) => assert_eq!(code, 4403),
        other => panic!("{other:?}"),
    }
}

async fn connections_and_subscriptions_are_limited(app: TestApp) {
    let url = serve(app.app.router()).await;
    let token = app.token("sz01.sales");
    let mut first = Client::signed_in(&url, &token).await;
    let mut second = Client::connect(&url).await;
    match second.init(json!({ "authorization": token })).await {
        Received::Closed(code, reason) => {
            assert_eq!(code, 4429);
            assert!(reason.contains("too many"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Another member has its own allowance.
    Client::signed_in(&url, &app.token("sz01.manager")).await;
    first.subscribe("a", TAG_CHANGES, json!({})).await;
    first.subscribe("b", TAG_CHANGES, json!({})).await;
    match first.receive().await {
        Received::Json(m) => {
            assert_eq!((m["type"].as_str(), m["id"].as_str()), (Some("error"), Some("b")), "{m}");
            assert_eq!(m["payload"][0]["extensions"]["code"], "LIMIT_EXCEEDED");
        }
        other => panic!("{other:?}"),
    }
    // The same id twice closes the connection (4409).
    first.subscribe("a", TAG_CHANGES, json!({})).await;
    match first.receive().await {
        Received::Closed(code, _) => assert_eq!(code, 4409),
        other => panic!("{other:?}"),
    }
    // Its slot is free again once it has closed.
    drop(first);
    let mut retry = 0;
    loop {
        let mut again = Client::connect(&url).await;
        match again.init(json!({ "authorization": token })).await {
            Received::Json(m) if m["type"] == "connection_ack" => break,
            Received::Closed(4429, _) if retry < 100 => {
                retry += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
}

async fn a_slow_subscriber_is_cut_off_with_the_position_to_resume_from(app: TestApp) {
    use futures_util::StreamExt as _;
    let inquiry = app.tag_id("活动", "询价").await;
    let sz01 = app.customers_of("sz01").await;
    let start = newest_seq(&app).await;
    hub_past(&app.app, start).await;
    let auth = format!("Bearer {}", app.token("sz01.sales"));
    let request = |after: i64| {
        async_graphql::Request::new(TAG_CHANGES)
            .variables(async_graphql::Variables::from_json(json!({ "after": after })))
    };
    let mut stream = tagbase::http::execute_stream(&app.app.state, &app.app.schema, Some(&auth), request(start))
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    // Registered (the resolver runs on the first poll), then not read
    // while the changes come: its buffer holds two.
    while app.app.state.realtime.tag_subscribers() < 1 {
        let _ = tokio::time::timeout(Duration::from_millis(20), stream.next()).await;
    }
    app.gql("sz01.sales", UNTAG, json!({ "c": sz01, "t": [inquiry] })).await.ok();
    app.gql("sz01.sales", TAG, json!({ "c": sz01, "t": [inquiry] })).await.ok();
    let expected: Vec<i64> = events_after(&app, start, &sz01).await.iter().map(|e| e.seq).collect();
    assert!(expected.len() > 2);
    // Everything released before the subscriber reads a thing.
    hub_past(&app.app, *expected.last().unwrap()).await;
    let mut got = Vec::new();
    let resume = loop {
        let item = serde_json::to_value(stream.next().await.expect("an item")).unwrap();
        if let Some(errors) = item.get("errors") {
            assert_eq!(errors[0]["extensions"]["code"], "SLOW_CONSUMER", "{item}");
            break errors[0]["extensions"]["resumeAfterSeq"].as_i64().unwrap();
        }
        got.push(item["data"]["tagChanges"]["seq"].as_i64().unwrap());
    };
    assert!(stream.next().await.is_none(), "the stream ends");
    assert_eq!(got.len(), 2, "what its buffer held");
    assert_eq!(resume, got[1]);
    let mut resumed = tagbase::http::execute_stream(&app.app.state, &app.app.schema, Some(&auth), request(resume))
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    while got.len() < expected.len() {
        let item = serde_json::to_value(resumed.next().await.expect("an item")).unwrap();
        got.push(item["data"]["tagChanges"]["seq"].as_i64().unwrap_or_else(|| panic!("{item}")));
    }
    assert_eq!(got, expected);
}

async fn a_resume_from_beyond_the_replay_window_must_resynchronise(app: TestApp) {
    let url = serve(app.app.router()).await;
    let head = newest_seq(&app).await;
    assert!(head > 3, "the seed wrote events");
    let mut client = Client::signed_in(&url, &app.token("sz01.sales")).await;
    for (id, after) in [("old", 0), ("future", head + 1_000)] {
        client.subscribe(id, TAG_CHANGES, json!({ "after": after })).await;
        match client.receive().await {
            Received::Json(m) => {
                assert_eq!((m["type"].as_str(), m["id"].as_str()), (Some("error"), Some(id)), "{m}");
                assert_eq!(m["payload"][0]["extensions"]["code"], "RESYNC_REQUIRED", "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
}

async fn a_change_on_a_second_instance_reaches_a_subscriber_on_the_first(app: TestApp) {
    let url = serve(app.app.router()).await;
    let other = app.second_instance().await;
    let inquiry = app.tag_id("活动", "询价").await;
    let customer = app.customers_of("sz01").await[0].clone();
    let start = newest_seq(&app).await;
    let mut client = Client::signed_in(&url, &app.token("sz01.manager")).await;
    // Live, not replayed: registered before the change is made.
    client.subscribe("1", TAG_CHANGES, json!({ "u": app.unit_id("sz01") })).await;
    tag_subscribers(&app.app, 1).await;
    app.gql_on(&other, "sz01.sales", UNTAG, json!({ "c": [customer], "t": [inquiry] })).await.ok();
    app.gql_on(&other, "sz01.sales", TAG, json!({ "c": [customer], "t": [inquiry] })).await.ok();
    let expected = events_after(&app, start, std::slice::from_ref(&customer)).await;
    let got = client.tag_changes("1", expected.len()).await;
    assert_eq!(seqs(&got), expected.iter().map(|e| e.seq).collect::<Vec<_>>());
    assert_eq!(got.last().unwrap()["op"], "ADD");
    assert_eq!(got.last().unwrap()["customerId"], customer);
}

async fn an_approver_sees_a_request_filed_in_its_scope_and_a_stranger_does_not(app: TestApp) {
    let url = serve(app.app.router()).await;
    let inquiry = app.tag_id("活动", "询价").await;
    let sz01 = app.customers_of("sz01").await;
    let updates = "subscription($s: ID) { changeRequestUpdates(scopeId: $s) { id status requester { login } } }";
    let mut approver = Client::signed_in(&url, &app.token("sz01.manager")).await;
    approver.subscribe("a", updates, json!({})).await;
    let mut stranger = Client::signed_in(&url, &app.token("bj01.sales")).await;
    stranger.subscribe("s", updates, json!({})).await;
    wait_until("the subscribers", || app.app.state.realtime.request_subscribers() >= 2).await;
    // A salesperson's bulk run becomes a request to its store's approvers.
    let job = app
        .gql("sz01.sales", BULK_TAG, json!({ "input": { "customers": { "customerIds": sz01 }, "add": [inquiry] } }))
        .await;
    let job = &job.ok()["bulkTag"];
    assert_eq!(job["status"], "AWAITING_APPROVAL", "{job}");
    match approver.receive().await {
        Received::Json(m) => {
            assert_eq!(m["type"], "next", "{m}");
            assert_eq!(m["payload"]["data"]["changeRequestUpdates"]["status"], "PENDING");
            assert_eq!(m["payload"]["data"]["changeRequestUpdates"]["requester"]["login"], "sz01.sales");
        }
        other => panic!("{other:?}"),
    }
    stranger.send(json!({ "type": "ping" })).await;
    match stranger.receive().await {
        Received::Json(m) => assert_eq!(m["type"], "pong", "the stranger got nothing: {m}"),
        other => panic!("{other:?}"),
    }
}

on_both_databases!(
    store_subscribers_see_only_their_own_customers_while_a_salesperson_and_an_hq_job_tag,
    a_subscriber_that_resumes_with_after_seq_loses_nothing_and_gets_nothing_twice,
    a_bad_token_or_a_subscribe_before_init_closes_with_the_protocol_code,
    a_revoked_session_closes_an_open_stream_with_4403,
    a_token_that_expires_while_connected_closes_the_connection_with_4403,
    a_change_on_a_second_instance_reaches_a_subscriber_on_the_first,
    a_role_taken_away_applies_to_a_stream_already_open,
    an_approver_sees_a_request_filed_in_its_scope_and_a_stranger_does_not,
);

on_both_databases_with!(
    connections_and_subscriptions_are_limited => Limits {
        max_ws_connections_per_staff: 1,
        max_subscriptions_per_connection: 1,
        ..Limits::default()
    },
    a_slow_subscriber_is_cut_off_with_the_position_to_resume_from => Limits {
        subscription_buffer: 2,
        ..Limits::default()
    },
    a_resume_from_beyond_the_replay_window_must_resynchronise => Limits {
        max_replay_events: 2,
        ..Limits::default()
    },
);
