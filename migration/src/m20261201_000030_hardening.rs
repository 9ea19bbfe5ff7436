//! Segment references as rows: which saved segment's expression uses which
//! other saved segment (`segment(#id)`), with foreign keys, so that a
//! segment in use cannot be deleted, even by a delete racing the save that
//! starts using it. Filled from the stored expressions of existing segments.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000030_hardening"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(SegmentReference::Table)
                .col(ColumnDef::new(SegmentReference::SegmentId).big_integer().not_null())
                .col(ColumnDef::new(SegmentReference::UsedSegmentId).big_integer().not_null())
                .primary_key(Index::create().col(SegmentReference::SegmentId).col(SegmentReference::UsedSegmentId))
                .foreign_key(
                    ForeignKey::create()
                        .from(SegmentReference::Table, SegmentReference::SegmentId)
                        .to(Segment::Table, Segment::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(SegmentReference::Table, SegmentReference::UsedSegmentId)
                        .to(Segment::Table, Segment::Id)
                        .on_delete(ForeignKeyAction::Restrict),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_segment_reference_used")
                .table(SegmentReference::Table)
                .col(SegmentReference::UsedSegmentId)
                .to_owned(),
        )
        .await?;

        // Existing segments: their stored (canonical) text names every
        // saved segment it uses as `segment(#id)`.
        let db = m.get_connection();
        let select = Query::select().columns([Segment::Id, Segment::Expression]).from(Segment::Table).to_owned();
        let rows = db.query_all(&select).await?;
        let mut segments = Vec::new();
        for row in rows {
            let id: i64 = row.try_get("", "id")?;
            let expression: String = row.try_get("", "expression")?;
            segments.push((id, expression));
        }
        let known: std::collections::HashSet<i64> = segments.iter().map(|(id, _)| *id).collect();
        for (id, expression) in &segments {
            let mut used = used_segments(expression);
            used.retain(|u| u != id && known.contains(u));
            used.sort_unstable();
            used.dedup();
            for u in used {
                let insert = Query::insert()
                    .into_table(SegmentReference::Table)
                    .columns([SegmentReference::SegmentId, SegmentReference::UsedSegmentId])
                    .values_panic([(*id).into(), u.into()])
                    .to_owned();
                db.execute(&insert).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(SegmentReference::Table).to_owned()).await
    }
}

/// The ids in `segment(#id)` references of a stored expression.
fn used_segments(expression: &str) -> Vec<i64> {
    const OPEN: &str = "segment(#";
    expression
        .match_indices(OPEN)
        .filter_map(|(at, _)| {
            let rest = &expression[at + OPEN.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            rest[digits.len()..].starts_with(')').then(|| digits.parse().ok()).flatten()
        })
        .collect()
}

#[derive(DeriveIden)]
enum Segment {
    Table,
    Id,
    Expression,
}

#[derive(DeriveIden)]
enum SegmentReference {
    Table,
    SegmentId,
    UsedSegmentId,
}

#[cfg(test)]
mod tests {
    use super::used_segments;

    #[test]
    fn references_are_read_from_stored_text() {
        assert_eq!(used_segments("segment(#12) AND NOT segment(#3) OR tag(#4)"), [12, 3]);
        assert_eq!(used_segments("city = \"x\""), Vec::<i64>::new());
        assert_eq!(used_segments("segment(#1x)"), Vec::<i64>::new());
    }
}
