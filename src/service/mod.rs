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
pub mod segment;
pub mod staff;
pub mod tag_library;
pub mod tagging;

/// A page of rows newest first (by id), each with its cursor, and whether
/// more follow.
pub struct NewestFirst<M> {
    pub items: Vec<(String, M)>,
    pub has_next_page: bool,
}

/// Pages `query` newest first by its id column: the rows after the
/// `after` cursor (made for `ordering`), `first` of them.
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
    first: crate::domain::PageSize,
    after: Option<&str>,
) -> crate::error::AppResult<NewestFirst<E::Model>>
where
    E: sea_orm::EntityTrait,
    C: sea_orm::ConnectionTrait,
{
    use sea_orm::{ColumnTrait, QueryFilter, QueryOrder, QuerySelect};

    let mut query = query;
    if let Some(after) = after {
        let cursor = crate::domain::Cursor::decode(after, ordering)?;
        query = query.filter(id.lt(cursor.id));
    }
    let mut rows = query.order_by_desc(id).limit(first.get() + 1).all(db).await?;
    let has_next_page = rows.len() as u64 > first.get();
    rows.truncate(first.get() as usize);
    let items = rows
        .into_iter()
        .map(|row| {
            let cursor = crate::domain::Cursor { ordering: ordering.to_owned(), key: String::new(), id: id_of(&row) };
            (cursor.encode(), row)
        })
        .collect();
    Ok(NewestFirst { items, has_next_page })
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
