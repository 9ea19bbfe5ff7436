//! The playground through the real router: the page and every file it
//! loads come from the server itself.

use reqwest::{StatusCode, header};

use crate::helpers::TestApp;
use crate::on_both_databases;

async fn start(app: TestApp) -> (String, TestApp) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app.app.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, app)
}

/// The `/playground/...` addresses named by `src="…"` and `href="…"` in the page.
fn playground_files(page: &str) -> Vec<&str> {
    page.split(['"', '\'']).filter(|part| part.starts_with("/playground/")).collect()
}

async fn playground_loads_nothing_from_outside_the_server(app: TestApp) {
    let (base, _app) = start(app).await;
    let client = reqwest::Client::new();
    let page = client.get(format!("{base}/graphql")).header(header::ACCEPT, "text/html").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let page = page.text().await.unwrap();
    assert!(!page.contains("http://") && !page.contains("https://"), "the page names an outside address");

    let files = playground_files(&page);
    assert_eq!(files.len(), 5, "{files:?}");
    for file in files {
        let res = client.get(format!("{base}{file}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{file}");
        let expected = if file.contains(".css") { "text/css" } else { "text/javascript" };
        assert!(res.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with(expected), "{file}");
        assert!(res.headers()[header::CACHE_CONTROL].to_str().unwrap().contains("immutable"), "{file}");
        assert!(!res.bytes().await.unwrap().is_empty(), "{file}");
    }

    let licences = client.get(format!("{base}/playground/THIRD-PARTY-LICENSES.txt")).send().await.unwrap();
    assert_eq!(licences.status(), StatusCode::OK);
    assert!(licences.text().await.unwrap().contains("graphiql@3.9.0 (MIT)"));

    let missing = client.get(format!("{base}/playground/nothing.js")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

on_both_databases!(playground_loads_nothing_from_outside_the_server);
