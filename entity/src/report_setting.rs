use sea_orm::entity::prelude::*;

/// The zombie and duplicate thresholds an org unit sets for itself and the
/// units below it (the nearest ancestor's row applies where a unit has none).
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "report_setting")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub org_unit_id: i64,
    /// A tag held by less than this share (0..1) of the scope's customers is a zombie.
    pub zombie_share: f64,
    /// A tag nobody was given for this many days is a zombie.
    pub zombie_idle_days: i32,
    /// Tags whose holders overlap at least this much (Jaccard) are probable duplicates.
    pub duplicate_jaccard: f64,
    /// Tags whose names are at most this many edits apart are probable duplicates.
    pub duplicate_edit_distance: i32,
    pub updated_by: i64,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
