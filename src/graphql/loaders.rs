//! Per-request DataLoaders: one batched query per kind of object, whatever
//! the page size (no N+1). They live on the request, never on the schema,
//! so nothing is cached across callers.
//!
//! A load waits the DataLoader's batching delay (1 ms) so that sibling
//! fields add their keys to it. The delay stays: with none, the load's task
//! can start on another worker thread while the siblings are still being
//! polled (a task spawned from a worker goes to a queue other workers
//! steal from whenever the LIFO slot is taken or off), and takes only the
//! keys gathered so far. What knows all its keys at once ([`load_now`], used
//! by [`prefetch_customers`]) calls the loader directly, without the wait.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use entity::{customer_identity, customer_tag, staff, tag, tag_group};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use crate::authz::Principal;
use crate::error::AppError;
use crate::service::{customer, tag_library, tagging};

/// Keys of the batched loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TagsOfCustomer(pub i64);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentitiesOfCustomer(pub i64);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TagById(pub i64);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupById(pub i64);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StaffById(pub i64);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActiveTagsOfGroup(pub i64);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HoldersOfTag(pub i64);

pub struct DbLoader {
    db: DatabaseConnection,
    principal: Arc<Principal>,
}

pub type Loaders = DataLoader<DbLoader, HashMapCache>;

/// Loaders for one request. The cache lives as long as the request, so it
/// never serves one caller's rows to another.
pub fn for_request(db: DatabaseConnection, principal: Arc<Principal>) -> Loaders {
    DataLoader::with_cache(DbLoader { db, principal }, tokio::spawn, HashMapCache::default())
}

/// What of a list of customers the query will read, to load it up front.
#[derive(Debug, Clone, Copy, Default)]
pub struct CustomerPrefetch {
    pub tags: bool,
    pub staff: bool,
    pub external_ids: bool,
}

/// Loads, in one batch per kind, what the fields of a list of customers
/// will ask for, so that a page costs the same number of statements
/// whatever its size. Without this, batching would depend on how many
/// resolvers happen to reach a loader within its batching delay.
pub async fn prefetch_customers(
    loaders: &Loaders,
    customers: &[entity::customer::Model],
    what: CustomerPrefetch,
) -> Result<(), async_graphql::Error> {
    let mut staff_ids: Vec<i64> = customers.iter().filter_map(|c| c.owner_staff_id).collect();
    if what.tags {
        let assignments = load_now(loaders, customers.iter().map(|c| TagsOfCustomer(c.id))).await?;
        let tag_ids: Vec<i64> = assignments.values().flatten().map(|a| a.tag_id).collect();
        staff_ids.extend(assignments.values().flatten().filter_map(|a| a.tagged_by));
        let tags = load_now(loaders, tag_ids.into_iter().map(TagById)).await?;
        let canonical: Vec<TagById> =
            tags.values().filter_map(|t| t.canonical_tag_id).map(TagById).filter(|id| !tags.contains_key(id)).collect();
        load_now(loaders, canonical).await?;
        load_now(loaders, tags.values().filter_map(|t| t.group_id).map(GroupById)).await?;
    }
    if what.staff {
        load_now(loaders, staff_ids.into_iter().map(StaffById)).await?;
    }
    if what.external_ids {
        load_now(loaders, customers.iter().map(|c| IdentitiesOfCustomer(c.id))).await?;
    }
    Ok(())
}

/// Loads `keys` with one call of the loader, now, and keeps what it finds
/// in the request's cache, where the fields look first. For keys all known
/// at once: the batching delay would only wait for siblings that do not
/// exist. No key, no statement.
async fn load_now<K>(
    loaders: &Loaders,
    keys: impl IntoIterator<Item = K>,
) -> LoadResult<K, <DbLoader as Loader<K>>::Value>
where
    K: Send + Sync + Hash + Eq + Clone + 'static,
    DbLoader: Loader<K, Error = async_graphql::Error>,
{
    let keys: Vec<K> = keys.into_iter().collect::<HashSet<K>>().into_iter().collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let values = loaders.loader().load(&keys).await?;
    loaders.feed_many(values.iter().map(|(key, value)| (key.clone(), value.clone()))).await;
    Ok(values)
}

type LoadResult<K, V> = Result<HashMap<K, V>, async_graphql::Error>;

impl Loader<TagsOfCustomer> for DbLoader {
    type Value = Vec<customer_tag::Model>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[TagsOfCustomer]) -> LoadResult<TagsOfCustomer, Self::Value> {
        let ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
        let rows = tagging::visible_assignments_of(&self.db, &self.principal, &ids).await?;
        Ok(rows.into_iter().map(|(k, v)| (TagsOfCustomer(k), v)).collect())
    }
}

impl Loader<IdentitiesOfCustomer> for DbLoader {
    type Value = Vec<customer_identity::Model>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[IdentitiesOfCustomer]) -> LoadResult<IdentitiesOfCustomer, Self::Value> {
        let ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
        let rows = customer::identities_of(&self.db, &ids).await?;
        Ok(rows.into_iter().map(|(k, v)| (IdentitiesOfCustomer(k), v)).collect())
    }
}

impl Loader<TagById> for DbLoader {
    type Value = tag::Model;
    type Error = async_graphql::Error;

    /// Tags reached from other objects (a customer's tags, a tag's
    /// canonical tag); only those the caller may see come back.
    async fn load(&self, keys: &[TagById]) -> LoadResult<TagById, Self::Value> {
        let rows = tag::Entity::find()
            .filter(tag::Column::Id.is_in(keys.iter().map(|k| k.0)))
            .all(&self.db)
            .await
            .map_err(AppError::from)?;
        let groups = tag_library::groups_by_id(&self.db, rows.iter().filter_map(|t| t.group_id)).await?;
        Ok(rows
            .into_iter()
            .filter(|t| tag_library::tag_visible(&self.principal, t, t.group_id.and_then(|g| groups.get(&g)), None))
            .map(|t| (TagById(t.id), t))
            .collect())
    }
}

impl Loader<GroupById> for DbLoader {
    type Value = tag_group::Model;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[GroupById]) -> LoadResult<GroupById, Self::Value> {
        let rows = tag_library::groups_by_id(&self.db, keys.iter().map(|k| k.0)).await?;
        Ok(rows.into_iter().map(|(k, v)| (GroupById(k), v)).collect())
    }
}

impl Loader<StaffById> for DbLoader {
    type Value = staff::Model;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[StaffById]) -> LoadResult<StaffById, Self::Value> {
        let rows = staff::Entity::find()
            .filter(staff::Column::Id.is_in(keys.iter().map(|k| k.0)))
            .all(&self.db)
            .await
            .map_err(AppError::from)?;
        Ok(rows.into_iter().map(|s| (StaffById(s.id), s)).collect())
    }
}

impl Loader<HoldersOfTag> for DbLoader {
    type Value = u64;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[HoldersOfTag]) -> LoadResult<HoldersOfTag, Self::Value> {
        let ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
        let counts = tagging::holder_counts(&self.db, &self.principal, &ids).await?;
        Ok(counts.into_iter().map(|(k, v)| (HoldersOfTag(k), v)).collect())
    }
}

impl Loader<ActiveTagsOfGroup> for DbLoader {
    type Value = Vec<tag::Model>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[ActiveTagsOfGroup]) -> LoadResult<ActiveTagsOfGroup, Self::Value> {
        let ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
        let rows = tag_library::tags_of_groups(&self.db, &ids, false).await?;
        Ok(rows.into_iter().map(|(k, v)| (ActiveTagsOfGroup(k), v)).collect())
    }
}
