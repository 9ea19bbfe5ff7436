//! Merging tag B into tag A: what a merge does, in one place.

use std::collections::HashSet;

use entity::{
    customer_tag,
    enums::{TagOp, TagSource, TagStatus},
    tag, tag_event,
};
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, sea_query::Expr};

use super::checks::{check_move, holders};
use super::model::{Author, TagState, aliases_of};
use super::versions::{base_of, load_group, load_tag, write_tag};
use crate::domain::{ObjectKey, TagGroupId, TagId, Versions};
use crate::error::{AppError, AppResult};
use crate::store::CHUNK;
use crate::store::event_log::{EventBy, insert_events};

/// Merges tag B (`source`) into tag A (`target`): B's assignments move to
/// A (a customer holding both keeps one), the move is written to the tag
/// event log (REMOVE B, ADD A, source MERGE) so every index follows, B
/// becomes an alias of A and is left MERGED pointing to A. B's earlier
/// events stay as they were (the log is append-only); history queries of
/// A include the tags merged into it.
pub(super) async fn merge(
    txn: &DatabaseTransaction,
    by: &Author,
    target: TagId,
    source: TagId,
    base: &Versions,
) -> AppResult<tag::Model> {
    if target == source {
        return Err(AppError::validation("sourceTagId", "a tag cannot be merged into itself"));
    }
    let a = load_tag(txn, target).await?;
    let b = load_tag(txn, source).await?;
    if a.status != TagStatus::Active {
        return Err(AppError::validation("targetTagId", format!("tag {:?} is {}", a.name, a.status.as_str())));
    }
    if b.status == TagStatus::Merged {
        return Err(AppError::validation("sourceTagId", format!("tag {:?} was already merged", b.name)));
    }
    let group_a = load_group(
        txn,
        a.group_id.map(TagGroupId).ok_or_else(|| AppError::validation("targetTagId", "not an enterprise tag"))?,
    )
    .await?;
    check_move(txn, &b, &group_a, Some(target)).await.map_err(|err| match err {
        AppError::Validation { message, .. } => AppError::validation("sourceTagId", message),
        other => other,
    })?;

    let held_b = holders(txn, source).await?;
    let held_a: HashSet<i64> = holders(txn, target).await?.into_iter().collect();
    let (both, only_b): (Vec<i64>, Vec<i64>) = held_b.iter().partition(|c| held_a.contains(c));
    for chunk in both.chunks(CHUNK) {
        customer_tag::Entity::delete_many()
            .filter(customer_tag::Column::TagId.eq(b.id))
            .filter(customer_tag::Column::CustomerId.is_in(chunk.iter().copied()))
            .exec(txn)
            .await?;
    }
    customer_tag::Entity::update_many()
        .col_expr(customer_tag::Column::TagId, Expr::value(a.id))
        .filter(customer_tag::Column::TagId.eq(b.id))
        .exec(txn)
        .await?;
    let by_merge = EventBy {
        actor: Some(by.actor.0),
        source: TagSource::Merge,
        source_ref: Some(format!("merge:{}->{}", b.id, a.id)),
        at: by.at,
    };
    let event = |customer_id: i64, tag_id: i64, op: TagOp| by_merge.event(customer_id, tag_id, op);
    let mut events: Vec<tag_event::ActiveModel> = held_b.iter().map(|c| event(*c, b.id, TagOp::Remove)).collect();
    events.extend(only_b.iter().map(|c| event(*c, a.id, TagOp::Add)));
    insert_events(txn, events).await?;

    let b_after = TagState { status: TagStatus::Merged, merged_into_id: Some(a.id), ..TagState::from(&b) };
    write_tag(txn, by, &b, b_after, base_of(base, ObjectKey::tag(source))?, "merge").await?;
    // Tags that rolled up to B roll up to A now (each a new version of its
    // own, so their history says why).
    let rolled_up = tag::Entity::find().filter(tag::Column::CanonicalTagId.eq(b.id)).all(txn).await?;
    for dependent in rolled_up {
        let after = TagState { canonical_tag_id: Some(a.id), ..TagState::from(&dependent) };
        write_tag(txn, by, &dependent, after, dependent.version, "merge").await?;
    }
    let mut a_after = TagState::from(&a);
    for alias in std::iter::once(b.name.clone()).chain(aliases_of(&b)) {
        if alias != a.name && !a_after.aliases.contains(&alias) {
            a_after.aliases.push(alias);
        }
    }
    write_tag(txn, by, &a, a_after, base_of(base, ObjectKey::tag(target))?, "merge").await
}
