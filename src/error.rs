//! The one error type of tagbase and its stable codes. Which broken
//! database constraint becomes which of them is mapped in one place,
//! `store::constraint`.
//!
//! Services return [`AppError`]; the API maps it to a GraphQL error with
//! `extensions.code` in one place. Internal errors are logged with their
//! whole cause chain and shown to the caller as a generic message that
//! carries the request id, never SQL or a stack trace.

use std::fmt;

use async_graphql::ErrorExtensions;

use crate::request_id;

pub type AppResult<T> = Result<T, AppError>;

/// Stable error codes, as clients see them in `extensions.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthenticated,
    Forbidden,
    ForbiddenField,
    NotFound,
    Validation,
    Conflict,
    Locked,
    LimitExceeded,
    /// The HTTP request itself is malformed (not JSON, not an object, a
    /// bad batch, an unsupported content type, an empty query).
    BadRequest,
    /// A mutation sent with GET (mutations go by POST).
    MethodNotAllowed,
    /// An automatic persisted query whose hash this instance does not know:
    /// the client sends the hash again with the query.
    PersistedQueryNotFound,
    /// With trusted documents on, an operation that is not in the list.
    PersistedQueryNotInList,
    /// The request ran past the request timeout and was cancelled.
    Timeout,
    /// A subscription asked to resume from a place the log no longer
    /// replays (or never had): the client reloads what it shows, then
    /// subscribes from the present.
    ResyncRequired,
    /// A subscriber fell too far behind its stream and was cut off; it
    /// resumes from the position the error carries.
    SlowConsumer,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::ForbiddenField => "FORBIDDEN_FIELD",
            Self::NotFound => "NOT_FOUND",
            Self::Validation => "VALIDATION",
            Self::Conflict => "CONFLICT",
            Self::Locked => "LOCKED",
            Self::LimitExceeded => "LIMIT_EXCEEDED",
            Self::BadRequest => "BAD_REQUEST",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            Self::PersistedQueryNotInList => "PERSISTED_QUERY_NOT_IN_LIST",
            Self::Timeout => "TIMEOUT",
            Self::ResyncRequired => "RESYNC_REQUIRED",
            Self::SlowConsumer => "SLOW_CONSUMER",
            Self::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every service function.
///
/// Deliberately not `Display`: async-graphql converts any `Display` value
/// into an error *without* a code, so leaving `Display` out makes the
/// compiler route every `?` in a resolver through our conversion below.
#[derive(Debug)]
pub enum AppError {
    Unauthenticated(String),
    Forbidden(String),
    ForbiddenField {
        field: String,
    },
    /// Also used for objects outside the caller's scope, so that the two
    /// cannot be told apart.
    NotFound {
        kind: &'static str,
        id: String,
    },
    Validation {
        field: String,
        message: String,
    },
    Conflict(String),
    /// A modification lock (修改锁) held by somebody else covers the change.
    Locked(LockInfo),
    LimitExceeded(String),
    /// See [`ErrorCode::ResyncRequired`].
    ResyncRequired(String),
    /// See [`ErrorCode::SlowConsumer`]: `resume_after_seq` is the last
    /// sequence number the stream got past (delivered or not for the
    /// caller), to pass as `afterSeq`.
    SlowConsumer {
        resume_after_seq: Option<i64>,
    },
    Internal(anyhow::Error),
}

/// Who holds the lock that refused a change, why, and until when.
#[derive(Debug, Clone)]
pub struct LockInfo {
    /// The lock's global id, as clients pass it to `unlockTagGroup`.
    pub lock_id: String,
    pub group: String,
    pub holder: String,
    pub reason: String,
    pub until: chrono::DateTime<chrono::Utc>,
}

impl AppError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::ForbiddenField { .. } => ErrorCode::ForbiddenField,
            Self::NotFound { .. } => ErrorCode::NotFound,
            Self::Validation { .. } => ErrorCode::Validation,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Locked(_) => ErrorCode::Locked,
            Self::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Self::ResyncRequired(_) => ErrorCode::ResyncRequired,
            Self::SlowConsumer { .. } => ErrorCode::SlowConsumer,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation { field: field.into(), message: message.into() }
    }

    pub fn not_found(kind: &'static str, id: impl fmt::Display) -> Self {
        Self::NotFound { kind, id: id.to_string() }
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    /// The same validation error, for the argument the caller named
    /// `field` (other errors are kept as they are).
    #[must_use]
    pub fn in_field(self, field: &str) -> Self {
        match self {
            Self::Validation { message, .. } => Self::validation(field, message),
            other => other,
        }
    }

    /// The message for a caller, internal errors aside.
    pub fn message(&self) -> String {
        match self {
            Self::Unauthenticated(m)
            | Self::Forbidden(m)
            | Self::Conflict(m)
            | Self::LimitExceeded(m)
            | Self::ResyncRequired(m) => m.clone(),
            Self::SlowConsumer { resume_after_seq: Some(seq) } => {
                format!("the subscriber fell too far behind and was cut off; resume after sequence number {seq}")
            }
            Self::SlowConsumer { resume_after_seq: None } => {
                "the subscriber fell too far behind and was cut off; subscribe again".to_owned()
            }
            Self::ForbiddenField { field } => format!("you may not read {field}"),
            Self::NotFound { kind, id } => format!("{kind} {id} not found"),
            Self::Validation { field, message } => format!("{field}: {message}"),
            Self::Locked(lock) => format!(
                "tag group {:?} is locked by {} until {} ({})",
                lock.group,
                lock.holder,
                lock.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                lock.reason
            ),
            Self::Internal(_) => "internal error".to_owned(),
        }
    }

    /// The message the caller sees. Internal errors are logged here, with
    /// their cause chain, and replaced by a generic text.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(err) => {
                let request_id = request_id::current().unwrap_or_else(|| "-".to_owned());
                tracing::error!(request_id = %request_id, error = format!("{err:#}"), "internal error");
                format!("internal error (request id {request_id})")
            }
            other => other.message(),
        }
    }
}

impl From<sea_orm::DbErr> for AppError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Internal(err.into())
    }
}

impl From<sea_orm::TransactionError<AppError>> for AppError {
    fn from(err: sea_orm::TransactionError<AppError>) -> Self {
        match err {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(app) => app,
        }
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(err: AppError) -> Self {
        let code = err.code();
        let field = match &err {
            AppError::Validation { field, .. } | AppError::ForbiddenField { field } => Some(field.clone()),
            _ => None,
        };
        let lock = match &err {
            AppError::Locked(lock) => Some(lock.clone()),
            _ => None,
        };
        let resume_after_seq = match &err {
            AppError::SlowConsumer { resume_after_seq } => *resume_after_seq,
            _ => None,
        };
        async_graphql::Error::new(err.public_message()).extend_with(|_, ext| {
            ext.set("code", code.as_str());
            if let Some(lock) = &lock {
                ext.set("lockId", lock.lock_id.as_str());
                ext.set("holder", lock.holder.as_str());
                ext.set("reason", lock.reason.as_str());
                ext.set("until", lock.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            }
            if let Some(field) = &field {
                ext.set("field", field.as_str());
            }
            if let Some(seq) = resume_after_seq {
                ext.set("resumeAfterSeq", seq);
            }
            if let Some(id) = request_id::current() {
                ext.set("requestId", id);
            }
        })
    }
}

/// True when a database error is a unique-constraint violation, on SQLite
/// and PostgreSQL alike. New code maps constraints through
/// `store::constraint::on_constraint` instead.
pub fn is_unique_violation(err: &sea_orm::DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

/// True when a write broke a foreign key (a row it refers to, or that
/// refers to it, changed meanwhile).
pub fn is_foreign_key_violation(err: &sea_orm::DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_)))
}
