//! Customer data: identities by source (`customerByIdentity`,
//! `addCustomerIdentity`, `removeCustomerIdentity`), CSV import
//! (`importCustomers`) and merging two records of one person
//! (`mergeCustomers`).

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use base64::Engine as _;
use entity::customer_identity;

use super::customer::Customer;
use super::governance::ChangeRequest;
use super::jobs::Job;
use super::{DateTime, env};
use crate::authz::FieldAccess;
use crate::domain::{CustomerId, Identity, IdentitySource as Source, OrgUnitId, Reason, TagId, parse_ids};
use crate::error::AppError;
use crate::service::identity;
use crate::service::import::{self, Encoding, ImportRequest};
use crate::service::merge::{self, MergeOutcome, MergeRequest};

/// Where an identity comes from.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum IdentitySource {
    /// A WeCom `external_userid` (one per corp: see `corpId`).
    Wecom,
    /// A WeChat `unionid`.
    Unionid,
    /// A mobile number.
    Phone,
    /// The order system's customer id.
    OrderSystem,
    /// Another system's id (`provider` names it); read only.
    Other,
}

impl IdentitySource {
    fn parse(self, field: &str) -> Result<Source, AppError> {
        match self {
            Self::Wecom => Ok(Source::Wecom),
            Self::Unionid => Ok(Source::Unionid),
            Self::Phone => Ok(Source::Phone),
            Self::OrderSystem => Ok(Source::OrderSystem),
            Self::Other => Err(AppError::validation(field, "OTHER identities are read only")),
        }
    }
}

/// An identity of a customer in another system.
#[derive(SimpleObject)]
pub struct CustomerIdentity {
    /// The source.
    source: IdentitySource,
    /// The WeCom corp of a `WECOM` identity (`null`: the deployment's own corp).
    corp_id: Option<String>,
    /// As stored: `wecom`, `wecom:<corp>`, `unionid`, `phone`, `order_system`, or another system's name.
    provider: String,
    /// The customer's id there (a phone shows as the phone field does).
    value: String,
    /// When the identity was recorded.
    created_at: DateTime,
}

impl CustomerIdentity {
    pub(super) fn of(row: customer_identity::Model, shown: String) -> Self {
        let (source, corp_id) = match Identity::source_of(&row.provider) {
            Some((Source::Wecom, corp)) => (IdentitySource::Wecom, corp),
            Some((Source::Unionid, _)) => (IdentitySource::Unionid, None),
            Some((Source::Phone, _)) => (IdentitySource::Phone, None),
            Some((Source::OrderSystem, _)) => (IdentitySource::OrderSystem, None),
            None => (IdentitySource::Other, None),
        };
        Self { source, corp_id, provider: row.provider, value: shown, created_at: row.created_at.into() }
    }
}

/// An identity to add or remove.
#[derive(InputObject)]
pub struct IdentityInput {
    /// The source (not `OTHER`).
    source: IdentitySource,
    /// A `WECOM` identity's corp (`ww…`); leave out for the deployment's own corp.
    corp_id: Option<String>,
    /// The customer's id there (a phone number for `PHONE`).
    value: String,
}

fn parse_identity(source: IdentitySource, corp: Option<&str>, value: &str, field: &str) -> Result<Identity> {
    Ok(Identity::parse(source.parse(field)?, corp, value, field)?)
}

#[derive(Default)]
pub struct CustomerDataQuery;

#[Object]
impl CustomerDataQuery {
    /// The customer holding an identity, if the caller may read it;
    /// `NOT_FOUND` otherwise (unknown and out of scope look the same). A
    /// `PHONE` identity is found only where the caller sees the customer's
    /// phone (at least masked).
    async fn customer_by_identity(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The source.")] source: IdentitySource,
        #[graphql(desc = "The customer's id there.")] value: String,
        #[graphql(desc = "A `WECOM` identity's corp.")] corp_id: Option<String>,
    ) -> Result<Customer> {
        let env = env(ctx);
        let id = parse_identity(source, corp_id.as_deref(), &value, "value")?;
        let found = identity::find_by_identity(env.db, env.principal, &id).await?;
        if id.source == Source::Phone {
            let rule = crate::authz::FieldRule::by_api("phone");
            let access = rule.map_or(FieldAccess::Hidden, |r| env.principal.field_access(r.field, found.org_unit_id));
            if access == FieldAccess::Hidden {
                return Err(AppError::not_found("customer", &id).into());
            }
        }
        Ok(Customer(found))
    }
}

/// The CSV's encoding.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Default)]
pub enum CsvEncoding {
    /// UTF-8 (a byte-order mark is allowed).
    Utf8,
    /// GBK, as Excel in China saves CSV.
    Gbk,
    /// UTF-8 if the bytes are valid UTF-8, else GBK.
    #[default]
    Auto,
}

/// A CSV file of customers to import (exactly one of `csv` and `csvBase64`).
#[derive(InputObject)]
pub struct ImportCustomersInput {
    /// The file as text (GraphQL strings are UTF-8: send a GBK file as `csvBase64`).
    csv: Option<String>,
    /// The file's bytes, base64-encoded (any encoding).
    csv_base64: Option<String>,
    /// How the bytes are text.
    #[graphql(default)]
    encoding: CsvEncoding,
    /// Check everything, write nothing: the row report only.
    #[graphql(default)]
    dry_run: bool,
    /// The org unit new customers go to; customers updated must be in its subtree.
    org_unit_id: ID,
    /// Tags to put on every imported customer (source `IMPORT`).
    #[graphql(default)]
    tag_ids: Vec<ID>,
}

/// A problem with one row of the file (line 1: the header).
#[derive(SimpleObject)]
pub struct ImportRowIssue {
    /// The line in the file (the header is line 1).
    line: i64,
    /// The column at fault, as the file's header names it.
    column: Option<String>,
    /// `MISSING_VALUE`, `INVALID_PHONE`, `INVALID_DATE`, `INVALID_VALUE`,
    /// `INVALID_ID`, `MISSING_ID`, `DUPLICATE_ID`, `IDENTITY_CONFLICT`,
    /// `IDENTITY_TAKEN`, `BAD_ROW`, `UNKNOWN_COLUMN`, `DUPLICATE_COLUMN`.
    code: String,
    /// What is wrong, for people.
    message: String,
}

/// What an import did (or, dry, would do). A large file runs as a job:
/// then `job` follows it and the counts are the job's when it ends.
#[derive(SimpleObject)]
pub struct ImportCustomersPayload {
    /// Nothing was written.
    dry_run: bool,
    /// SHA-256 of the file's bytes (hex), as the audit row keeps it.
    sha256: String,
    /// The encoding the file was read in.
    encoding: CsvEncoding,
    /// Data rows in the file.
    rows: i64,
    /// Customers created (would be, in a dry run).
    created: i64,
    /// Customers updated.
    updated: i64,
    /// Rows whose customer already was exactly so.
    unchanged: i64,
    /// Rows left out for their issues.
    skipped: i64,
    /// Tags put on.
    tags_added: i64,
    /// The rows' issues, by line (the first 1,000).
    issues: Vec<ImportRowIssue>,
    /// The job running a large import.
    job: Option<Job>,
}

/// What merging did: the kept customer, or the change request filed.
#[derive(SimpleObject)]
pub struct MergeCustomersPayload {
    /// The kept customer, after the merge (`null` when a request was filed).
    customer: Option<Customer>,
    /// The request filed when the caller may not merge directly.
    change_request: Option<ChangeRequest>,
    /// Tags that moved to the kept customer.
    tags_moved: Vec<ID>,
    /// Tags of the removed customer the kept one held already (the same
    /// tag, or another of the same exclusive group: the kept one's wins).
    tags_dropped: Vec<ID>,
    /// Customer events moved.
    events_moved: i64,
    /// Identities moved.
    identities_moved: i64,
}

#[derive(Default)]
pub struct CustomerDataMutation;

#[Object]
impl CustomerDataMutation {
    /// Gives a customer an identity; `CONFLICT` when it belongs to a customer already.
    async fn add_customer_identity(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The customer.")] customer_id: ID,
        #[graphql(desc = "The identity.")] identity: IdentityInput,
    ) -> Result<Customer> {
        let env = env(ctx);
        let id = CustomerId::parse(&customer_id, "customerId")?;
        let parsed = parse_identity(identity.source, identity.corp_id.as_deref(), &identity.value, "identity")?;
        Ok(Customer(identity::add_identity(env.db, env.principal, id, &parsed).await?))
    }

    /// Takes an identity off a customer.
    async fn remove_customer_identity(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The customer.")] customer_id: ID,
        #[graphql(desc = "The identity.")] identity: IdentityInput,
    ) -> Result<Customer> {
        let env = env(ctx);
        let id = CustomerId::parse(&customer_id, "customerId")?;
        let parsed = parse_identity(identity.source, identity.corp_id.as_deref(), &identity.value, "identity")?;
        Ok(Customer(identity::remove_identity(env.db, env.principal, id, &parsed).await?))
    }

    /// Imports a CSV file of customers (UTF-8 or GBK), idempotent by
    /// external id: a dry run answers the row report and writes nothing; a
    /// real run imports the good rows (a large file as a job).
    async fn import_customers(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The file and where it goes.")] input: ImportCustomersInput,
    ) -> Result<ImportCustomersPayload> {
        let env = env(ctx);
        let bytes = match (input.csv, input.csv_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| AppError::validation("csvBase64", "is not base64"))?,
            _ => return Err(AppError::validation("csv", "give exactly one of csv and csvBase64").into()),
        };
        let req = ImportRequest {
            bytes,
            encoding: match input.encoding {
                CsvEncoding::Utf8 => Encoding::Utf8,
                CsvEncoding::Gbk => Encoding::Gbk,
                CsvEncoding::Auto => Encoding::Auto,
            },
            dry_run: input.dry_run,
            org_unit: OrgUnitId::parse(&input.org_unit_id, "orgUnitId")?,
            tags: parse_ids(&input.tag_ids, "tagIds", TagId::parse)?,
        };
        let report = import::import_customers(env.db, env.principal, env.limits, req).await?;
        if !report.dry_run && report.job.is_none() {
            super::tag::caught_up(ctx).await;
        }
        Ok(ImportCustomersPayload {
            dry_run: report.dry_run,
            sha256: report.sha256,
            encoding: if report.encoding == "GBK" { CsvEncoding::Gbk } else { CsvEncoding::Utf8 },
            rows: report.rows as i64,
            created: report.created as i64,
            updated: report.updated as i64,
            unchanged: report.unchanged as i64,
            skipped: report.skipped as i64,
            tags_added: report.tags_added as i64,
            issues: report
                .issues
                .into_iter()
                .map(|i| ImportRowIssue { line: i.line as i64, column: i.column, code: i.code, message: i.message })
                .collect(),
            job: report.job.map(Job),
        })
    }

    /// Merges `remove` into `keep`: tags (the kept customer's win in an
    /// exclusive group), history, events, identities and segment snapshots
    /// move; `remove` becomes a tombstone whose id reads as `keep`. Needs
    /// `customer:update` at both; without `customer:merge` at both, files a
    /// change request instead.
    async fn merge_customers(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The customer to keep.")] keep: ID,
        #[graphql(desc = "The customer merged into it.")] remove: ID,
        #[graphql(desc = "Why (kept with the merge record and its request).")] reason: Option<String>,
    ) -> Result<MergeCustomersPayload> {
        let env = env(ctx);
        let req = MergeRequest {
            keep: CustomerId::parse(&keep, "keep")?,
            remove: CustomerId::parse(&remove, "remove")?,
            reason: Reason::parse(reason.as_deref(), "reason")?,
        };
        match merge::merge_customers(env.db, env.principal, req).await? {
            MergeOutcome::Merged(m) => {
                super::tag::caught_up(ctx).await;
                Ok(MergeCustomersPayload {
                    customer: Some(Customer(m.kept)),
                    change_request: None,
                    tags_moved: m.tags_moved.into_iter().map(|t| TagId(t).into()).collect(),
                    tags_dropped: m.tags_dropped.into_iter().map(|t| TagId(t).into()).collect(),
                    events_moved: m.events_moved as i64,
                    identities_moved: m.identities_moved as i64,
                })
            }
            MergeOutcome::Requested(request) => Ok(MergeCustomersPayload {
                customer: None,
                change_request: Some(ChangeRequest(request)),
                tags_moved: Vec::new(),
                tags_dropped: Vec::new(),
                events_moved: 0,
                identities_moved: 0,
            }),
        }
    }
}
