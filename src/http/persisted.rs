//! Persisted queries. By default, automatic persisted queries (APQ) as
//! Apollo's and urql's persisted-query links speak them, answered as
//! async-graphql's `ApolloPersistedQueries` extension answers them (same
//! messages), over its in-memory LRU cache of this instance: a hash alone
//! answers `PersistedQueryNotFound` until the client sends hash and query
//! together. With a trusted-documents manifest, only the operations listed
//! in it run. A step before execution (see `steps`), not a schema
//! extension: extensions cost every field resolve.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use async_graphql::extensions::apollo_persisted_queries::{CacheStorage, LruCacheStorage};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Request, ServerError, ServerResult};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::reply::server_error;
use crate::config::Settings;
use crate::error::ErrorCode;

/// The persisted-query mode of this instance.
#[derive(Clone)]
pub enum PersistedQueries {
    /// APQ: any client registers any document (per instance, in memory).
    Automatic(LruCacheStorage),
    /// Only the operator's documents run.
    Trusted(Arc<TrustedDocuments>),
}

impl PersistedQueries {
    /// APQ, or trusted documents when `settings.trusted_documents` names a
    /// manifest.
    ///
    /// # Errors
    /// The manifest cannot be read, is not a JSON map of SHA-256 hex →
    /// document, or holds a document that does not parse or whose key is
    /// not its hash.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        match &settings.trusted_documents {
            Some(path) => {
                let documents = TrustedDocuments::load(path)?;
                tracing::info!(path = %path.display(), documents = documents.len(), "trusted documents only");
                Ok(Self::Trusted(Arc::new(documents)))
            }
            None => Ok(Self::Automatic(LruCacheStorage::new(settings.limits.persisted_query_cache.max(1)))),
        }
    }

    /// Replaces a persisted-query hash by the document it stands for (the
    /// request then carries it parsed), registers a document sent with its
    /// hash (APQ), and refuses what trusted documents do not list.
    ///
    /// # Errors
    /// `PersistedQueryNotFound` for an unknown hash, a malformed
    /// `persistedQuery` extension or a hash that is not the query's, a
    /// document that does not parse (APQ registration) and, with trusted
    /// documents, an operation not in the list.
    pub(super) async fn resolve(&self, request: Request) -> ServerResult<Request> {
        match self {
            Self::Automatic(cache) => automatic(cache, request).await,
            Self::Trusted(documents) => trusted(documents, request),
        }
    }
}

/// APQ, as async-graphql's `ApolloPersistedQueries` answers it.
async fn automatic(cache: &LruCacheStorage, mut request: Request) -> ServerResult<Request> {
    let Some(value) = request.extensions.remove("persistedQuery") else { return Ok(request) };
    let persisted: PersistedQuery = async_graphql::from_value(value)
        .map_err(|_| ServerError::new("Invalid \"PersistedQuery\" extension configuration.", None))?;
    if persisted.version != 1 {
        return Err(ServerError::new(
            format!(
                "Only the \"PersistedQuery\" extension of version \"1\" is supported, and the current version is \"{}\".",
                persisted.version
            ),
            None,
        ));
    }
    if request.query.is_empty() {
        let Some(document) = cache.get(persisted.sha256_hash).await else {
            return Err(ServerError::new("PersistedQueryNotFound", None));
        };
        request.set_parsed_query(document);
        return Ok(request);
    }
    let hash = sha256_hex(&request.query);
    if persisted.sha256_hash != hash {
        return Err(ServerError::new("provided sha does not match query", None));
    }
    let document = async_graphql::parser::parse_query(&request.query)?;
    cache.set(hash, document.clone()).await;
    request.query = String::new();
    request.set_parsed_query(document);
    Ok(request)
}

/// The operations an operator allows, by SHA-256 (lowercase hex) of their
/// text, parsed once at start.
pub struct TrustedDocuments {
    documents: HashMap<String, ExecutableDocument>,
}

impl TrustedDocuments {
    /// Reads a manifest file (see [`TrustedDocuments::from_json`]).
    ///
    /// # Errors
    /// As [`PersistedQueries::from_settings`].
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the trusted documents {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("trusted documents {}", path.display()))
    }

    /// A manifest as persisted-document tools write it (GraphQL Codegen's
    /// `persisted-documents.json`, for one): `{ "<sha256 hex>": "<document>" }`.
    ///
    /// # Errors
    /// As [`PersistedQueries::from_settings`].
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let manifest: HashMap<String, String> =
            serde_json::from_str(text).context("expected a JSON object of SHA-256 hex → GraphQL document")?;
        let mut documents = HashMap::with_capacity(manifest.len());
        for (key, text) in manifest {
            let hash = sha256_hex(&text);
            anyhow::ensure!(key.eq_ignore_ascii_case(&hash), "{key}: the SHA-256 of its document is {hash}");
            let document =
                async_graphql::parser::parse_query(&text).with_context(|| format!("{key}: does not parse"))?;
            documents.insert(hash, document);
        }
        Ok(Self { documents })
    }

    pub fn len(&self) -> usize {
        self.documents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }
}

fn sha256_hex(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

/// The `persistedQuery` request extension.
#[derive(Deserialize)]
struct PersistedQuery {
    version: i32,
    #[serde(rename = "sha256Hash")]
    sha256_hash: String,
}

/// Lets a request through only when its document is trusted: a hash from
/// the list, or a query text whose hash is in it. Nothing is registered.
fn trusted(documents: &TrustedDocuments, mut request: Request) -> ServerResult<Request> {
    let claimed = match request.extensions.0.remove("persistedQuery") {
        Some(value) => match async_graphql::from_value::<PersistedQuery>(value) {
            Ok(pq) if pq.version == 1 => Some(pq.sha256_hash.to_ascii_lowercase()),
            _ => {
                return Err(server_error(
                    ErrorCode::BadRequest,
                    "the persistedQuery extension must be { version: 1, sha256Hash }",
                ));
            }
        },
        None => None,
    };
    let hash = match claimed {
        Some(hash) if request.query.is_empty() => {
            if !documents.documents.contains_key(&hash) {
                return Err(server_error(ErrorCode::PersistedQueryNotFound, "PersistedQueryNotFound"));
            }
            hash
        }
        Some(hash) => {
            if sha256_hex(&request.query) != hash {
                return Err(server_error(ErrorCode::BadRequest, "provided sha does not match query"));
            }
            hash
        }
        None => sha256_hex(&request.query),
    };
    let Some(document) = documents.documents.get(&hash) else {
        return Err(server_error(
            ErrorCode::PersistedQueryNotInList,
            "this server runs trusted documents only, and this operation is not one of them",
        ));
    };
    request.set_parsed_query(document.clone());
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::{TrustedDocuments, sha256_hex};

    #[test]
    fn manifests_map_hashes_to_documents() {
        let query = "query Me { me { staff { login } } }";
        let manifest = serde_json::json!({ sha256_hex(query): query }).to_string();
        let documents = TrustedDocuments::from_json(&manifest).unwrap();
        assert_eq!(documents.len(), 1);
        let upper = serde_json::json!({ sha256_hex(query).to_uppercase(): query }).to_string();
        assert_eq!(TrustedDocuments::from_json(&upper).unwrap().len(), 1);
    }

    #[test]
    fn manifests_with_wrong_hashes_or_broken_documents_are_refused() {
        let wrong = serde_json::json!({ sha256_hex("{ a }"): "{ b }" }).to_string();
        assert!(format!("{:#}", TrustedDocuments::from_json(&wrong).err().unwrap()).contains("SHA-256"));
        let broken = serde_json::json!({ sha256_hex("{ a "): "{ a " }).to_string();
        assert!(format!("{:#}", TrustedDocuments::from_json(&broken).err().unwrap()).contains("does not parse"));
        assert!(TrustedDocuments::from_json("[]").is_err());
    }
}
