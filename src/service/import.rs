//! Customer import (客户导入): a CSV file, UTF-8 or GBK (what Excel in
//! China writes), into an org unit, idempotent by external id
//! (docs/customer-data.md).
//!
//! - **Parse once.** The file is decoded, its header mapped to known
//!   columns, and every row checked into an [`ImportRow`] or into
//!   [`RowIssue`]s (line, column, code, message). A dry run stops after
//!   also checking the rows against the database, and writes nothing.
//! - **Idempotent by external id.** A row names the customer by its
//!   identities (unionid, WeCom `external_userid`, order-system id): when
//!   they belong to a customer, the row updates it (its non-empty cells
//!   win; identical values change nothing), otherwise the row creates one.
//!   Running a file twice creates nobody the second time.
//! - **Set-based.** A batch is a handful of statements whatever its size:
//!   on PostgreSQL `unnest` arrays for the identity lookup, the inserts and
//!   the updates; on SQLite multi-row statements.
//! - **Large files run as a job** (`IMPORT_CUSTOMERS`, src/service/jobs.rs):
//!   the checked rows wait in `import_row`, and each batch's transaction
//!   writes its customers and the job's checkpoint together.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{NaiveDate, Utc};
use entity::{
    customer, customer_change, customer_identity,
    enums::{Gender, JobStatus},
    import_row, job,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    FromQueryResult, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::audit::{self, AuditEntry};
use super::tagging;
use crate::authz::{Action, Principal};
use crate::config::Limits;
use crate::domain::{CustomerId, CustomerName, Identity, IdentitySource, OptionalText, OrgUnitId, Phone, TagId};
use crate::error::{AppError, AppResult};
use crate::store::CHUNK;
use crate::store::event_log::pg_array;

/// The kind of an import job.
pub const IMPORT_CUSTOMERS: &str = "IMPORT_CUSTOMERS";
/// Issues a report lists (the counts stay exact beyond them).
pub const MAX_ISSUES: usize = 1_000;

/// How the file's bytes are text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    Utf8,
    Gbk,
    /// UTF-8 when the bytes are valid UTF-8 (or start with its BOM), else GBK.
    #[default]
    Auto,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Utf8 => "UTF8",
            Self::Gbk => "GBK",
            Self::Auto => "AUTO",
        }
    }
}

/// An import to run or to try.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    /// The file as uploaded.
    pub bytes: Vec<u8>,
    pub encoding: Encoding,
    pub dry_run: bool,
    /// Where new customers go; updated ones must be in its subtree.
    pub org_unit: OrgUnitId,
    /// Tags put on every imported customer (source `IMPORT`).
    pub tags: Vec<TagId>,
}

/// A problem with one row (or, at line 1, with the header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowIssue {
    /// The line in the file (the header is line 1).
    pub line: u64,
    /// The column's header as written in the file, when one column is at fault.
    pub column: Option<String>,
    /// `MISSING_VALUE`, `INVALID_PHONE`, `INVALID_DATE`, `INVALID_VALUE`,
    /// `INVALID_ID`, `MISSING_ID`, `DUPLICATE_ID`, `IDENTITY_CONFLICT`,
    /// `IDENTITY_TAKEN`, `UNKNOWN_COLUMN`, `BAD_ROW`.
    pub code: String,
    pub message: String,
}

impl RowIssue {
    fn new(line: u64, column: Option<&str>, code: &str, message: impl Into<String>) -> Self {
        Self { line, column: column.map(str::to_owned), code: code.to_owned(), message: message.into() }
    }
}

/// What an import did (or, dry, would do).
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub dry_run: bool,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// The encoding the file was read in (`UTF8` or `GBK`).
    pub encoding: &'static str,
    /// Data rows in the file.
    pub rows: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Rows left out for their issues.
    pub skipped: u64,
    /// Tags put on.
    pub tags_added: u64,
    /// The first [`MAX_ISSUES`], by line.
    pub issues: Vec<RowIssue>,
    /// Set when the file was large enough to run as a job.
    pub job: Option<job::Model>,
}

/// A checked row, as an import job keeps it in `import_row`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRow {
    pub line: u64,
    pub name: String,
    pub phone: Option<String>,
    pub gender: Option<Gender>,
    pub birth_date: Option<NaiveDate>,
    pub city: Option<String>,
    pub industry: Option<String>,
    pub channel: Option<String>,
    /// `(provider, value)` pairs, as stored in `customer_identity`.
    pub identities: Vec<(String, String)>,
}

/// The columns an import knows, with the headers that name them (English
/// or as Excel users write them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Column {
    Name,
    Phone,
    Gender,
    BirthDate,
    City,
    Industry,
    Channel,
    Unionid,
    WecomUserid,
    WecomCorp,
    OrderId,
}

const HEADERS: &[(Column, &[&str])] = &[
    (Column::Name, &["name", "姓名", "客户姓名"]),
    (Column::Phone, &["phone", "mobile", "手机", "手机号", "电话"]),
    (Column::Gender, &["gender", "性别"]),
    (Column::BirthDate, &["birth_date", "birthdate", "birthday", "生日", "出生日期"]),
    (Column::City, &["city", "城市"]),
    (Column::Industry, &["industry", "行业"]),
    (Column::Channel, &["channel", "渠道", "渠道来源"]),
    (Column::Unionid, &["unionid", "union_id"]),
    (Column::WecomUserid, &["wecom_external_userid", "external_userid", "企微id", "企业微信id"]),
    (Column::WecomCorp, &["wecom_corp_id", "corp_id", "corpid"]),
    (Column::OrderId, &["order_system_id", "order_customer_id", "订单系统id"]),
];

fn column_of(header: &str) -> Option<Column> {
    let h = header.trim().to_lowercase();
    HEADERS.iter().find(|(_, names)| names.contains(&h.as_str())).map(|(c, _)| *c)
}

/// The file as text, and the encoding it was read in.
fn decode(bytes: &[u8], encoding: Encoding) -> AppResult<(String, &'static str)> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let utf8 = |b: &[u8]| std::str::from_utf8(b.strip_prefix(BOM).unwrap_or(b)).map(str::to_owned);
    let gbk = |b: &[u8]| {
        encoding_rs::GBK
            .decode_without_bom_handling_and_without_replacement(b)
            .map(|t| t.into_owned())
            .ok_or_else(|| AppError::validation("encoding", "the file is not valid GBK (try encoding: UTF8)"))
    };
    match encoding {
        Encoding::Utf8 => utf8(bytes)
            .map(|t| (t, "UTF8"))
            .map_err(|_| AppError::validation("encoding", "the file is not valid UTF-8 (try encoding: GBK)")),
        Encoding::Gbk => gbk(bytes).map(|t| (t, "GBK")),
        Encoding::Auto => match utf8(bytes) {
            Ok(text) => Ok((text, "UTF8")),
            Err(_) => gbk(bytes).map(|t| (t, "GBK")),
        },
    }
}

/// Hex SHA-256 of the file.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed file: its checked rows, and its issues by line.
#[derive(Debug, Default)]
pub struct Parsed {
    pub rows: Vec<ImportRow>,
    pub issues: Vec<RowIssue>,
    /// Data rows in the file.
    pub total: u64,
    pub encoding: &'static str,
}

fn parse_gender(raw: &str) -> Option<Gender> {
    match raw.trim().to_lowercase().as_str() {
        "" => None,
        "男" | "m" | "male" => Some(Gender::Male),
        "女" | "f" | "female" => Some(Gender::Female),
        "未知" | "unknown" | "u" => Some(Gender::Unknown),
        _ => None,
    }
}

fn parse_date(raw: &str) -> Result<NaiveDate, String> {
    let raw = raw.trim();
    let date = ["%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y%m%d"]
        .iter()
        .find_map(|f| NaiveDate::parse_from_str(raw, f).ok())
        .ok_or_else(|| format!("{raw:?} is not a date (YYYY-MM-DD)"))?;
    if date > Utc::now().date_naive() {
        return Err("must not be in the future".to_owned());
    }
    if date < NaiveDate::from_ymd_opt(1900, 1, 1).expect("valid date") {
        return Err("must be after 1900-01-01".to_owned());
    }
    Ok(date)
}

/// Decodes and checks a file: the header, then each row on its own and
/// against the rows before it (an identity twice in one file). The
/// database is not read.
///
/// # Errors
/// `VALIDATION` for a file that cannot be read at all: wrong encoding, no
/// header, no `name` column, more than `max_rows` rows.
pub fn parse_file(bytes: &[u8], encoding: Encoding, max_rows: usize) -> AppResult<Parsed> {
    let (text, used) = decode(bytes, encoding)?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| AppError::validation("csv", format!("unreadable header: {e}")))?.clone();
    let mut out = Parsed { encoding: used, ..Parsed::default() };
    let mut columns: Vec<Option<Column>> = Vec::with_capacity(headers.len());
    let mut seen: HashSet<Column> = HashSet::new();
    for header in &headers {
        let column = column_of(header);
        match column {
            Some(c) if !seen.insert(c) => {
                out.issues.push(RowIssue::new(1, Some(header), "DUPLICATE_COLUMN", "this column is named twice"));
                columns.push(None);
            }
            Some(c) => columns.push(Some(c)),
            None => {
                if !header.is_empty() {
                    out.issues.push(RowIssue::new(
                        1,
                        Some(header),
                        "UNKNOWN_COLUMN",
                        "not a column an import knows; ignored",
                    ));
                }
                columns.push(None);
            }
        }
    }
    if !seen.contains(&Column::Name) {
        return Err(AppError::validation("csv", "the header has no name (姓名) column"));
    }
    if ![Column::Unionid, Column::WecomUserid, Column::OrderId].iter().any(|c| seen.contains(c)) {
        return Err(AppError::validation(
            "csv",
            "the header names no external id column (unionid, wecom_external_userid or order_system_id)",
        ));
    }
    let header_of = |c: Column| -> String {
        columns.iter().position(|x| *x == Some(c)).map(|i| headers[i].to_owned()).unwrap_or_default()
    };
    let mut first_line: HashMap<(String, String), u64> = HashMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                out.total += 1;
                out.issues.push(RowIssue::new(line, None, "BAD_ROW", format!("unreadable row: {e}")));
                continue;
            }
        };
        if record.iter().all(str::is_empty) {
            continue;
        }
        out.total += 1;
        if out.total as usize > max_rows {
            return Err(AppError::LimitExceeded(format!("at most {max_rows} rows per import")));
        }
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != headers.len() {
            out.issues.push(RowIssue::new(
                line,
                None,
                "BAD_ROW",
                format!("{} cells where the header has {}", record.len(), headers.len()),
            ));
            continue;
        }
        let cell = |c: Column| -> &str {
            columns.iter().position(|x| *x == Some(c)).and_then(|i| record.get(i)).unwrap_or("")
        };
        let before = out.issues.len();
        let mut issue = |c: Column, code: &str, message: String| {
            out.issues.push(RowIssue::new(line, Some(&header_of(c)), code, message));
        };
        let name = match cell(Column::Name) {
            "" => {
                issue(Column::Name, "MISSING_VALUE", "a name is required".to_owned());
                None
            }
            raw => CustomerName::parse(raw, "name").map_err(|e| issue(Column::Name, "INVALID_VALUE", e.message())).ok(),
        };
        let phone = match cell(Column::Phone) {
            "" => None,
            raw => Phone::parse(raw, "phone")
                .map_err(|_| issue(Column::Phone, "INVALID_PHONE", format!("{raw:?} is not a phone number")))
                .ok()
                .map(Phone::into_inner),
        };
        let gender = match cell(Column::Gender) {
            "" => None,
            raw => {
                let parsed = parse_gender(raw);
                if parsed.is_none() {
                    issue(Column::Gender, "INVALID_VALUE", format!("{raw:?} is not a gender (男, 女, MALE, FEMALE)"));
                }
                parsed
            }
        };
        let birth_date = match cell(Column::BirthDate) {
            "" => None,
            raw => parse_date(raw).map_err(|m| issue(Column::BirthDate, "INVALID_DATE", m)).ok(),
        };
        let mut text = |c: Column, field: &str| -> Option<String> {
            OptionalText::parse(Some(cell(c)), field)
                .map_err(|e| issue(c, "INVALID_VALUE", e.message()))
                .ok()
                .and_then(OptionalText::into_inner)
        };
        let city = text(Column::City, "city");
        let industry = text(Column::Industry, "industry");
        let channel = text(Column::Channel, "channel");
        let corp = Some(cell(Column::WecomCorp)).filter(|c| !c.is_empty());
        let mut identities = Vec::new();
        for (column, source, corp) in [
            (Column::Unionid, IdentitySource::Unionid, None),
            (Column::WecomUserid, IdentitySource::Wecom, corp),
            (Column::OrderId, IdentitySource::OrderSystem, None),
        ] {
            let raw = cell(column);
            if raw.is_empty() {
                continue;
            }
            match Identity::parse(source, corp, raw, "id") {
                Ok(id) => identities.push((column, (id.provider(), id.value))),
                Err(e) => issue(column, "INVALID_ID", e.message()),
            }
        }
        if identities.is_empty() && out.issues.len() == before {
            out.issues.push(RowIssue::new(
                line,
                None,
                "MISSING_ID",
                "a row needs an external id (unionid, wecom_external_userid or order_system_id)",
            ));
        }
        for (column, id) in &identities {
            if let Some(first) = first_line.get(id) {
                out.issues.push(RowIssue::new(
                    line,
                    Some(&header_of(*column)),
                    "DUPLICATE_ID",
                    format!("{} is also on line {first}", id.1),
                ));
            }
        }
        if out.issues.len() > before {
            continue;
        }
        for (_, id) in &identities {
            first_line.insert(id.clone(), line);
        }
        out.rows.push(ImportRow {
            line,
            name: name.map(CustomerName::into_inner).unwrap_or_default(),
            phone,
            gender,
            birth_date,
            city,
            industry,
            channel,
            identities: identities.into_iter().map(|(_, id)| id).collect(),
        });
    }
    Ok(out)
}

/// What one batch did.
#[derive(Debug, Default, Clone)]
pub struct BatchOutcome {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub tags_added: u64,
    pub issues: Vec<RowIssue>,
}

/// How a row applies, once the database was read.
enum Plan {
    Create,
    Update(i64),
    Unchanged(i64),
}

#[derive(FromQueryResult)]
struct Held {
    provider: String,
    external_id: String,
    customer_id: i64,
}

/// The customers holding any of these identities, by identity.
async fn holders(db: &impl ConnectionTrait, ids: &[(String, String)]) -> AppResult<HashMap<(String, String), i64>> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    if db.get_database_backend() == DbBackend::Postgres {
        let sql = "SELECT i.provider, i.external_id, i.customer_id FROM customer_identity i \
                   JOIN unnest($1::text::text[], $2::text::text[]) AS u(p, v) \
                   ON i.provider = u.p AND i.external_id = u.v";
        let values: Vec<sea_orm::Value> =
            vec![pg_array(ids.iter().map(|i| Some(&i.0))).into(), pg_array(ids.iter().map(|i| Some(&i.1))).into()];
        let rows =
            Held::find_by_statement(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).all(db).await?;
        out.extend(rows.into_iter().map(|r| ((r.provider, r.external_id), r.customer_id)));
        return Ok(out);
    }
    for chunk in ids.chunks(CHUNK / 2) {
        let cond = chunk.iter().fold(Condition::any(), |cond, (p, v)| {
            cond.add(
                Condition::all()
                    .add(customer_identity::Column::Provider.eq(p.as_str()))
                    .add(customer_identity::Column::ExternalId.eq(v.as_str())),
            )
        });
        for row in customer_identity::Entity::find().filter(cond).all(db).await? {
            out.insert((row.provider, row.external_id), row.customer_id);
        }
    }
    Ok(out)
}

/// The customers with these ids, by id (locked on PostgreSQL when `lock`).
async fn customers_by_id(
    db: &impl ConnectionTrait,
    ids: &BTreeSet<i64>,
    lock: bool,
) -> AppResult<HashMap<i64, customer::Model>> {
    let mut out = HashMap::new();
    let ids: Vec<i64> = ids.iter().copied().collect();
    if db.get_database_backend() == DbBackend::Postgres {
        // One `bigint[]` parameter (as `store::id_in`): PostgreSQL plans
        // `IN (…10,000 values…)` as a scan of the table, `= ANY(array)` as
        // index probes, and hashes the array when a scan is chosen anyway
        // (a text parameter cast to `bigint[]` is searched element by
        // element: re-importing 100,000 rows, with the customer table's
        // statistics stale after the first import, took 300 s).
        for chunk in ids.chunks(20_000) {
            let sql = if lock {
                "SELECT * FROM customer WHERE id = ANY($1) ORDER BY id FOR UPDATE"
            } else {
                "SELECT * FROM customer WHERE id = ANY($1) ORDER BY id"
            };
            let values: Vec<sea_orm::Value> = vec![chunk.to_vec().into()];
            let rows = customer::Entity::find()
                .from_raw_sql(Statement::from_sql_and_values(DbBackend::Postgres, sql, values))
                .all(db)
                .await?;
            out.extend(rows.into_iter().map(|c| (c.id, c)));
        }
        return Ok(out);
    }
    for chunk in ids.chunks(CHUNK) {
        let mut query = customer::Entity::find()
            .filter(customer::Column::Id.is_in(chunk.iter().copied()))
            .order_by_asc(customer::Column::Id);
        if lock {
            query = query.lock_exclusive();
        }
        out.extend(query.all(db).await?.into_iter().map(|c| (c.id, c)));
    }
    Ok(out)
}

/// The row's values over the customer's: empty cells leave a field alone.
fn merged_values(row: &ImportRow, c: &customer::Model) -> customer::Model {
    customer::Model {
        name: row.name.clone(),
        phone: row.phone.clone().or_else(|| c.phone.clone()),
        gender: row.gender.unwrap_or(c.gender),
        birth_date: row.birth_date.or(c.birth_date),
        city: row.city.clone().or_else(|| c.city.clone()),
        industry: row.industry.clone().or_else(|| c.industry.clone()),
        channel: row.channel.clone().or_else(|| c.channel.clone()),
        ..c.clone()
    }
}

/// Reads what the rows meet in the database and decides each: create,
/// update, unchanged, or an issue (identities of two customers, or of a
/// customer the caller may not update here).
async fn plan(
    db: &impl ConnectionTrait,
    principal: &Principal,
    unit: i64,
    rows: &[ImportRow],
    lock: bool,
) -> AppResult<(Vec<Plan>, Vec<RowIssue>, HashMap<i64, customer::Model>, HashMap<(String, String), i64>)> {
    let ids: Vec<(String, String)> = rows.iter().flat_map(|r| r.identities.iter().cloned()).collect();
    let held = holders(db, &ids).await?;
    let wanted: BTreeSet<i64> = held.values().copied().collect();
    let customers = customers_by_id(db, &wanted, lock).await?;
    let mut plans = Vec::with_capacity(rows.len());
    let mut issues = Vec::new();
    let mut claimed: HashMap<i64, u64> = HashMap::new();
    let read = principal.scope(Action::CustomerRead);
    for row in rows {
        let owners: BTreeSet<i64> = row.identities.iter().filter_map(|i| held.get(i).copied()).collect();
        let plan = match owners.len() {
            0 => Some(Plan::Create),
            1 => {
                let id = *owners.first().expect("one owner");
                let usable = customers.get(&id).filter(|c| {
                    c.merged_into_id.is_none()
                        && read.contains(c.org_unit_id)
                        && principal.org.is_within(c.org_unit_id, unit)
                        && principal.may(Action::CustomerUpdate, c.org_unit_id)
                });
                match usable {
                    None => {
                        issues.push(RowIssue::new(
                            row.line,
                            None,
                            "IDENTITY_TAKEN",
                            "an external id of this row belongs to a customer outside this org unit or your scope",
                        ));
                        None
                    }
                    Some(c) => {
                        if let Some(first) = claimed.insert(id, row.line) {
                            issues.push(RowIssue::new(
                                row.line,
                                None,
                                "DUPLICATE_ID",
                                format!("names the same customer as line {first}"),
                            ));
                            None
                        } else {
                            let same =
                                merged_values(row, c) == *c && row.identities.iter().all(|i| held.contains_key(i));
                            Some(if same { Plan::Unchanged(id) } else { Plan::Update(id) })
                        }
                    }
                }
            }
            _ => {
                issues.push(RowIssue::new(
                    row.line,
                    None,
                    "IDENTITY_CONFLICT",
                    "the external ids of this row belong to different customers",
                ));
                None
            }
        };
        plans.push(plan);
    }
    // Rows with an issue drop out here; the others keep their order.
    let kept: Vec<Plan> = plans.into_iter().flatten().collect();
    Ok((kept, issues, customers, held))
}

/// Rows minus those an issue names.
fn without_issues<'r>(rows: &'r [ImportRow], issues: &[RowIssue]) -> Vec<&'r ImportRow> {
    let bad: HashSet<u64> = issues.iter().map(|i| i.line).collect();
    rows.iter().filter(|r| !bad.contains(&r.line)).collect()
}

/// New customer ids, in order: drawn from the sequence on PostgreSQL;
/// on SQLite (one writer at a time) the ids after the largest one.
async fn insert_customers(
    txn: &DatabaseTransaction,
    principal: &Principal,
    unit: i64,
    rows: &[&ImportRow],
) -> AppResult<Vec<i64>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    if txn.get_database_backend() == DbBackend::Postgres {
        let sql = "INSERT INTO customer (org_unit_id, owner_staff_id, name, phone, gender, birth_date, city, industry, \
                   channel, total_spend_cents, order_count, added_at, updated_at, version) \
                   SELECT $1, $2, u.n, u.p, u.g, u.b, u.c, u.i, u.ch, 0, 0, $3, $3, 1 \
                   FROM unnest($4::text::text[], $5::text::text[], $6::text::text[], $7::text::date[], \
                   $8::text::text[], $9::text::text[], $10::text::text[]) WITH ORDINALITY AS u(n, p, g, b, c, i, ch, o) \
                   ORDER BY u.o RETURNING id";
        let values: Vec<sea_orm::Value> = vec![
            unit.into(),
            principal.staff.id.into(),
            now.into(),
            pg_array(rows.iter().map(|r| Some(&r.name))).into(),
            pg_array(rows.iter().map(|r| r.phone.as_ref())).into(),
            pg_array(rows.iter().map(|r| Some(r.gender.unwrap_or(Gender::Unknown).as_str()))).into(),
            pg_array(rows.iter().map(|r| r.birth_date)).into(),
            pg_array(rows.iter().map(|r| r.city.as_ref())).into(),
            pg_array(rows.iter().map(|r| r.industry.as_ref())).into(),
            pg_array(rows.iter().map(|r| r.channel.as_ref())).into(),
        ];
        #[derive(FromQueryResult)]
        struct Id {
            id: i64,
        }
        let ids =
            Id::find_by_statement(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).all(txn).await?;
        // RETURNING gives no order guarantee: the ids of one statement's
        // rows are drawn in its (ordered) insertion order, so sorting them
        // puts them back in the rows' order.
        let mut ids: Vec<i64> = ids.into_iter().map(|r| r.id).collect();
        ids.sort_unstable();
        return Ok(ids);
    }
    let before: Option<i64> = customer::Entity::find()
        .select_only()
        .column_as(customer::Column::Id.max(), "max")
        .into_tuple()
        .one(txn)
        .await?
        .flatten();
    for chunk in rows.chunks(CHUNK / 20) {
        customer::Entity::insert_many(chunk.iter().map(|r| customer::ActiveModel {
            id: NotSet,
            org_unit_id: Set(unit),
            owner_staff_id: Set(Some(principal.staff.id)),
            name: Set(r.name.clone()),
            phone: Set(r.phone.clone()),
            gender: Set(r.gender.unwrap_or(Gender::Unknown)),
            birth_date: Set(r.birth_date),
            city: Set(r.city.clone()),
            industry: Set(r.industry.clone()),
            channel: Set(r.channel.clone()),
            total_spend_cents: Set(0),
            order_count: Set(0),
            last_order_at: Set(None),
            added_at: Set(now),
            updated_at: Set(now),
            version: Set(1),
            merged_into_id: Set(None),
            merged_at: Set(None),
        }))
        .exec(txn)
        .await?;
    }
    let ids: Vec<i64> = customer::Entity::find()
        .select_only()
        .column(customer::Column::Id)
        .filter(customer::Column::Id.gt(before.unwrap_or(0)))
        .order_by_asc(customer::Column::Id)
        .into_tuple()
        .all(txn)
        .await?;
    if ids.len() != rows.len() {
        return Err(AppError::internal(anyhow::anyhow!("inserted {} customers, found {}", rows.len(), ids.len())));
    }
    Ok(ids)
}

/// Overwrites customers' fields with the rows' values (`row` paired with
/// the customer as it will be).
async fn update_customers(txn: &DatabaseTransaction, updates: &[customer::Model]) -> AppResult<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    if txn.get_database_backend() == DbBackend::Postgres {
        let sql = "UPDATE customer SET name = u.n, phone = u.p, gender = u.g, birth_date = u.b, city = u.c, \
                   industry = u.i, channel = u.ch, updated_at = $1, version = customer.version + 1 \
                   FROM unnest($2::text::bigint[], $3::text::text[], $4::text::text[], $5::text::text[], \
                   $6::text::date[], $7::text::text[], $8::text::text[], $9::text::text[]) AS u(id, n, p, g, b, c, i, ch) \
                   WHERE customer.id = u.id";
        let values: Vec<sea_orm::Value> = vec![
            now.into(),
            pg_array(updates.iter().map(|c| Some(c.id))).into(),
            pg_array(updates.iter().map(|c| Some(&c.name))).into(),
            pg_array(updates.iter().map(|c| c.phone.as_ref())).into(),
            pg_array(updates.iter().map(|c| Some(c.gender.as_str()))).into(),
            pg_array(updates.iter().map(|c| c.birth_date)).into(),
            pg_array(updates.iter().map(|c| c.city.as_ref())).into(),
            pg_array(updates.iter().map(|c| c.industry.as_ref())).into(),
            pg_array(updates.iter().map(|c| c.channel.as_ref())).into(),
        ];
        txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        return Ok(());
    }
    for c in updates {
        customer::Entity::update_many()
            .col_expr(customer::Column::Name, c.name.clone().into())
            .col_expr(customer::Column::Phone, c.phone.clone().into())
            .col_expr(customer::Column::Gender, c.gender.as_str().into())
            .col_expr(customer::Column::BirthDate, c.birth_date.into())
            .col_expr(customer::Column::City, c.city.clone().into())
            .col_expr(customer::Column::Industry, c.industry.clone().into())
            .col_expr(customer::Column::Channel, c.channel.clone().into())
            .col_expr(customer::Column::UpdatedAt, now.into())
            .col_expr(customer::Column::Version, Expr::col(customer::Column::Version).add(1))
            .filter(customer::Column::Id.eq(c.id))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// Inserts identities `(customer, provider, value)`.
pub(crate) async fn insert_identities(txn: &DatabaseTransaction, rows: &[(i64, String, String)]) -> AppResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let taken = |e: sea_orm::DbErr| {
        crate::store::constraint::on_constraint(e, |_| {
            "an external id of the file was given to a customer meanwhile; run the import again".to_owned()
        })
    };
    if txn.get_database_backend() == DbBackend::Postgres {
        let sql = "INSERT INTO customer_identity (customer_id, provider, external_id, created_at) \
                   SELECT u.c, u.p, u.v, $1 FROM unnest($2::text::bigint[], $3::text::text[], $4::text::text[]) AS u(c, p, v)";
        let values: Vec<sea_orm::Value> = vec![
            now.into(),
            pg_array(rows.iter().map(|r| Some(r.0))).into(),
            pg_array(rows.iter().map(|r| Some(&r.1))).into(),
            pg_array(rows.iter().map(|r| Some(&r.2))).into(),
        ];
        txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await.map_err(taken)?;
        return Ok(());
    }
    for chunk in rows.chunks(CHUNK / 5) {
        customer_identity::Entity::insert_many(chunk.iter().map(|(c, p, v)| customer_identity::ActiveModel {
            id: NotSet,
            customer_id: Set(*c),
            provider: Set(p.clone()),
            external_id: Set(v.clone()),
            created_at: Set(now),
        }))
        .exec(txn)
        .await
        .map_err(taken)?;
    }
    Ok(())
}

/// Change-log rows for customers created or changed, so that segment
/// indexes pick them up.
pub(crate) async fn log_changes(txn: &DatabaseTransaction, ids: &[i64]) -> AppResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    if txn.get_database_backend() == DbBackend::Postgres {
        let sql = "INSERT INTO customer_change (customer_id, changed_at) SELECT u.c, $1 FROM unnest($2::text::bigint[]) AS u(c)";
        let values: Vec<sea_orm::Value> = vec![now.into(), pg_array(ids.iter().map(|c| Some(*c))).into()];
        txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        return Ok(());
    }
    for chunk in ids.chunks(CHUNK) {
        customer_change::Entity::insert_many(chunk.iter().map(|c| customer_change::ActiveModel {
            seq: NotSet,
            customer_id: Set(*c),
            changed_at: Set(now),
        }))
        .exec(txn)
        .await?;
    }
    Ok(())
}

/// Imports checked rows in the caller's transaction: creates, updates,
/// identities, change-log rows and tags, in a few set-based statements.
/// Rows that meet a problem in the database come back as issues (nothing
/// of them is written).
///
/// # Errors
/// Database errors; the tagging's own errors (a lock, the tag cap) for the
/// whole batch.
pub(crate) async fn apply_rows(
    txn: &DatabaseTransaction,
    principal: &Principal,
    limits: &Limits,
    unit: i64,
    rows: &[ImportRow],
    tags: &[TagId],
    source_ref: &str,
) -> AppResult<BatchOutcome> {
    let (plans, issues, customers, held) = plan(txn, principal, unit, rows, true).await?;
    let good = without_issues(rows, &issues);
    let mut out = BatchOutcome { issues, ..BatchOutcome::default() };
    let mut creates: Vec<&ImportRow> = Vec::new();
    let mut updates: Vec<customer::Model> = Vec::new();
    let mut touched: Vec<i64> = Vec::new();
    let mut identities: Vec<(i64, String, String)> = Vec::new();
    for (row, plan) in good.iter().zip(&plans) {
        match plan {
            Plan::Create => creates.push(row),
            Plan::Update(id) => {
                updates.push(merged_values(row, &customers[id]));
                identities.extend(
                    row.identities.iter().filter(|i| !held.contains_key(*i)).map(|(p, v)| (*id, p.clone(), v.clone())),
                );
                touched.push(*id);
            }
            Plan::Unchanged(id) => {
                out.unchanged += 1;
                touched.push(*id);
            }
        }
    }
    let created = insert_customers(txn, principal, unit, &creates).await?;
    for (row, id) in creates.iter().zip(&created) {
        identities.extend(row.identities.iter().map(|(p, v)| (*id, p.clone(), v.clone())));
    }
    update_customers(txn, &updates).await?;
    insert_identities(txn, &identities).await?;
    let changed: Vec<i64> = created.iter().copied().chain(updates.iter().map(|c| c.id)).collect();
    log_changes(txn, &changed).await?;
    out.created = created.len() as u64;
    out.updated = updates.len() as u64;
    touched.extend(&created);
    if !tags.is_empty() && !touched.is_empty() {
        touched.sort_unstable();
        let customers: Vec<CustomerId> = touched.into_iter().map(CustomerId).collect();
        let outcome = tagging::apply_import_batch(txn, principal, limits, customers, tags, source_ref).await?;
        out.tags_added = u64::from(outcome.added);
    }
    Ok(out)
}

/// Checks the caller may import into the unit with these tags.
async fn check_target(db: &DatabaseConnection, principal: &Principal, req: &ImportRequest) -> AppResult<()> {
    let unit = req.org_unit.0;
    if !principal.visible_units().contains(&unit) {
        return Err(AppError::not_found("org unit", req.org_unit));
    }
    principal.require(Action::CustomerCreate, unit)?;
    principal.require(Action::CustomerUpdate, unit)?;
    let tags = tagging::named_tags(db, principal, &req.tags).await?;
    let mut exclusive = HashSet::new();
    for t in &tags {
        if t.tag.status != entity::enums::TagStatus::Active {
            return Err(AppError::validation("tagIds", format!("tag {:?} is not active", t.tag.name)));
        }
        tagging::require_use(principal, t, unit)?;
        if let Some(group) = &t.group {
            if !principal.org.is_within(unit, group.org_unit_id) {
                return Err(AppError::validation(
                    "tagIds",
                    format!("tag {:?} is not in the tag library of this org unit", t.tag.name),
                ));
            }
            if group.exclusive && !exclusive.insert(group.id) {
                return Err(AppError::validation(
                    "tagIds",
                    format!("two tags of the exclusive group {:?}", group.name),
                ));
            }
        }
    }
    Ok(())
}

fn sorted_capped(mut issues: Vec<RowIssue>) -> Vec<RowIssue> {
    issues.sort_by_key(|i| i.line);
    issues.truncate(MAX_ISSUES);
    issues
}

/// Imports a CSV file of customers into an org unit (see the module's
/// documentation). A dry run checks everything and writes nothing; a real
/// run of more than `limits.import_job_rows` rows becomes a job
/// (`report.job`), smaller ones apply at once with their audit row
/// (`customer.import`, with the file's SHA-256).
///
/// # Errors
/// `NOT_FOUND` for an org unit or tag the caller cannot see; `FORBIDDEN`
/// without `customer:create` and `customer:update` at the unit or the use
/// of a tag there; `VALIDATION` for an unreadable file; `LIMIT_EXCEEDED`
/// past `limits.max_import_rows`. Bad rows are not errors: they are in the
/// report, and the other rows import.
#[tracing::instrument(skip(db, principal, limits, req), fields(staff = principal.staff.id, bytes = req.bytes.len()))]
pub async fn import_customers(
    db: &DatabaseConnection,
    principal: &Principal,
    limits: &Limits,
    req: ImportRequest,
) -> AppResult<ImportReport> {
    check_target(db, principal, &req).await?;
    let sha256 = sha256_hex(&req.bytes);
    let parsed = parse_file(&req.bytes, req.encoding, limits.max_import_rows)?;
    let mut report = ImportReport {
        dry_run: req.dry_run,
        sha256: sha256.clone(),
        encoding: parsed.encoding,
        rows: parsed.total,
        ..ImportReport::default()
    };
    let unit = req.org_unit.0;
    if req.dry_run {
        let (plans, issues, _, _) = plan(db, principal, unit, &parsed.rows, false).await?;
        for p in &plans {
            match p {
                Plan::Create => report.created += 1,
                Plan::Update(_) => report.updated += 1,
                Plan::Unchanged(_) => report.unchanged += 1,
            }
        }
        let all: Vec<RowIssue> = parsed.issues.into_iter().chain(issues).collect();
        report.skipped = all.iter().filter(|i| i.line > 1).map(|i| i.line).collect::<BTreeSet<_>>().len() as u64;
        report.issues = sorted_capped(all);
        return Ok(report);
    }
    let parse_skipped = parsed.issues.iter().filter(|i| i.line > 1).map(|i| i.line).collect::<BTreeSet<_>>().len();
    if parsed.rows.len() > limits.import_job_rows {
        let job = submit_job(db, principal, &req, &sha256, parsed.encoding, parsed.total, &parsed.rows, &parsed.issues)
            .await?;
        report.skipped = parse_skipped as u64;
        report.issues = sorted_capped(parsed.issues);
        report.job = Some(job);
        return Ok(report);
    }
    let txn = db.begin().await?;
    let source_ref = format!("import:{}", &sha256[..12]);
    let outcome = apply_rows(&txn, principal, limits, unit, &parsed.rows, &req.tags, &source_ref).await?;
    let all: Vec<RowIssue> = parsed.issues.into_iter().chain(outcome.issues).collect();
    report.created = outcome.created;
    report.updated = outcome.updated;
    report.unchanged = outcome.unchanged;
    report.tags_added = outcome.tags_added;
    report.skipped = all.iter().filter(|i| i.line > 1).map(|i| i.line).collect::<BTreeSet<_>>().len() as u64;
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "customer.import", "org_unit", unit).in_unit(unit).with_detail(json!({
            "sha256": sha256,
            "encoding": report.encoding,
            "rows": report.rows,
            "created": report.created,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "skipped": report.skipped,
            "tagIds": req.tags.iter().map(|t| t.0).collect::<Vec<_>>(),
            "tagsAdded": report.tags_added,
        })),
    )
    .await?;
    txn.commit().await?;
    report.issues = sorted_capped(all);
    Ok(report)
}

/// What an import job keeps in `job.input` beside the bulk fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportJobInput {
    pub org_unit_id: i64,
    pub sha256: String,
    pub encoding: String,
    pub rows: u64,
}

/// The import part of a job's input.
///
/// # Errors
/// `INTERNAL` for a row this version cannot read.
pub fn import_input_of(job: &job::Model) -> AppResult<ImportJobInput> {
    serde_json::from_value(job.input.get("import").cloned().unwrap_or(Value::Null)).map_err(AppError::internal)
}

/// A job issue as `job.errors` keeps it.
fn job_error(issue: &RowIssue) -> Value {
    json!({ "customerId": null, "line": issue.line, "column": issue.column, "code": issue.code, "message": issue.message })
}

#[allow(clippy::too_many_arguments)]
async fn submit_job(
    db: &DatabaseConnection,
    principal: &Principal,
    req: &ImportRequest,
    sha256: &str,
    encoding: &str,
    total_rows: u64,
    rows: &[ImportRow],
    issues: &[RowIssue],
) -> AppResult<job::Model> {
    let unit = req.org_unit.0;
    let input = json!({
        "add": req.tags.iter().map(|t| t.0).collect::<Vec<_>>(),
        "remove": [],
        "reason": format!("import {}", &sha256[..12]),
        "customersFrom": "import",
        "import": ImportJobInput { org_unit_id: unit, sha256: sha256.to_owned(), encoding: encoding.to_owned(), rows: total_rows },
    });
    let skipped = issues.iter().filter(|i| i.line > 1).map(|i| i.line).collect::<BTreeSet<_>>().len() as i64;
    let errors: Vec<Value> = issues.iter().take(100).map(job_error).collect();
    let now = Utc::now();
    let txn = db.begin().await?;
    let job = job::Entity::insert(job::ActiveModel {
        id: NotSet,
        kind: Set(IMPORT_CUSTOMERS.to_owned()),
        status: Set(JobStatus::Queued),
        requested_by: Set(principal.staff.id),
        org_unit_id: Set(unit),
        input: Set(input),
        total: Set(rows.len() as i64),
        done: Set(0),
        added: Set(0),
        removed: Set(0),
        unchanged: Set(0),
        skipped: Set(skipped),
        created: Set(0),
        updated: Set(0),
        errors: Set(Value::Array(errors)),
        change_request_id: Set(None),
        cancel_requested: Set(false),
        lock_ids: Set(json!([])),
        owner: Set(None),
        lease_until: Set(None),
        attempts: Set(0),
        created_at: Set(now),
        started_at: Set(None),
        finished_at: Set(None),
        updated_at: Set(now),
    })
    .exec_with_returning(&txn)
    .await?;
    insert_job_rows(&txn, job.id, rows).await?;
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "job.create", "job", job.id).in_unit(unit).with_detail(json!({
            "kind": IMPORT_CUSTOMERS,
            "status": job.status,
            "rows": job.total,
            "sha256": sha256,
            "add": req.tags.iter().map(|t| t.0).collect::<Vec<_>>(),
        })),
    )
    .await?;
    txn.commit().await?;
    Ok(job)
}

/// Writes a job's rows: one statement over arrays on PostgreSQL.
async fn insert_job_rows(txn: &DatabaseTransaction, job_id: i64, rows: &[ImportRow]) -> AppResult<()> {
    let payloads: Vec<String> =
        rows.iter().map(|r| serde_json::to_string(r).map_err(AppError::internal)).collect::<AppResult<_>>()?;
    if txn.get_database_backend() == DbBackend::Postgres {
        for (n, chunk) in rows.chunks(50_000).enumerate() {
            let start = (n * 50_000) as i64;
            let sql = "INSERT INTO import_row (job_id, ordinal, line, payload) \
                       SELECT $1, $2 + u.o - 1, u.l, u.p::json \
                       FROM unnest($3::text::bigint[], $4::text::text[]) WITH ORDINALITY AS u(l, p, o)";
            let values: Vec<sea_orm::Value> = vec![
                job_id.into(),
                start.into(),
                pg_array(chunk.iter().map(|r| Some(r.line))).into(),
                pg_array(payloads[n * 50_000..n * 50_000 + chunk.len()].iter().map(Some)).into(),
            ];
            txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        }
        return Ok(());
    }
    for (n, chunk) in rows.chunks(CHUNK / 5).enumerate() {
        let start = n * (CHUNK / 5);
        import_row::Entity::insert_many(chunk.iter().enumerate().map(|(i, r)| import_row::ActiveModel {
            job_id: Set(job_id),
            ordinal: Set((start + i) as i64),
            line: Set(r.line as i64),
            payload: Set(serde_json::from_str(&payloads[start + i]).unwrap_or(Value::Null)),
        }))
        .exec(txn)
        .await?;
    }
    Ok(())
}

/// One batch of an import job, in the worker's transaction: its rows from
/// `done` on, applied as a direct import applies them.
///
/// # Errors
/// As [`apply_rows`]; `INTERNAL` for a stored row this version cannot read.
pub(crate) async fn job_batch(
    txn: &DatabaseTransaction,
    principal: &Principal,
    limits: &Limits,
    job: &job::Model,
    size: i64,
) -> AppResult<(usize, BatchOutcome)> {
    let input = import_input_of(job)?;
    let stored = import_row::Entity::find()
        .filter(import_row::Column::JobId.eq(job.id))
        .filter(import_row::Column::Ordinal.gte(job.done))
        .filter(import_row::Column::Ordinal.lt(job.done + size))
        .order_by_asc(import_row::Column::Ordinal)
        .all(txn)
        .await?;
    let rows: Vec<ImportRow> = stored
        .iter()
        .map(|r| serde_json::from_value(r.payload.clone()).map_err(AppError::internal))
        .collect::<AppResult<_>>()?;
    let tags: Vec<TagId> = job
        .input
        .get("add")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .map(TagId)
        .collect();
    let outcome =
        apply_rows(txn, principal, limits, input.org_unit_id, &rows, &tags, &format!("job:{}", job.id)).await?;
    Ok((rows.len(), outcome))
}

/// The issues of a batch as `job.errors` entries.
pub(crate) fn job_errors(issues: &[RowIssue]) -> Vec<Value> {
    issues.iter().map(job_error).collect()
}

/// Deletes a finished job's rows (they are not needed once it ended).
///
/// # Errors
/// Database errors.
pub(crate) async fn forget_rows(txn: &DatabaseTransaction, job_id: i64) -> AppResult<()> {
    import_row::Entity::delete_many().filter(import_row::Column::JobId.eq(job_id)).exec(txn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gbk(text: &str) -> Vec<u8> {
        encoding_rs::GBK.encode(text).0.into_owned()
    }

    #[test]
    fn a_gbk_file_is_read_as_gbk_and_its_bad_rows_are_named_by_line_and_column() {
        let file = "姓名,手机,性别,生日,unionid\n张三,13800138000,男,1990-01-02,u1\n李四,12345,女,,u2\n,13900139000,,,u3\n王五,,X,2999-01-01,u4\n赵六,,,,u1\n";
        let parsed = parse_file(&gbk(file), Encoding::Auto, 100).unwrap();
        assert_eq!(parsed.encoding, "GBK");
        assert_eq!(parsed.total, 5);
        assert_eq!(parsed.rows.len(), 1);
        assert_eq!(parsed.rows[0].name, "张三");
        assert_eq!(parsed.rows[0].gender, Some(Gender::Male));
        let found: Vec<(u64, Option<&str>, &str)> =
            parsed.issues.iter().map(|i| (i.line, i.column.as_deref(), i.code.as_str())).collect();
        assert_eq!(
            found,
            vec![
                (3, Some("手机"), "INVALID_PHONE"),
                (4, Some("姓名"), "MISSING_VALUE"),
                (5, Some("性别"), "INVALID_VALUE"),
                (5, Some("生日"), "INVALID_DATE"),
                (6, Some("unionid"), "DUPLICATE_ID"),
            ]
        );
    }

    #[test]
    fn utf8_is_refused_as_gbk_only_when_asked_and_a_file_needs_a_name_and_an_id_column() {
        assert_eq!(parse_file("\u{feff}name,unionid\nA,u\n".as_bytes(), Encoding::Utf8, 10).unwrap().rows.len(), 1);
        assert!(parse_file(&gbk("姓名,unionid\n张三,u\n"), Encoding::Utf8, 10).is_err());
        assert!(parse_file(b"phone,unionid\n1,u\n", Encoding::Auto, 10).is_err());
        assert!(parse_file(b"name,phone\nA,1\n", Encoding::Auto, 10).is_err());
        assert!(matches!(
            parse_file(b"name,unionid\nA,u1\nB,u2\n", Encoding::Auto, 1),
            Err(AppError::LimitExceeded(_))
        ));
    }
}
