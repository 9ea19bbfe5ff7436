//! Sign-in: OIDC tokens against an in-test provider (discovery + JWKS on
//! port 0, keys generated here), WeCom's OAuth code exchange against an
//! in-test stand-in that follows WeCom's documented shapes, tagbase's
//! sessions (refresh, reuse, sign-out), and development tokens.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tagbase::config::{OidcSettings, WeComSettings};
use tagbase::startup::Application;

use crate::helpers::TestApp;
use crate::on_both_databases;

/// A 2048-bit RSA key (PKCS#1 DER) made for these tests: generating one in
/// a debug build takes seconds, an EC key none.
const TEST_RSA_DER: &str = "MIIEpAIBAAKCAQEAt3Viz8xwhh0AmDik3TfJ8dp7Fc4wUOO44S32mXwd0vGNV1OWTGtPmln8QTS1FrQD5/Xprw3hT7Dfr+X5+REF4BNhmqbueMzk7ks7528w4l0uo1mmPoP4exlf4Bi0R0186xBe+pLqToYlZI0WVvr7e3R7h6rVK14H+8bq/cHqqr3Y644Nch0JpAPlerSik5MT8yLzXTL/nCUTrm2QPmz9FHVuZHEPcaqo53trhabYHLXNaHAI/eSMPEI0Y+sPWeSBWJc3TO50saFxQ/6K4LVyZOr4OL9MQz2mU7Zbe7HuerMoOvWGoiwYV+F0DQEHtP61nflepadifaVcWs9/JwbwDwIDAQABAoIBAANfiCqT8rm0jM8/s2BR50eoIb075k2Gcl7JjpAx5QZ85IFniwrqqjMHVokIZA//zVaVge9zDOJ/OQ2t59O5iWceVBwY16em9Mqg3YAa3kY7OmFMg68AlDAHPmkLaz0oYpSb33MyAlbhRoy7v15oDPmvIZpT/MloWDM77BQwXZU4EmQnQD2YpjtLPQBA1lLSL5W62r54XPgyBt8pkVMEBhFYTztxWpUk3sBuZruIMJBAQLDixoJA25m3L8SWeex57KGTQm8bKHeDnViLEtrVcLMi4ypSNFgOCEUeCcmpU9vY3dCxuznxjynSboK+4MIsEfyzHApQMK+NvH4Pw2tZjIECgYEA7tnJgKgxHUUxAImEhR6cN2pN0jkZNnSOOuBZkk0lNDisRBQ5Hx5yXVXTE0LmlnzXtvKWOX9+jVoKu08nor69tqjLf0/0+L5FRS54FAj0o41x8ZAZTSRO7dZEMdGbryY9NiY+rINvAVLVe6MOwQEH9FCPJM7ubwhj0hwa8nA3DM8CgYEAxKF1b4Dc4EXeF2Z+YsmfdYPaVwisEbF4BxQXtm+c9WTyeFWeHvU4vgO1sbcwaJ8OicpOXFc65lSPHIBsNjq7e4zD2y1JdJWnMjYnM/D4x+u+OFPNlUQ+UdiFTaHG5Mo3IfmeAzEOAoswBA+Sx6X6i5oWk51QAHjHKPyUXin3OMECgYEA7d++e8CF8YW4ULWkYkNjBxl62ZP+FSqtf9txuW/VTpXmkoKlhOV4tpXD+lnVdihtWYltrWPZMINtTrB9Y+qc3C5tRKTn71bnfAfUlPd6VOyIfzCo0hgH93w+PHNpnlzx91zNbFgVlHbfoBt7lSImvt4AQYNJGRF9AIL3H148pScCgYEAjxWW6V7yW9k7tfeFfMmPWepq1e6fl/h2iWAbqUwrAX9F2j8jYw+7DLqSWxIdDeTApZAr2ZI4cCeURH9HP2cZytwyIaogy8+i7Szu9iMiRgjMURzaewY/+zr+NfHFU/O6juSgEV5+/Wbft/TFMLcdTL0CNMTC1LUO6Ep0hNkw54ECgYBZDqLMNbLansD2xTFuTIzPDsccMxlC8cH2q1tF99kYGLlgduweO0wH2mN649A8bKmNAlER4MMCmGdox18BGQFjIAqO0tzELMecAssIiiSC0vqsnmnc7hKaEImI62l2T8iQQjUyR/AsPAjfScElbbif/Nk5326jgU80HooTkJJB5w==";

/// A signing key of the test provider.
#[derive(Clone)]
pub struct ProviderKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Jwk,
}

impl ProviderKey {
    /// A fresh ES256 key.
    pub fn es256(kid: &str) -> Self {
        let secret = loop {
            if let Ok(key) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
                break key;
            }
        };
        let der = secret.to_pkcs8_der().expect("pkcs8");
        Self::new(kid, Algorithm::ES256, EncodingKey::from_ec_der(der.as_bytes()))
    }

    /// The fixed RS256 test key.
    pub fn rs256(kid: &str) -> Self {
        let der = base64::engine::general_purpose::STANDARD.decode(TEST_RSA_DER).expect("rsa der");
        Self::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(&der))
    }

    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey) -> Self {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("jwk");
        jwk.common.key_id = Some(kid.to_owned());
        Self { kid: kid.to_owned(), alg, encoding, jwk }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

/// The published keys and how often they were fetched.
type KeyState = (Arc<Mutex<Vec<Jwk>>>, Arc<AtomicUsize>);

/// An OpenID provider's discovery document and key set on a loopback port.
pub struct TestProvider {
    pub issuer: String,
    keys: Arc<Mutex<Vec<Jwk>>>,
    jwks_fetches: Arc<AtomicUsize>,
}

pub const AUDIENCE: &str = "tagbase-api";

impl TestProvider {
    pub async fn start(published: &[&ProviderKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(published.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "authorization_endpoint": format!("{issuer}/auth"),
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(move || async move { Json(discovery) }))
            .route(
                "/jwks",
                get(|State((keys, fetches)): State<KeyState>| async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    Json(JwkSet { keys: keys.lock().unwrap().clone() })
                }),
            )
            .with_state((keys.clone(), jwks_fetches.clone()));
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { issuer, keys, jwks_fetches }
    }

    /// Replaces the published keys (a rotation).
    pub fn publish(&self, keys: &[&ProviderKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Claims of a token for `sub`, valid for five minutes.
    pub fn claims(&self, sub: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({ "iss": self.issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now, "exp": now + 300 })
    }

    pub fn settings(&self) -> OidcSettings {
        OidcSettings { jwks_min_refetch: Duration::from_millis(300), ..OidcSettings::new(&self.issuer, AUDIENCE) }
    }
}

const ME: &str = "{ me { staff { login } signIn { method sessionId expiresAt } } }";

async fn oidc_instance(app: &TestApp, provider: &TestProvider) -> Application {
    let settings = provider.settings();
    app.instance_with(|s| s.oidc = Some(settings)).await
}

async fn login_of(app: &TestApp, instance: &Application, token: &str) -> Result<String, String> {
    let res = app.gql_bearer(instance, token, ME, json!({})).await?;
    Ok(res.ok()["me"]["staff"]["login"].as_str().unwrap().to_owned())
}

async fn provider_tokens_sign_their_staff_member_in(app: TestApp) {
    let (es, rs) = (ProviderKey::es256("es-1"), ProviderKey::rs256("rs-1"));
    let provider = TestProvider::start(&[&es, &rs]).await;
    let instance = oidc_instance(&app, &provider).await;
    for key in [&es, &rs] {
        let token = key.sign(&provider.claims("sz01.sales"));
        let res = app.gql_bearer(&instance, &token, ME, json!({})).await.expect("signed in");
        let me = &res.ok()["me"];
        assert_eq!(me["staff"]["login"], "sz01.sales", "{:?}", key.alg);
        assert_eq!(me["signIn"]["method"], "OIDC");
        assert!(me["signIn"]["sessionId"].is_null());
    }
    // Unknown people and deactivated ones are refused.
    let nobody = es.sign(&provider.claims("nobody.at.all"));
    assert_eq!(login_of(&app, &instance, &nobody).await, Err("UNAUTHENTICATED".into()));
    let former = es.sign(&provider.claims(tagbase::seed::FORMER_SALES));
    assert_eq!(login_of(&app, &instance, &former).await, Err("UNAUTHENTICATED".into()));
    // Without OIDC configured, the same token is refused.
    let token = es.sign(&provider.claims("sz01.sales"));
    assert_eq!(login_of(&app, &app.app, &token).await, Err("UNAUTHENTICATED".into()));
}

async fn the_configured_claim_names_the_staff_member(app: TestApp) {
    let key = ProviderKey::es256("k");
    let provider = TestProvider::start(&[&key]).await;
    let settings = OidcSettings { claim: "preferred_username".into(), ..provider.settings() };
    let instance = app.instance_with(|s| s.oidc = Some(settings)).await;
    let mut claims = provider.claims("0f3c-opaque-subject");
    claims["preferred_username"] = json!("sz01.manager");
    assert_eq!(login_of(&app, &instance, &key.sign(&claims)).await, Ok("sz01.manager".into()));
    claims.as_object_mut().unwrap().remove("preferred_username");
    assert_eq!(login_of(&app, &instance, &key.sign(&claims)).await, Err("UNAUTHENTICATED".into()));
}

async fn tokens_the_provider_did_not_sign_are_refused(app: TestApp) {
    let published = ProviderKey::es256("published");
    let rsa = ProviderKey::rs256("rsa");
    let provider = TestProvider::start(&[&published, &rsa]).await;
    let instance = oidc_instance(&app, &provider).await;
    let claims = provider.claims("sz01.sales");
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());

    // A key the provider never published, even under a published kid.
    let rogue = ProviderKey::es256("rogue");
    let mut impostor = ProviderKey::es256("published");
    impostor.kid = "published".into();
    // `alg: none`.
    let none = format!("{}.{}.", b64(&json!({ "alg": "none", "kid": "published" })), b64(&claims));
    // HS256 signed with the published public keys as the shared secret.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("rsa".into());
    let rsa_public = serde_json::to_vec(&rsa.jwk).unwrap();
    let confused_rsa = jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(&rsa_public)).unwrap();
    let n = match &rsa.jwk.algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::RSA(p) => p.n.clone(),
        _ => unreachable!(),
    };
    let confused_n = jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(n.as_bytes())).unwrap();
    hs.kid = Some("published".into());
    let ec_public = serde_json::to_vec(&published.jwk).unwrap();
    let confused_ec = jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(&ec_public)).unwrap();
    // An RSA key used under an EC kid (and the other way round).
    let mut wrong_kid = rsa.clone();
    wrong_kid.kid = "published".into();
    // Wrong issuer, wrong audience, expired, no expiry.
    let mut other_issuer = claims.clone();
    other_issuer["iss"] = json!("https://evil.example");
    let mut other_audience = claims.clone();
    other_audience["aud"] = json!("another-api");
    let mut expired = claims.clone();
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 3600);
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    // A valid token with its payload swapped for another person's.
    let valid = published.sign(&claims);
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    parts[1] = b64(&provider.claims("admin"));
    let swapped = parts.join(".");

    let cases = [
        ("a key never published", rogue.sign(&claims)),
        ("an unpublished key under a published kid", impostor.sign(&claims)),
        ("alg none", none),
        ("HS256 keyed with the RSA JWK", confused_rsa),
        ("HS256 keyed with the RSA modulus", confused_n),
        ("HS256 keyed with the EC JWK", confused_ec),
        ("an RSA signature under an EC key id", wrong_kid.sign(&claims)),
        ("another issuer", published.sign(&other_issuer)),
        ("another audience", published.sign(&other_audience)),
        ("expired", published.sign(&expired)),
        ("no expiry", published.sign(&no_exp)),
        ("a swapped payload", swapped),
    ];
    for (case, token) in cases {
        assert_eq!(login_of(&app, &instance, &token).await, Err("UNAUTHENTICATED".into()), "{case}");
    }
    assert_eq!(login_of(&app, &instance, &valid).await, Ok("sz01.sales".into()), "the control case");
}

async fn a_rotated_key_is_fetched_once_when_its_first_token_arrives(app: TestApp) {
    let old = ProviderKey::es256("2026-11");
    let provider = TestProvider::start(&[&old]).await;
    let instance = oidc_instance(&app, &provider).await;
    assert_eq!(login_of(&app, &instance, &old.sign(&provider.claims("sz01.sales"))).await, Ok("sz01.sales".into()));
    assert_eq!(provider.jwks_fetches(), 1);
    // Cached: more tokens, no more fetches.
    for _ in 0..3 {
        login_of(&app, &instance, &old.sign(&provider.claims("sz01.sales"))).await.unwrap();
    }
    assert_eq!(provider.jwks_fetches(), 1);

    // The provider rotates: the new key is published, the old one dropped.
    let new = ProviderKey::rs256("2026-12");
    provider.publish(&[&new]);
    tokio::time::sleep(Duration::from_millis(400)).await; // past jwks_min_refetch
    assert_eq!(login_of(&app, &instance, &new.sign(&provider.claims("sz01.sales"))).await, Ok("sz01.sales".into()));
    assert_eq!(provider.jwks_fetches(), 2);
    assert_eq!(
        login_of(&app, &instance, &old.sign(&provider.claims("sz01.sales"))).await,
        Err("UNAUTHENTICATED".into()),
        "a key the provider withdrew is not used once the keys were fetched again"
    );

    // A flood of tokens naming unknown keys fetches at most once per
    // jwks_min_refetch.
    let fetches = provider.jwks_fetches();
    let started = std::time::Instant::now();
    for i in 0..20 {
        let forged = ProviderKey::es256(&format!("forged-{i}"));
        let refused = login_of(&app, &instance, &forged.sign(&provider.claims("sz01.sales"))).await;
        assert_eq!(refused, Err("UNAUTHENTICATED".into()));
    }
    let windows = 1 + started.elapsed().as_millis() / 300;
    let extra = provider.jwks_fetches() - fetches;
    assert!(extra as u128 <= windows && extra < 20, "{extra} fetches for 20 forged kids in {windows} windows");
}

async fn clock_skew_is_forgiven_up_to_the_leeway_and_no_further(app: TestApp) {
    let key = ProviderKey::es256("k");
    let provider = TestProvider::start(&[&key]).await;
    let settings = provider.settings();
    let instance = app
        .instance_with(|s| {
            s.oidc = Some(settings);
            s.token_leeway = Duration::from_secs(5);
        })
        .await;
    let now = chrono::Utc::now().timestamp();
    let with = |field: &str, at: i64| {
        let mut claims = provider.claims("sz01.sales");
        claims[field] = json!(at);
        key.sign(&claims)
    };
    // Two seconds inside the leeway, and two seconds beyond it.
    assert!(login_of(&app, &instance, &with("exp", now - 3)).await.is_ok(), "expired 3 s ago, leeway 5 s");
    assert!(login_of(&app, &instance, &with("exp", now - 7)).await.is_err(), "expired 7 s ago");
    assert!(login_of(&app, &instance, &with("nbf", now + 3)).await.is_ok(), "valid in 3 s");
    assert!(login_of(&app, &instance, &with("nbf", now + 7)).await.is_err(), "valid in 7 s");

    // tagbase's own tokens follow the same setting.
    let keys = &instance.state.keys;
    let member = app.staff("sz01.sales");
    let own = |exp: i64| keys.mint_session(member, "no-such-session", "oidc", exp).unwrap();
    let dev = |ttl_ago: i64| {
        let claims = json!({ "sub": member.id.to_string(), "login": member.login, "iss": "tagbase",
            "aud": "tagbase-api", "iat": now - 100, "exp": now - ttl_ago });
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(crate::helpers::TEST_JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    assert!(login_of(&app, &instance, &dev(3)).await.is_ok());
    assert!(login_of(&app, &instance, &dev(7)).await.is_err());
    assert!(login_of(&app, &instance, &own(now + 60)).await.is_err(), "a session token needs a live session");
}

async fn development_tokens_can_be_turned_off(app: TestApp) {
    let instance = app.instance_with(|s| s.dev_tokens = false).await;
    let token = app.token("sz01.sales");
    assert_eq!(login_of(&app, &app.app, &token).await, Ok("sz01.sales".into()));
    assert_eq!(login_of(&app, &instance, &token).await, Err("UNAUTHENTICATED".into()));
    // Sessions still work.
    let auth = &instance.state.auth;
    let tokens = tagbase::auth::session::open(&app.db, &auth.keys, auth.lifetimes, app.staff("sz01.sales"), "wecom")
        .await
        .unwrap();
    let res = app.gql_bearer(&instance, &tokens.access_token, ME, json!({})).await.unwrap();
    assert_eq!(res.ok()["me"]["signIn"]["method"], "WECOM");
    assert_eq!(res.ok()["me"]["signIn"]["sessionId"], tokens.session_id.as_str());
}

// ---- WeCom -------------------------------------------------------------

/// A stand-in for WeCom's OAuth API with the documented request and
/// response shapes.
struct FakeWeCom {
    base: String,
    token_calls: Arc<AtomicUsize>,
    /// The access token WeCom currently honours (changes to simulate
    /// expiry on WeCom's side).
    current: Arc<Mutex<String>>,
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    corpid: String,
    corpsecret: String,
}

#[derive(serde::Deserialize)]
struct UserInfoQuery {
    access_token: String,
    code: String,
}

impl FakeWeCom {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let token_calls = Arc::new(AtomicUsize::new(0));
        let current = Arc::new(Mutex::new("AT-1".to_owned()));
        type S = (Arc<AtomicUsize>, Arc<Mutex<String>>);
        let router = Router::new()
            .route(
                "/cgi-bin/gettoken",
                get(|State((calls, current)): State<S>, Query(q): Query<TokenQuery>| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if q.corpid != "ww-test-corp" || q.corpsecret != "test-secret" {
                        return Json(json!({ "errcode": 40013, "errmsg": "invalid corpid" }));
                    }
                    let token = current.lock().unwrap().clone();
                    Json(json!({ "errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200 }))
                }),
            )
            .route(
                "/cgi-bin/auth/getuserinfo",
                get(|State((_, current)): State<S>, Query(q): Query<UserInfoQuery>| async move {
                    if q.access_token != *current.lock().unwrap() {
                        return Json(json!({ "errcode": 42001, "errmsg": "access_token expired" }));
                    }
                    Json(match q.code.as_str() {
                        "code-zhangwei" => {
                            json!({ "errcode": 0, "errmsg": "ok", "userid": "ZhangWei", "user_ticket": "t" })
                        }
                        "code-stranger" => json!({ "errcode": 0, "errmsg": "ok", "userid": "NotInTagbase" }),
                        "code-outsider" => {
                            json!({ "errcode": 0, "errmsg": "ok", "openid": "oAbc", "external_userid": "wmX" })
                        }
                        _ => json!({ "errcode": 40029, "errmsg": "invalid code" }),
                    })
                }),
            )
            .with_state((token_calls.clone(), current.clone()));
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { base, token_calls, current }
    }

    fn settings(&self, secret: &str) -> WeComSettings {
        WeComSettings { base_url: self.base.clone(), corp_id: "ww-test-corp".into(), corp_secret: secret.into() }
    }
}

/// The application's router on a loopback port.
async fn serve(instance: &Application) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = instance.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

async fn post(url: &str, bearer: Option<&str>, body: Value) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().post(url).json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let res = req.send().await.unwrap();
    (res.status(), res.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}

async fn wecom_sign_in_exchanges_a_code_for_a_session(app: TestApp) {
    let wecom = FakeWeCom::start().await;
    let settings = wecom.settings("test-secret");
    let instance = app.instance_with(|s| s.wecom = Some(settings)).await;
    let base = serve(&instance).await;

    let (status, body) = post(&format!("{base}/auth/wecom"), None, json!({ "code": "code-zhangwei" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["accessToken"].as_str().unwrap();
    assert!(body["refreshToken"].as_str().is_some_and(|t| t.len() >= 40));
    assert!(body["expiresIn"].as_i64().is_some_and(|s| s > 0 && s <= 15 * 60));
    let res = app.gql_bearer(&instance, access, ME, json!({})).await.unwrap();
    assert_eq!(res.ok()["me"]["staff"]["login"], "sz01.sales");
    assert_eq!(res.ok()["me"]["signIn"]["method"], "WECOM");
    assert_eq!(res.ok()["me"]["signIn"]["sessionId"], body["sessionId"]);

    // The corp's access token is cached: a second sign-in asks only for the user.
    post(&format!("{base}/auth/wecom"), None, json!({ "code": "code-zhangwei" })).await;
    assert_eq!(wecom.token_calls.load(Ordering::SeqCst), 1);
    // WeCom expires it early: tagbase renews it once and carries on.
    *wecom.current.lock().unwrap() = "AT-2".into();
    let (status, _) = post(&format!("{base}/auth/wecom"), None, json!({ "code": "code-zhangwei" })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(wecom.token_calls.load(Ordering::SeqCst), 2);

    for (code_value, why) in [
        ("code-bad", "WeCom refuses the code (errcode 40029)"),
        ("code-stranger", "a WeCom member unknown to tagbase"),
        ("code-outsider", "not a member of the corp (openid only)"),
    ] {
        let (status, body) = post(&format!("{base}/auth/wecom"), None, json!({ "code": code_value })).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {body}");
        assert_eq!(code(&body), "UNAUTHENTICATED", "{why}");
    }
    let (status, body) = post(&format!("{base}/auth/wecom"), None, json!({ "code": "" })).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "VALIDATION"));
    let (status, body) = post(&format!("{base}/auth/wecom"), None, json!({ "nope": 1 })).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "VALIDATION"));
}

async fn wecom_refusing_tagbases_credentials_is_an_internal_error(app: TestApp) {
    let wecom = FakeWeCom::start().await;
    let settings = wecom.settings("wrong-secret");
    let instance = app.instance_with(|s| s.wecom = Some(settings)).await;
    let base = serve(&instance).await;
    let (status, body) = post(&format!("{base}/auth/wecom"), None, json!({ "code": "code-zhangwei" })).await;
    assert_eq!((status, code(&body)), (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"), "{body}");
    assert!(!body.to_string().contains("wrong-secret"), "the secret never shows");
    // Not configured at all: refused, not an error.
    let base = serve(&app.app).await;
    let (status, _) = post(&format!("{base}/auth/wecom"), None, json!({ "code": "code-zhangwei" })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

// ---- Sessions ----------------------------------------------------------

async fn refresh_tokens_rotate_and_a_replayed_one_ends_the_session(app: TestApp) {
    let key = ProviderKey::es256("k");
    let provider = TestProvider::start(&[&key]).await;
    let instance = oidc_instance(&app, &provider).await;
    let base = serve(&instance).await;
    let id_token = key.sign(&provider.claims("sz01.sales"));
    let (status, first) = post(&format!("{base}/auth/oidc"), None, json!({ "token": id_token })).await;
    assert_eq!(status, StatusCode::OK, "{first}");

    let (status, second) =
        post(&format!("{base}/auth/refresh"), None, json!({ "refreshToken": first["refreshToken"] })).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(second["refreshToken"], first["refreshToken"]);
    assert_eq!(second["sessionId"], first["sessionId"]);
    let access = second["accessToken"].as_str().unwrap().to_owned();
    let res = app.gql_bearer(&instance, &access, ME, json!({})).await.unwrap();
    assert_eq!(res.ok()["me"]["signIn"]["method"], "OIDC");

    // The first refresh token again: a replay. Refused, and the session ends.
    let (status, body) =
        post(&format!("{base}/auth/refresh"), None, json!({ "refreshToken": first["refreshToken"] })).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"));
    assert_eq!(login_of(&app, &instance, &access).await, Err("UNAUTHENTICATED".into()));
    let (status, _) =
        post(&format!("{base}/auth/refresh"), None, json!({ "refreshToken": second["refreshToken"] })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the newest refresh token died with its session");
    let (status, _) = post(&format!("{base}/auth/refresh"), None, json!({ "refreshToken": "made-up" })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn signing_out_ends_one_session_or_all_of_them(app: TestApp) {
    let instance = app.instance_with(|_| {}).await;
    let other = app.second_instance().await;
    let base = serve(&instance).await;
    let auth = &instance.state.auth;
    let member = app.staff("sz01.sales");
    let open = || tagbase::auth::session::open(&app.db, &auth.keys, auth.lifetimes, member, "wecom");
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let dev = app.token("sz01.sales");

    let (status, body) = post(&format!("{base}/auth/sign-out"), Some(&a.access_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sessionsRevoked"], 1);
    for on in [&instance, &other] {
        assert_eq!(login_of(&app, on, &a.access_token).await, Err("UNAUTHENTICATED".into()));
        assert!(login_of(&app, on, &b.access_token).await.is_ok(), "the other session lives on");
    }
    let (status, _) = post(&format!("{base}/auth/refresh"), None, json!({ "refreshToken": a.refresh_token })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A dev token has no session to end: it must ask for everywhere.
    let (status, body) = post(&format!("{base}/auth/sign-out"), Some(&dev), json!({})).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "VALIDATION"));

    let (status, body) = post(&format!("{base}/auth/sign-out"), Some(&dev), json!({ "everywhere": true })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sessionsRevoked"], 1);
    for on in [&instance, &other] {
        for token in [&b.access_token, &dev] {
            assert_eq!(login_of(&app, on, token).await, Err("UNAUTHENTICATED".into()));
        }
    }
    // Signing in afresh works at once.
    let fresh = open().await.unwrap();
    assert!(login_of(&app, &other, &fresh.access_token).await.is_ok());
    let (status, _) = post(&format!("{base}/auth/sign-out"), None, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

on_both_databases!(
    provider_tokens_sign_their_staff_member_in,
    the_configured_claim_names_the_staff_member,
    tokens_the_provider_did_not_sign_are_refused,
    a_rotated_key_is_fetched_once_when_its_first_token_arrives,
    clock_skew_is_forgiven_up_to_the_leeway_and_no_further,
    development_tokens_can_be_turned_off,
    wecom_sign_in_exchanges_a_code_for_a_session,
    wecom_refusing_tagbases_credentials_is_an_internal_error,
    refresh_tokens_rotate_and_a_replayed_one_ends_the_session,
    signing_out_ends_one_session_or_all_of_them,
);
