//! WeCom (企业微信) OAuth sign-in, as WeCom documents it:
//!
//! 1. `GET {base}/cgi-bin/gettoken?corpid=…&corpsecret=…` →
//!    `{errcode, errmsg, access_token, expires_in}`; the access token is
//!    cached until shortly before it expires.
//! 2. `GET {base}/cgi-bin/auth/getuserinfo?access_token=…&code=…` →
//!    `{errcode, errmsg, userid, user_ticket}` for a member of the corp,
//!    or `{openid | external_userid}` for anybody else (refused here).

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::WeComSettings;
use crate::error::{AppError, AppResult};

/// WeCom's codes for an access token that is invalid or has expired: the
/// cached token is dropped and the call made once more.
const STALE_TOKEN_CODES: [i64; 3] = [40001, 40014, 42001];
/// A cached access token is renewed this long before WeCom says it ends.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// A client of one corp's WeCom API.
pub struct WeComClient {
    settings: WeComSettings,
    http: reqwest::Client,
    token: Mutex<Option<(String, Instant)>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct UserInfoResponse {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    userid: Option<String>,
    openid: Option<String>,
    external_userid: Option<String>,
}

impl WeComClient {
    pub fn new(settings: WeComSettings, http: reqwest::Client) -> Self {
        Self { settings, http, token: Mutex::new(None) }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.base_url.trim_end_matches('/'))
    }

    /// Exchanges an OAuth code for the WeCom user id of a corp member.
    ///
    /// # Errors
    /// [`AppError::Unauthenticated`] when WeCom refuses the code or the
    /// person is not a member of the corp; [`AppError::Internal`] when WeCom
    /// cannot be reached or refuses tagbase's own credentials.
    #[tracing::instrument(skip_all)]
    pub async fn user_id(&self, code: &str) -> AppResult<String> {
        let code = code.trim();
        if code.is_empty() || code.len() > 512 {
            return Err(AppError::validation("code", "a WeCom OAuth code is 1 to 512 characters"));
        }
        for attempt in 0..2 {
            let token = self.access_token().await?;
            let info: UserInfoResponse = self
                .http
                .get(self.url("/cgi-bin/auth/getuserinfo"))
                .query(&[("access_token", token.as_str()), ("code", code)])
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| AppError::internal(anyhow::Error::new(e).context("WeCom getuserinfo")))?
                .json()
                .await
                .map_err(|e| AppError::internal(anyhow::Error::new(e).context("WeCom getuserinfo body")))?;
            if STALE_TOKEN_CODES.contains(&info.errcode) && attempt == 0 {
                tracing::info!(errcode = info.errcode, "WeCom access token refused; renewing it");
                *self.token.lock().await = None;
                continue;
            }
            if info.errcode != 0 {
                tracing::info!(errcode = info.errcode, errmsg = %info.errmsg, "WeCom refused the sign-in code");
                return Err(AppError::Unauthenticated(format!("WeCom refused the code (errcode {})", info.errcode)));
            }
            return match info.userid.filter(|u| !u.is_empty()) {
                Some(userid) => Ok(userid),
                None => {
                    let outsider = info.openid.is_some() || info.external_userid.is_some();
                    tracing::info!(outsider, "WeCom sign-in by a non-member refused");
                    Err(AppError::Unauthenticated("only members of the corp may sign in".to_owned()))
                }
            };
        }
        Err(AppError::internal(anyhow::anyhow!("WeCom keeps refusing fresh access tokens")))
    }

    /// The corp's access token, from the cache while it is valid.
    async fn access_token(&self) -> AppResult<String> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let response: TokenResponse = self
            .http
            .get(self.url("/cgi-bin/gettoken"))
            .query(&[("corpid", self.settings.corp_id.as_str()), ("corpsecret", self.settings.corp_secret.as_str())])
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| AppError::internal(anyhow::Error::new(e).context("WeCom gettoken")))?
            .json()
            .await
            .map_err(|e| AppError::internal(anyhow::Error::new(e).context("WeCom gettoken body")))?;
        let (0, Some(token)) = (response.errcode, response.access_token) else {
            return Err(AppError::internal(anyhow::anyhow!(
                "WeCom gettoken refused: errcode {}, {}",
                response.errcode,
                response.errmsg
            )));
        };
        let lifetime = Duration::from_secs(response.expires_in.unwrap_or(7200)).saturating_sub(EXPIRY_MARGIN);
        *cached = Some((token.clone(), Instant::now() + lifetime));
        Ok(token)
    }
}
