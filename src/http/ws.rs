//! `/graphql/ws`: GraphQL over WebSocket with the `graphql-transport-ws`
//! protocol (the `graphql-ws` npm client's, and Apollo's).
//!
//! Our own handler rather than async-graphql's, for what it does not do:
//! the close codes of the protocol for a refused or revoked token (4403),
//! the limits on connections and subscriptions, and re-checking the
//! caller while the connection is open. The bearer token comes in the
//! `connection_init` payload (`Authorization`, `authorization` or
//! `token`); every move of the sign-in revision (any instance: a revoked
//! session, a deactivated member, a role or policy change) and the token's
//! expiry re-check it. A refusal then closes the socket with 4403; a
//! success hands the new principal to the streams already open.
//!
//! Close codes: 4400 bad message, 4401 `subscribe` before the
//! acknowledgement, 4403 token refused (at `connection_init` or later),
//! 4406 the subprotocol was not asked for, 4408 no `connection_init` in
//! time, 4409 a subscription id in use, 4429 a second `connection_init` or
//! too many connections of one staff member, 4413 a subscriber that fell
//! too far behind (`SLOW_CONSUMER`): its `error` message, sent first, carries
//! `resumeAfterSeq`, and the close reason repeats it, so that a client
//! reconnects and resumes with `afterSeq` and nothing is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::stream::{BoxStream, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::{HttpState, give_code};
use crate::auth::{self, Authenticated};
use crate::error::AppError;
use crate::graphql::loaders_for_request;
use crate::service::realtime::{LivePrincipal, Refresh};
use crate::state::AppState;

/// The subprotocol spoken.
pub(super) const PROTOCOL: &str = "graphql-transport-ws";

/// Messages waiting for the socket, all subscriptions of a connection
/// together: a slow socket holds the streams back, whose own buffers then
/// fill up (see `subscription_buffer`).
const OUT_BUFFER: usize = 64;

enum Outgoing {
    Text(String),
    Close(u16, String),
}

/// A close code and its reason.
type Close = (u16, String);

/// The close code for a slow consumer: the connection ends, and its
/// subscriptions resume from the position the error gave.
const SLOW_CONSUMER_CLOSE: u16 = 4413;

pub(super) async fn upgrade(State(state): State<HttpState>, ws: WebSocketUpgrade) -> Response {
    let ws = ws.protocols([PROTOCOL]);
    let speaks = ws.selected_protocol().is_some();
    ws.on_upgrade(move |socket| async move {
        if speaks {
            connection(state, socket).await;
        } else {
            let mut socket = socket;
            let frame = CloseFrame { code: 4406, reason: "Subprotocol not acceptable".into() };
            let _ = socket.send(Message::Close(Some(frame))).await;
        }
    })
}

async fn connection(state: HttpState, socket: WebSocket) {
    let (mut sink, mut incoming) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<Outgoing>(OUT_BUFFER);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            match message {
                Outgoing::Text(text) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Outgoing::Close(code, reason) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    break;
                }
            }
        }
        let _ = sink.close().await;
    });
    let mut ops = JoinSet::new();
    let close = session(&state, &mut incoming, &out, &mut ops).await;
    // The streams stop before the close frame goes out.
    ops.shutdown().await;
    if let Some((code, reason)) = close {
        tracing::debug!(code, %reason, "closing a subscription connection");
        let _ = out.send(Outgoing::Close(code, reason)).await;
    }
    drop(out);
    let _ = writer.await;
}

/// What the client sent next, as text.
enum Read {
    Text(String),
    /// Nothing to act on (a WebSocket-level ping or pong).
    Skip,
    Closed,
}

fn read(message: Option<Result<Message, axum::Error>>) -> Read {
    match message {
        Some(Ok(Message::Text(text))) => Read::Text(text.to_string()),
        Some(Ok(Message::Binary(bytes))) => match String::from_utf8(bytes.to_vec()) {
            Ok(text) => Read::Text(text),
            Err(_) => Read::Text(String::new()),
        },
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Read::Skip,
        Some(Ok(Message::Close(_)) | Err(_)) | None => Read::Closed,
    }
}

fn invalid() -> Close {
    (4400, "Invalid message received".to_owned())
}

fn forbidden(err: &AppError) -> Close {
    (4403, format!("Forbidden: {}", err.message()))
}

/// The bearer header from a `connection_init` payload.
fn bearer_of(payload: &Value) -> Option<String> {
    let token = ["Authorization", "authorization", "token"].iter().find_map(|k| payload.get(*k)?.as_str())?;
    let token = token.trim();
    Some(if token.starts_with("Bearer ") || token.starts_with("bearer ") {
        token.to_owned()
    } else {
        format!("Bearer {token}")
    })
}

async fn sign_in(app: &AppState, bearer: Option<&str>) -> Result<Authenticated, AppError> {
    auth::authenticate(&app.db, &app.auth, &app.authz, bearer).await
}

/// When to check the token again for its expiry (after the leeway the
/// verification allows).
fn expiry_check(app: &AppState, caller: &Authenticated) -> tokio::time::Instant {
    let far = tokio::time::Instant::now() + Duration::from_secs(24 * 3600);
    let Some(expires_at) = caller.sign_in.expires_at else { return far };
    let left = (expires_at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::Instant::now() + left + app.settings.token_leeway + Duration::from_secs(1)
}

async fn send(out: &mpsc::Sender<Outgoing>, message: Value) {
    let _ = out.send(Outgoing::Text(message.to_string())).await;
}

/// The protocol, until the connection ends: the close frame to send, if
/// any.
async fn session(
    state: &HttpState,
    incoming: &mut SplitStream<WebSocket>,
    out: &mpsc::Sender<Outgoing>,
    ops: &mut JoinSet<(String, Option<Close>)>,
) -> Option<Close> {
    let app = &state.app;
    let limits = &app.settings.limits;
    let init_deadline = tokio::time::sleep(limits.ws_init_timeout);
    tokio::pin!(init_deadline);
    let (bearer, caller, mut revisions, revision) = loop {
        let message = tokio::select! {
            () = &mut init_deadline => return Some((4408, "Connection initialisation timeout".to_owned())),
            message = incoming.next() => message,
        };
        let text = match read(message) {
            Read::Text(text) => text,
            Read::Skip => continue,
            Read::Closed => return None,
        };
        let Ok(message) = serde_json::from_str::<Value>(&text) else { return Some(invalid()) };
        match message["type"].as_str() {
            Some("connection_init") => {
                // The revision first: the caller signed in below is current
                // at it at least.
                let Ok(mut revisions) = app.realtime.revisions().await else {
                    return Some((1011, "Internal error".to_owned()));
                };
                let revision = *revisions.borrow_and_update();
                let bearer = bearer_of(&message["payload"]);
                match sign_in(app, bearer.as_deref()).await {
                    Ok(caller) => break (bearer, caller, revisions, revision),
                    Err(err) => return Some(forbidden(&err)),
                }
            }
            Some("ping") => send(out, json!({ "type": "pong" })).await,
            Some("pong") => {}
            Some("subscribe") => return Some((4401, "Unauthorized".to_owned())),
            _ => return Some(invalid()),
        }
    };
    let _slot = match app.realtime.connect(caller.principal.staff.id, limits.max_ws_connections_per_staff) {
        Ok(slot) => slot,
        Err(err) => return Some((4429, err.message())),
    };
    let refresh: Refresh = {
        let (app, bearer) = (app.clone(), bearer.clone());
        Arc::new(move || {
            let (app, bearer) = (app.clone(), bearer.clone());
            Box::pin(async move { Ok(sign_in(&app, bearer.as_deref()).await?.principal) })
        })
    };
    let live = LivePrincipal::renewable(caller.principal.clone(), revision, refresh);
    let mut caller = caller;
    let expiry = tokio::time::sleep_until(expiry_check(app, &caller));
    tokio::pin!(expiry);
    send(out, json!({ "type": "connection_ack" })).await;

    let mut running: HashMap<String, AbortHandle> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            Some(done) = ops.join_next(), if !ops.is_empty() => {
                if let Ok((id, close)) = done {
                    running.remove(&id);
                    if close.is_some() {
                        return close;
                    }
                }
            }
            changed = revisions.changed() => {
                if changed.is_err() {
                    return Some((1011, "Internal error".to_owned()));
                }
                let revision = *revisions.borrow_and_update();
                match sign_in(app, bearer.as_deref()).await {
                    Ok(now) => {
                        live.replace(now.principal.clone(), revision);
                        caller = now;
                    }
                    Err(err) => return Some(forbidden(&err)),
                }
            }
            () = &mut expiry => {
                let revision = *revisions.borrow();
                match sign_in(app, bearer.as_deref()).await {
                    Ok(now) => {
                        live.replace(now.principal.clone(), revision);
                        expiry.as_mut().reset(expiry_check(app, &now));
                        caller = now;
                    }
                    Err(err) => return Some(forbidden(&err)),
                }
            }
            message = incoming.next() => {
                let text = match read(message) {
                    Read::Text(text) => text,
                    Read::Skip => continue,
                    Read::Closed => return None,
                };
                let Ok(message) = serde_json::from_str::<Value>(&text) else { return Some(invalid()) };
                match message["type"].as_str() {
                    Some("subscribe") => {
                        let Some(id) = message["id"].as_str().map(str::to_owned) else { return Some(invalid()) };
                        let Ok(request) = serde_json::from_value::<async_graphql::Request>(message["payload"].clone())
                        else {
                            return Some(invalid());
                        };
                        if running.contains_key(&id) {
                            return Some((4409, format!("Subscriber for {id} already exists")));
                        }
                        if running.len() >= limits.max_subscriptions_per_connection {
                            let err = AppError::LimitExceeded(format!(
                                "too many subscriptions on this connection (at most {})",
                                limits.max_subscriptions_per_connection
                            ));
                            let err: async_graphql::Error = err.into();
                            let payload = json!([{ "message": err.message, "extensions": err.extensions }]);
                            send(out, json!({ "type": "error", "id": id, "payload": payload })).await;
                            continue;
                        }
                        let loaders = loaders_for_request(app.db.clone(), caller.principal.clone());
                        let request = request
                            .data(caller.principal.clone())
                            .data(caller.sign_in.clone())
                            .data(loaders)
                            .data(live.clone());
                        let responses = super::steps::execute_stream(
                            app.clone(),
                            state.schema.clone(),
                            caller.principal.clone(),
                            request,
                        );
                        let handle = ops.spawn(operation(responses, id.clone(), out.clone()));
                        running.insert(id, handle);
                    }
                    Some("complete") => {
                        if let Some(handle) = message["id"].as_str().and_then(|id| running.remove(id)) {
                            handle.abort();
                        }
                    }
                    Some("ping") => send(out, json!({ "type": "pong" })).await,
                    Some("pong") => {}
                    Some("connection_init") => return Some((4429, "Too many initialisation requests".to_owned())),
                    _ => return Some(invalid()),
                }
            }
        }
    }
}

/// Runs one operation (its responses, after the steps before execution),
/// sending its results as `next` and its end as
/// `complete`. A result without data (a refused request, or an error that
/// ends a stream: `RESYNC_REQUIRED`, `SLOW_CONSUMER`) is sent as `error`,
/// which ends the operation. Returns the operation's id, and the close
/// frame the connection ends with when the stream ended with
/// `SLOW_CONSUMER` (the consumer is disconnected, not only that stream).
async fn operation(
    mut responses: BoxStream<'static, async_graphql::Response>,
    id: String,
    out: mpsc::Sender<Outgoing>,
) -> (String, Option<Close>) {
    while let Some(mut response) = responses.next().await {
        for error in &mut response.errors {
            give_code(error);
        }
        let message = if response.data == async_graphql::Value::Null && !response.errors.is_empty() {
            let payload = serde_json::to_value(&response.errors).unwrap_or_else(|_| json!([]));
            let close = slow_consumer_close(&payload);
            let message = json!({ "type": "error", "id": id, "payload": payload });
            let _ = out.send(Outgoing::Text(message.to_string())).await;
            return (id, close);
        } else {
            json!({ "type": "next", "id": id, "payload": response })
        };
        if out.send(Outgoing::Text(message.to_string())).await.is_err() {
            return (id, None);
        }
    }
    send(&out, json!({ "type": "complete", "id": id })).await;
    (id, None)
}

/// The close frame for errors that end a stream with `SLOW_CONSUMER`: code
/// 4413, and the position to resume from in the reason (the `error`
/// message carries it too, as `extensions.resumeAfterSeq`).
fn slow_consumer_close(errors: &Value) -> Option<Close> {
    let slow = errors.as_array()?.iter().find(|e| e["extensions"]["code"] == "SLOW_CONSUMER")?;
    let reason = match slow["extensions"]["resumeAfterSeq"].as_i64() {
        Some(seq) => format!("SLOW_CONSUMER: resume with afterSeq {seq}"),
        None => "SLOW_CONSUMER: subscribe again".to_owned(),
    };
    Some((SLOW_CONSUMER_CLOSE, reason))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{bearer_of, slow_consumer_close};

    #[test]
    fn a_slow_consumer_is_closed_with_its_resume_position() {
        let errors = json!([{ "message": "behind", "extensions": { "code": "SLOW_CONSUMER", "resumeAfterSeq": 42 } }]);
        assert_eq!(slow_consumer_close(&errors), Some((4413, "SLOW_CONSUMER: resume with afterSeq 42".to_owned())));
        let other = json!([{ "message": "gone", "extensions": { "code": "RESYNC_REQUIRED" } }]);
        assert_eq!(slow_consumer_close(&other), None);
    }

    #[test]
    fn the_token_comes_from_any_of_the_three_keys_with_or_without_its_scheme() {
        assert_eq!(bearer_of(&json!({ "Authorization": "Bearer abc" })).as_deref(), Some("Bearer abc"));
        assert_eq!(bearer_of(&json!({ "authorization": "abc" })).as_deref(), Some("Bearer abc"));
        assert_eq!(bearer_of(&json!({ "token": " abc " })).as_deref(), Some("Bearer abc"));
        assert_eq!(bearer_of(&json!({})), None);
        assert_eq!(bearer_of(&json!(null)), None);
    }
}
