//! GraphQL over HTTP through the real router: CORS, GET, content
//! negotiation, refusals before execution, compression, persisted queries,
//! trusted documents and batches.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tagbase::config::{Limits, Settings};
use tagbase::startup::Application;

use crate::helpers::TestApp;
use crate::http::{Running, code, start, start_with};
use crate::{on_both_databases, on_both_databases_with};

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";
const ME: &str = "query Me { me { staff { login } } }";

fn sha256(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

fn content_type(headers: &HeaderMap) -> &str {
    headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// An instance of the application on `app`'s database with other settings.
async fn instance(app: &TestApp, change: impl FnOnce(&mut Settings)) -> Application {
    let mut settings = (*app.app.state.settings).clone();
    change(&mut settings);
    Application::with_database(settings, app.db.clone()).await.expect("instance")
}

/// What a client gets back: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Running {
    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let res = req.send().await.unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        Answer { status, headers, body }
    }

    /// GET /graphql with these query parameters.
    async fn get(&self, token: &str, accept: &str, params: &[(&str, &str)]) -> Answer {
        self.send(self.client.get(self.url()).query(params).bearer_auth(token).header("accept", accept)).await
    }

    /// POST /graphql of a JSON body.
    async fn post_as(&self, token: &str, accept: &str, body: &Value) -> Answer {
        self.send(self.client.post(self.url()).bearer_auth(token).header("accept", accept).json(body)).await
    }
}

// ---------------------------------------------------------------- CORS

async fn cors_is_granted_to_listed_origins_only(app: TestApp) {
    let token = app.token("admin");
    let listed = "http://localhost:5173";
    let with_cors = instance(&app, |s| s.cors_origins = vec![listed.to_owned()]).await;
    let server = start_with(app, with_cors.router()).await;
    let preflight = |origin: &str| {
        server
            .client
            .request(reqwest::Method::OPTIONS, server.url())
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
    };
    let res = preflight(listed).send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let headers = res.headers();
    assert_eq!(headers["access-control-allow-origin"], listed);
    let allowed = headers["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
    assert!(headers["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    // The real request: granted, and the page may read the request id.
    let res = server
        .client
        .post(server.url())
        .header("origin", listed)
        .bearer_auth(&token)
        .json(&json!({ "query": ME }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["access-control-allow-origin"], listed);
    assert!(res.headers()["access-control-expose-headers"].to_str().unwrap().contains("x-request-id"));
    // An origin that is not listed gets no grant, for the preflight or the
    // request.
    let res = preflight("http://evil.example").send().await.unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"), "{:?}", res.headers());
    let res = server
        .client
        .post(server.url())
        .header("origin", "http://evil.example")
        .bearer_auth(&token)
        .json(&json!({ "query": ME }))
        .send()
        .await
        .unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));
}

async fn without_listed_origins_there_is_no_cors(app: TestApp) {
    let server = start(app).await;
    let res = server
        .client
        .request(reqwest::Method::OPTIONS, server.url())
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!res.headers().keys().any(|k| k.as_str().starts_with("access-control-")), "{:?}", res.headers());
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
}

// ------------------------------------------------------------------ GET

async fn get_runs_queries_with_variables_and_operation_name(app: TestApp) {
    let token = app.token("sz01.manager");
    let server = start(app).await;
    let document =
        "query Who($with: Boolean!) { me @include(if: $with) { staff { login } } } query Other { __typename }";
    let answer = server
        .get(
            &token,
            GRAPHQL_RESPONSE,
            &[("query", document), ("operationName", "Who"), ("variables", r#"{"with":true}"#)],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(content_type(&answer.headers).starts_with(GRAPHQL_RESPONSE));
    assert_eq!(answer.body["data"]["me"]["staff"]["login"], "sz01.manager");
    let other = server.get(&token, "application/json", &[("query", document), ("operationName", "Other")]).await;
    assert_eq!(other.body, json!({ "data": { "__typename": "Query" } }));
    // Without a token, as by POST.
    let res = server.client.get(server.url()).query(&[("query", "{ __typename }")]).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

async fn get_refuses_mutations_with_405(app: TestApp) {
    let token = app.token("admin");
    let before = app.snapshot().await;
    let server = start(app).await;
    for (document, operation) in
        [("mutation { __typename }", None), ("query Q { __typename } mutation M { __typename }", Some("M"))]
    {
        let mut params = vec![("query", document)];
        params.extend(operation.map(|name| ("operationName", name)));
        for accept in [GRAPHQL_RESPONSE, "application/json"] {
            let answer = server.get(&token, accept, &params).await;
            assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{}", answer.body);
            assert_eq!(answer.headers["allow"], "POST");
            assert_eq!(code(&answer.body), "METHOD_NOT_ALLOWED");
            assert!(answer.body.get("data").is_none(), "{}", answer.body);
        }
    }
    // The query of the same document still runs by GET.
    let answer = server
        .get(
            &token,
            GRAPHQL_RESPONSE,
            &[("query", "query Q { __typename } mutation M { __typename }"), ("operationName", "Q")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(server.app.snapshot().await, before);
}

async fn get_refuses_malformed_parameters(app: TestApp) {
    let token = app.token("admin");
    let server = start(app).await;
    for params in [
        vec![],
        vec![("query", "{ __typename }"), ("variables", "{not json")],
        vec![("query", "{ __typename }"), ("variables", "[1]")],
        vec![("query", "{ __typename }"), ("extensions", "nope")],
    ] {
        let answer = server.get(&token, "application/json", &params).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{params:?}: {}", answer.body);
        assert_eq!(code(&answer.body), "BAD_REQUEST");
    }
}

// ---------------------------------------------------------- negotiation

async fn status_codes_follow_the_negotiated_media_type(app: TestApp) {
    let token = app.token("admin");
    let server = start(app).await;
    let parse_error = json!({ "query": "{ me " });
    let validation_error = json!({ "query": "{ noSuchField }" });
    for body in [&parse_error, &validation_error] {
        // application/graphql-response+json: 400, and no `data` entry.
        let answer = server.post_as(&token, GRAPHQL_RESPONSE, body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert!(content_type(&answer.headers).starts_with(GRAPHQL_RESPONSE));
        assert_eq!(code(&answer.body), "VALIDATION");
        assert!(answer.body.get("data").is_none(), "{}", answer.body);
        // application/json (and no preference): 200 for a well-formed request.
        for accept in ["application/json", "*/*"] {
            let answer = server.post_as(&token, accept, body).await;
            assert_eq!(answer.status, StatusCode::OK, "{accept}: {}", answer.body);
            assert!(content_type(&answer.headers).starts_with("application/json"));
            assert_eq!(code(&answer.body), "VALIDATION");
        }
    }
    // An error during execution is 200 with `data` either way.
    let executed = json!({ "query": "{ customer(id: \"abc\") { id } }" });
    let answer = server.post_as(&token, GRAPHQL_RESPONSE, &executed).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(answer.body.get("data").is_some(), "{}", answer.body);
    assert_eq!(code(&answer.body), "VALIDATION");
    // Apollo Client 4 and urql send this Accept.
    let answer = server
        .post_as(&token, "application/graphql-response+json,application/json;q=0.9", &json!({ "query": ME }))
        .await;
    assert!(content_type(&answer.headers).starts_with(GRAPHQL_RESPONSE));
    assert_eq!(answer.body["data"]["me"]["staff"]["login"], "admin");
}

async fn refusals_before_execution_are_graphql_errors(app: TestApp) {
    let token = app.token("admin");
    let before = app.snapshot().await;
    let server = start(app).await;
    let cases: [(&str, &str, StatusCode, &str); 9] = [
        ("{\"query\": \"{ me ", "application/json", StatusCode::BAD_REQUEST, "not valid JSON"),
        ("[1, 2]", "application/json", StatusCode::BAD_REQUEST, "batch entry 0"),
        ("\"{ __typename }\"", "application/json", StatusCode::BAD_REQUEST, "JSON object"),
        ("[]", "application/json", StatusCode::BAD_REQUEST, "empty batch"),
        ("{\"query\": 5}", "application/json", StatusCode::BAD_REQUEST, "not a GraphQL request"),
        ("{\"variables\": {}}", "application/json", StatusCode::BAD_REQUEST, "no `query`"),
        (
            "{\"query\": \"query($n: Float) { __typename }\", \"variables\": {\"n\": 1e309}}",
            "application/json",
            StatusCode::BAD_REQUEST,
            "number out of range",
        ),
        ("{\"query\": \"{ __typename }\"}", "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json"),
        (
            "query=%7B__typename%7D",
            "application/x-www-form-urlencoded",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
    ];
    for (body, content_type_sent, status, says) in cases {
        for accept in [GRAPHQL_RESPONSE, "application/json"] {
            let answer = server
                .send(
                    server
                        .client
                        .post(server.url())
                        .bearer_auth(&token)
                        .header("accept", accept)
                        .header("content-type", content_type_sent)
                        .body(body),
                )
                .await;
            assert_eq!(answer.status, status, "{body}: {}", answer.body);
            assert_eq!(code(&answer.body), "BAD_REQUEST", "{body}: {}", answer.body);
            let message = answer.body["errors"][0]["message"].as_str().unwrap();
            assert!(message.contains(says), "{body}: {message}");
            assert!(!message.contains("InvalidRequest") && !message.contains("Error("), "{message}");
            assert!(content_type(&answer.headers).contains("json"));
        }
    }
    // Methods other than GET and POST.
    let answer = server.send(server.client.put(server.url()).bearer_auth(&token).body("{}")).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.headers["allow"], "GET, POST");
    assert_eq!(code(&answer.body), "METHOD_NOT_ALLOWED");
    assert_eq!(server.app.snapshot().await, before);
}

async fn oversize_chunked_bodies_are_refused_with_413(app: TestApp) {
    let token = app.token("admin");
    let limit = Limits::default().max_body_bytes;
    let server = start(app).await;
    // No Content-Length: the limit bites while the body streams.
    let padding = "x".repeat(limit);
    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok("{\"query\": \"{ __typename } #".to_owned()), Ok(padding), Ok("\"}".to_owned())];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let answer = server
        .send(
            server.client.post(server.url()).bearer_auth(&token).header("content-type", "application/json").body(body),
        )
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.body);
    assert_eq!(code(&answer.body), "LIMIT_EXCEEDED");
    assert!(answer.body["errors"][0]["message"].as_str().unwrap().contains(&limit.to_string()));
}

// ---------------------------------------------------------- compression

const PAGE: &str = "query Page { customers(first: 20) { totalCount pageInfo { hasNextPage endCursor }
  edges { cursor node { id name phone gender city industry channel totalSpend orderCount addedAt version
    orgUnit { id name } lifecycleStage { id name }
    tags { tag { id name kind group { id name } } source taggedAt } } } } }";

async fn responses_are_compressed_as_the_client_accepts(app: TestApp) {
    let token = app.token("admin");
    let server = start(app).await;
    // A client that does not decompress, to see the bytes on the wire.
    let raw_client = reqwest::Client::builder().no_gzip().no_brotli().no_zstd().build().unwrap();
    let page = |encoding: &'static str| {
        raw_client
            .post(server.url())
            .bearer_auth(&token)
            .header("accept-encoding", encoding)
            .json(&json!({ "query": PAGE }))
    };
    let raw = page("identity").send().await.unwrap();
    assert!(!raw.headers().contains_key("content-encoding"));
    let raw = raw.bytes().await.unwrap();
    let plain: Value = serde_json::from_slice(&raw).unwrap();
    assert!(plain.get("errors").is_none(), "{plain}");
    assert!(!plain["data"]["customers"]["edges"].as_array().unwrap().is_empty());
    for encoding in ["gzip", "br", "zstd"] {
        let res = page(encoding).send().await.unwrap();
        assert_eq!(res.headers()["content-encoding"], encoding);
        let compressed = res.bytes().await.unwrap();
        assert!(compressed.len() * 3 < raw.len(), "{encoding}: {} of {} bytes", compressed.len(), raw.len());
    }
    // A client that decompresses (reqwest's default here) reads the same.
    for encoding in ["gzip", "br", "zstd"] {
        let decompressing = match encoding {
            "gzip" => reqwest::Client::builder().no_brotli().no_zstd(),
            "br" => reqwest::Client::builder().no_gzip().no_zstd(),
            _ => reqwest::Client::builder().no_gzip().no_brotli(),
        }
        .build()
        .unwrap();
        let res =
            decompressing.post(server.url()).bearer_auth(&token).json(&json!({ "query": PAGE })).send().await.unwrap();
        assert_eq!(res.json::<Value>().await.unwrap(), plain, "{encoding}");
    }
}

// ---------------------------------------------------- persisted queries

fn persisted(hash: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
}

async fn automatic_persisted_queries_register_and_run(app: TestApp) {
    let token = app.token("admin");
    let server = start(app).await;
    let hash = sha256(ME);
    let extensions = persisted(&hash);
    // The hash alone, before registration: the answer the links look for.
    let unknown = json!({ "extensions": extensions, "operationName": "Me" });
    let answer = server.post_as(&token, "application/json", &unknown).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["errors"][0]["message"], "PersistedQueryNotFound");
    assert_eq!(code(&answer.body), "PERSISTED_QUERY_NOT_FOUND");
    let answer = server.post_as(&token, GRAPHQL_RESPONSE, &unknown).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.body["errors"][0]["message"], "PersistedQueryNotFound");
    // Hash with query: registered and run.
    let answer = server.post_as(&token, GRAPHQL_RESPONSE, &json!({ "query": ME, "extensions": extensions })).await;
    assert_eq!(answer.body["data"]["me"]["staff"]["login"], "admin", "{}", answer.body);
    // From now on the hash alone runs, by POST and by GET.
    let answer = server.post_as(&token, GRAPHQL_RESPONSE, &unknown).await;
    assert_eq!(answer.body["data"]["me"]["staff"]["login"], "admin", "{}", answer.body);
    let encoded = extensions.to_string();
    let answer = server.get(&token, GRAPHQL_RESPONSE, &[("extensions", &encoded), ("operationName", "Me")]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["data"]["me"]["staff"]["login"], "admin");
    // A hash that is not the query's is refused before execution.
    let lying = json!({ "query": "{ __typename }", "extensions": extensions });
    let answer = server.post_as(&token, GRAPHQL_RESPONSE, &lying).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&answer.body), "BAD_REQUEST");
    assert!(answer.body.get("data").is_none());
    // A persisted mutation is still a mutation by GET.
    let mutation = "mutation Noop { __typename }";
    let register = json!({ "query": mutation, "extensions": persisted(&sha256(mutation)) });
    assert_eq!(server.post_as(&token, GRAPHQL_RESPONSE, &register).await.status, StatusCode::OK);
    let by_hash = persisted(&sha256(mutation)).to_string();
    let answer = server.get(&token, GRAPHQL_RESPONSE, &[("extensions", &by_hash)]).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{}", answer.body);
}

async fn trusted_documents_only_run_listed_operations(app: TestApp) {
    let token = app.token("admin");
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("persisted-documents.json");
    std::fs::write(&manifest, json!({ sha256(ME): ME }).to_string()).unwrap();
    let trusted = instance(&app, |s| s.trusted_documents = Some(manifest.clone())).await;
    let server = start_with(app, trusted.router()).await;
    // Listed: by hash, or as the very text.
    let by_hash = json!({ "extensions": persisted(&sha256(ME)) });
    let answer = server.post_as(&token, GRAPHQL_RESPONSE, &by_hash).await;
    assert_eq!(answer.body["data"]["me"]["staff"]["login"], "admin", "{}", answer.body);
    let by_text = server.post_as(&token, GRAPHQL_RESPONSE, &json!({ "query": ME })).await;
    assert_eq!(by_text.body["data"]["me"]["staff"]["login"], "admin", "{}", by_text.body);
    let encoded = persisted(&sha256(ME)).to_string();
    let by_get = server.get(&token, GRAPHQL_RESPONSE, &[("extensions", &encoded)]).await;
    assert_eq!(by_get.body["data"]["me"]["staff"]["login"], "admin", "{}", by_get.body);
    // Anything else is refused before execution, and nothing registers.
    let other = "{ __typename }";
    for body in [json!({ "query": other }), json!({ "query": other, "extensions": persisted(&sha256(other)) })] {
        let answer = server.post_as(&token, GRAPHQL_RESPONSE, &body).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
        assert_eq!(code(&answer.body), "PERSISTED_QUERY_NOT_IN_LIST");
        assert!(answer.body.get("data").is_none());
        let answer = server.post_as(&token, "application/json", &body).await;
        assert_eq!((answer.status, code(&answer.body)), (StatusCode::OK, "PERSISTED_QUERY_NOT_IN_LIST"));
    }
    let unknown = json!({ "extensions": persisted(&sha256(other)) });
    let answer = server.post_as(&token, GRAPHQL_RESPONSE, &unknown).await;
    assert_eq!((answer.status, code(&answer.body)), (StatusCode::NOT_FOUND, "PERSISTED_QUERY_NOT_FOUND"));
    assert_eq!(answer.body["errors"][0]["message"], "PersistedQueryNotFound");
    // A bad manifest stops the start.
    std::fs::write(&manifest, json!({ sha256("{ a }"): "{ b }" }).to_string()).unwrap();
    let mut settings = (*server.app.app.state.settings).clone();
    settings.trusted_documents = Some(manifest);
    assert!(Application::with_database(settings, server.app.db.clone()).await.is_err());
}

// -------------------------------------------------------------- batches

/// When several refusals before execution apply, the first in a fixed
/// order answers: persisted queries, then GET runs queries only, then the
/// document limits.
async fn the_first_refusal_before_execution_answers(app: TestApp) {
    let token = app.token("admin");
    let server = start(app).await;
    let aliases: String = (0..=Limits::default().max_aliases).map(|i| format!("a{i}: __typename ")).collect();
    let over_limits = format!("mutation {{ {aliases} }}");
    // A mutation by GET over the limits: the method answers.
    let answer = server.get(&token, GRAPHQL_RESPONSE, &[("query", &over_limits)]).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{}", answer.body);
    assert_eq!(code(&answer.body), "METHOD_NOT_ALLOWED");
    // By POST, the limits answer.
    let answer = server.post_as(&token, GRAPHQL_RESPONSE, &json!({ "query": over_limits })).await;
    assert_eq!(code(&answer.body), "LIMIT_EXCEEDED", "{}", answer.body);
    // With a hash that is not its own: the persisted query answers.
    let lying = json!({ "query": over_limits, "extensions": persisted(&sha256(ME)) });
    let answer = server.post_as(&token, GRAPHQL_RESPONSE, &lying).await;
    assert_eq!(answer.body["errors"][0]["message"], "provided sha does not match query");
    let by_hash = persisted(&sha256(&over_limits)).to_string();
    let answer = server.get(&token, GRAPHQL_RESPONSE, &[("extensions", &by_hash)]).await;
    assert_eq!(code(&answer.body), "PERSISTED_QUERY_NOT_FOUND", "{}", answer.body);
}

async fn batches_run_each_operation_under_one_sign_in(app: TestApp) {
    let token = app.token("sz01.manager");
    let server = start(app).await;
    let statements = |server: &Running| server.app.statements();
    let one = json!({ "query": "{ __typename }" });
    // The first request of an instance warms a cache; count from the second.
    server.post_as(&token, "application/json", &one).await;
    let before = statements(&server);
    server.post_as(&token, "application/json", &one).await;
    let single = statements(&server) - before;
    let before = statements(&server);
    let answer = server.post_as(&token, "application/json", &json!([one, one, one])).await;
    assert_eq!(answer.body, Value::Array(vec![json!({ "data": { "__typename": "Query" } }); 3]));
    assert_eq!(statements(&server) - before, single, "one sign-in for the whole batch");
    // Each operation stands alone: its own errors, its own limits.
    let deep = "{ me { staff { homeOrgUnit { parent { parent { parent { parent { parent { parent { parent { parent { parent { parent { parent { name } } } } } } } } } } } } } } }";
    let batch = json!([{ "query": ME }, { "query": deep }, { "query": "{ nope }" }]);
    let answer = server.post_as(&token, GRAPHQL_RESPONSE, &batch).await;
    assert_eq!(answer.status, StatusCode::OK);
    let results = answer.body.as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["data"]["me"]["staff"]["login"], "sz01.manager");
    assert_eq!(code(&results[1]), "LIMIT_EXCEEDED");
    assert_eq!(code(&results[2]), "VALIDATION");
    // No token: one 401 for the batch.
    let res = server.client.post(server.url()).json(&json!([one, one])).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

async fn batches_over_the_limit_are_refused(app: TestApp) {
    let token = app.token("admin");
    let server = start(app).await;
    let one = json!({ "query": "{ __typename }" });
    let answer = server.post_as(&token, "application/json", &json!([one, one])).await;
    assert_eq!(answer.body.as_array().map(Vec::len), Some(2));
    let answer = server.post_as(&token, "application/json", &json!([one, one, one])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&answer.body), "LIMIT_EXCEEDED", "{}", answer.body);
    assert!(answer.body["errors"][0]["message"].as_str().unwrap().contains("at most 2"));
}

on_both_databases!(
    cors_is_granted_to_listed_origins_only,
    without_listed_origins_there_is_no_cors,
    get_runs_queries_with_variables_and_operation_name,
    get_refuses_mutations_with_405,
    get_refuses_malformed_parameters,
    status_codes_follow_the_negotiated_media_type,
    refusals_before_execution_are_graphql_errors,
    oversize_chunked_bodies_are_refused_with_413,
    responses_are_compressed_as_the_client_accepts,
    automatic_persisted_queries_register_and_run,
    trusted_documents_only_run_listed_operations,
    the_first_refusal_before_execution_answers,
    batches_run_each_operation_under_one_sign_in,
);

on_both_databases_with!(
    batches_over_the_limit_are_refused => Limits { max_batch: 2, ..Limits::default() },
);
