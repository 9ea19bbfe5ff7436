//! The rules of the business. Resolvers call one function here; every
//! function takes the caller's [`Principal`](crate::authz::Principal) and
//! limits what it reads and writes to the caller's scopes.

pub mod admin;
pub mod audit;
pub mod change_request;
pub mod customer;
pub mod export;
pub mod library_edit;
pub mod locks;
pub mod rules;
pub mod segment;
pub mod staff;
pub mod tag_library;
pub mod tagging;

/// A page of rows newest first (by id), each with its cursor.
pub type NewestFirst<M> = crate::domain::Page<M>;

/// Pages `query` newest first by its id column: `first` rows after the
/// `after` cursor, or `last` rows before the `before` cursor (walked
/// oldest first, then put back newest first). Cursors are made for
/// `ordering`.
///
/// # Errors
/// `VALIDATION` for a cursor of another ordering or a bad one; database
/// errors.
pub(crate) async fn newest_first<E, C>(
    db: &C,
    query: sea_orm::Select<E>,
    id: E::Column,
    id_of: impl Fn(&E::Model) -> i64,
    ordering: &str,
    page: &crate::domain::PageArgs,
) -> crate::error::AppResult<NewestFirst<E::Model>>
where
    E: sea_orm::EntityTrait,
    C: sea_orm::ConnectionTrait,
{
    use sea_orm::{ColumnTrait, QueryFilter, QueryOrder, QuerySelect};

    let mut query = query;
    if let Some(cursor) = page.decode_cursor(ordering)? {
        query = query.filter(if page.backward() { id.gt(cursor.id) } else { id.lt(cursor.id) });
    }
    let query = if page.backward() { query.order_by_asc(id) } else { query.order_by_desc(id) };
    let rows = query.limit(page.fetch()).all(db).await?;
    Ok(crate::domain::Page::from_walk(rows, page, |row| crate::domain::Cursor {
        ordering: ordering.to_owned(),
        key: String::new(),
        id: id_of(row),
    }))
}

/// Escapes `%`, `_` and the escape character itself for a `LIKE` pattern.
pub(crate) fn like_escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(super::like_escape(r"50%_off\"), r"50\%\_off\\");
    }
}
