//! Limits on the shape and the cost of a GraphQL document, checked before
//! anything runs.
//!
//! Two parts:
//! - [`DocumentLimits`], a step before execution (see `http::steps`) that
//!   parses the document itself and walks it once, with fragments expanded
//!   and a budget, before async-graphql's own checks and validation see
//!   it: aliases, root
//!   fields, depth (introspection apart, under its own bound), nesting,
//!   and the number of fields after expansion. A refusal answers
//!   `LIMIT_EXCEEDED` and no resolver (hence no database statement) runs.
//!   It runs before async-graphql's own recursion check and validation
//!   because both expand fragments without a budget: thirteen fragments
//!   that each spread the next one ten times expand to 10^12 fields.
//! - The cost model used by the `complexity` attributes of list fields
//!   ([`page_cost`], [`list_cost`]): a list costs the rows it may return
//!   times the cost of what is selected under each, so a document's cost
//!   bounds the rows it can touch; async-graphql adds these up and refuses
//!   documents above `max_query_complexity`.

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::parser::{self, Positioned};
use async_graphql::{Name, Pos, Request, ServerError, ServerResult};

use crate::config::Limits;
use crate::domain::PageSize;
use crate::error::AppError;

/// Rows a list without `first` is assumed to return, per list: tags of a
/// customer. Customers usually hold a handful; crossing the alert threshold
/// (20) is already abnormal and flagged, so 20 bounds what a page
/// realistically touches (the hard cap of 200 per customer would price a
/// mobile page of 20 customers with their tags out of reach).
pub(crate) const TAGS_PER_CUSTOMER: usize = 20;
/// Rows assumed for a tag library: tags of a group, groups of a library
/// (or of one of its layers), layers (HQ, region, store), personal tags.
pub(crate) const TAGS_PER_GROUP: usize = 20;
pub(crate) const GROUPS_PER_LIBRARY: usize = 30;
pub(crate) const LIBRARY_LAYERS: usize = 3;
/// Rows assumed for the other lists without `first`: a customer's external
/// ids, versions, locks, roles, permissions, diffs, the org units a caller
/// sees, a tagging call's customers (their number is bounded by the call),
/// a new customer's possible duplicates.
pub(crate) const SMALL_LIST: usize = 10;

/// Cost of a paged list: the page size `first` asks for (clamped like
/// [`PageSize`], the default page size when absent) times the cost of the
/// selection under it.
pub(crate) fn page_cost(first: Option<i32>, child_complexity: usize) -> usize {
    PageSize::estimate(first).saturating_mul(child_complexity.max(1))
}

/// Cost of a list without paging: its assumed length times the cost of the
/// selection under each item.
pub(crate) fn list_cost(rows: usize, child_complexity: usize) -> usize {
    rows.saturating_mul(child_complexity.max(1))
}

/// The fields whose subtree is introspection: counted against their own
/// depth bound, not `max_query_depth`.
const INTROSPECTION_ROOTS: [&str; 2] = ["__schema", "__type"];
/// Introspection fields that return lists. The standard introspection
/// query nests at most three of them on one path (`types` → `fields` →
/// `args`) and never one twice; allowing more would let a small document
/// walk the type graph in circles (`fields { type { fields { type …` ),
/// with an answer that grows as a power of the schema's size.
const INTROSPECTION_LISTS: [&str; 8] =
    ["types", "fields", "args", "inputFields", "interfaces", "enumValues", "possibleTypes", "directives"];
/// Introspection lists one path may nest.
const MAX_INTROSPECTION_LISTS: usize = 3;

/// The bounds [`DocumentLimits`] enforces, taken from [`Limits`].
#[derive(Debug, Clone)]
pub(crate) struct DocumentLimits {
    max_aliases: usize,
    max_root_fields: usize,
    max_depth: usize,
    max_introspection_depth: usize,
    max_nesting: usize,
    max_fields: usize,
}

impl DocumentLimits {
    /// The bounds of the configured limits.
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            max_aliases: limits.max_aliases,
            max_root_fields: limits.max_root_fields,
            max_depth: limits.max_query_depth,
            max_introspection_depth: limits.max_introspection_depth,
            max_nesting: limits.max_recursive_depth,
            // Every field costs at least 1, so a document with more fields
            // after expansion is over the complexity limit anyway.
            max_fields: limits.max_query_complexity,
        }
    }

    /// Checks a parsed document; the first bound crossed is the answer.
    pub(crate) fn check(&self, doc: &ExecutableDocument) -> Result<(), Refusal> {
        let mut walk = Walk { doc, limits: self, aliases: 0, fields: 0, root_fields: 0, fragments: Vec::new() };
        for (_, operation) in doc.operations.iter() {
            walk.root_fields = 0;
            walk.selection_set(&operation.node.selection_set, Level::default())?;
        }
        Ok(())
    }

    /// Parses the request's document (the request keeps it, and
    /// async-graphql does not parse it again) and checks it. A persisted
    /// query arrives already parsed.
    ///
    /// # Errors
    /// The document does not parse, or crosses a bound (`LIMIT_EXCEEDED`).
    pub(crate) fn check_request(&self, request: &mut Request) -> ServerResult<()> {
        let doc = request.parsed_query().map_err(|err| {
            // The parser's own bound on nesting (64) is the depth limit
            // too, and answers like it.
            if err.message == parser::Error::RecursionLimitExceeded.to_string() {
                Refusal::nested_too_deep(Pos::default()).into_server_error()
            } else {
                err
            }
        })?;
        self.check(doc).map_err(Refusal::into_server_error)
    }
}

/// Why a document was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub message: String,
    pub pos: Pos,
}

impl Refusal {
    fn new(pos: Pos, message: impl Into<String>) -> Self {
        Self { message: message.into(), pos }
    }

    fn nested_too_deep(pos: Pos) -> Self {
        Self::new(pos, "Query is nested too deep.")
    }

    fn into_server_error(self) -> ServerError {
        async_graphql::Error::from(AppError::LimitExceeded(self.message)).into_server_error(self.pos)
    }
}

/// Where the walk is: the depth in ordinary fields, and inside an
/// introspection subtree its absolute depth and the lists above.
#[derive(Debug, Clone, Default)]
struct Level<'a> {
    depth: usize,
    nesting: usize,
    introspection: Option<Vec<&'a str>>,
}

struct Walk<'a> {
    doc: &'a ExecutableDocument,
    limits: &'a DocumentLimits,
    aliases: usize,
    fields: usize,
    root_fields: usize,
    /// Fragments being expanded (a cycle is left to validation, which
    /// refuses it).
    fragments: Vec<&'a Name>,
}

impl<'a> Walk<'a> {
    fn selection_set(&mut self, set: &'a Positioned<SelectionSet>, level: Level<'a>) -> Result<(), Refusal> {
        if level.nesting >= self.limits.max_nesting {
            return Err(Refusal::nested_too_deep(set.pos));
        }
        for selection in &set.node.items {
            match &selection.node {
                Selection::Field(field) => {
                    let pos = field.pos;
                    let field = &field.node;
                    self.fields += 1;
                    if self.fields > self.limits.max_fields {
                        return Err(Refusal::new(pos, "Query is too complex."));
                    }
                    if field.alias.is_some() {
                        self.aliases += 1;
                        if self.aliases > self.limits.max_aliases {
                            return Err(Refusal::new(
                                pos,
                                format!("too many aliases: at most {} per document", self.limits.max_aliases),
                            ));
                        }
                    }
                    if level.depth == 0 && level.introspection.is_none() {
                        self.root_fields += 1;
                        if self.root_fields > self.limits.max_root_fields {
                            return Err(Refusal::new(
                                pos,
                                format!("too many root fields: at most {} per operation", self.limits.max_root_fields),
                            ));
                        }
                    }
                    let name = field.name.node.as_str();
                    let introspection = match &level.introspection {
                        Some(lists) => Some(lists.clone()),
                        None if INTROSPECTION_ROOTS.contains(&name) => Some(Vec::new()),
                        None => None,
                    };
                    let depth = level.depth + 1;
                    let introspection = match introspection {
                        Some(mut lists) => {
                            if depth > self.limits.max_introspection_depth {
                                return Err(Refusal::nested_too_deep(pos));
                            }
                            if INTROSPECTION_LISTS.contains(&name) {
                                if lists.contains(&name) || lists.len() == MAX_INTROSPECTION_LISTS {
                                    return Err(Refusal::new(
                                        pos,
                                        format!(
                                            "introspection may nest at most {MAX_INTROSPECTION_LISTS} lists, \
                                             each once (as the standard introspection query does)"
                                        ),
                                    ));
                                }
                                lists.push(name);
                            }
                            Some(lists)
                        }
                        None if depth > self.limits.max_depth => return Err(Refusal::nested_too_deep(pos)),
                        None => None,
                    };
                    if !field.selection_set.node.items.is_empty() {
                        let inner = Level { depth, nesting: level.nesting + 1, introspection };
                        self.selection_set(&field.selection_set, inner)?;
                    }
                }
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    let Some(fragment) = self.doc.fragments.get(name) else { continue };
                    if self.fragments.contains(&name) {
                        continue;
                    }
                    self.fragments.push(name);
                    let inner = Level { nesting: level.nesting + 1, ..level.clone() };
                    self.selection_set(&fragment.node.selection_set, inner)?;
                    self.fragments.pop();
                }
                Selection::InlineFragment(inline) => {
                    let inner = Level { nesting: level.nesting + 1, ..level.clone() };
                    self.selection_set(&inline.node.selection_set, inner)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &str) -> Result<(), String> {
        let doc = parser::parse_query(query).expect("test documents parse");
        DocumentLimits::new(&Limits::default()).check(&doc).map_err(|r| r.message)
    }

    fn nested(depth: usize) -> String {
        format!("{{ {}__typename{} }}", "me { ".repeat(depth - 1), " }".repeat(depth - 1))
    }

    #[test]
    fn depth_counts_fields_through_fragments() {
        assert!(check(&nested(12)).is_ok());
        assert_eq!(check(&nested(13)).unwrap_err(), "Query is nested too deep.");
        let inner = format!("{}__typename{}", "me { ".repeat(11), " }".repeat(11));
        let through_fragment = format!("{{ me {{ ...F }} }} fragment F on Me {{ {inner} }}");
        assert_eq!(check(&through_fragment).unwrap_err(), "Query is nested too deep.");
    }

    #[test]
    fn introspection_has_its_own_depth_and_no_cycles() {
        let standard = include_str!("../../tests/fixtures/introspection-query.graphql");
        assert!(check(standard).is_ok());
        let cycle = "{ __schema { types { fields { type { fields { name } } } } } }";
        assert!(check(cycle).unwrap_err().contains("introspection may nest"));
        let four = "{ __schema { types { possibleTypes { fields { args { name } } } } } }";
        assert!(check(four).unwrap_err().contains("introspection may nest"));
        let deep = format!("{{ __type(name: \"Customer\") {{ {}name{} }} }}", "ofType { ".repeat(20), " }".repeat(20));
        assert_eq!(check(&deep).unwrap_err(), "Query is nested too deep.");
    }

    #[test]
    fn aliases_and_root_fields_are_counted() {
        let aliases =
            |n: usize| format!("{{ me {{ {} }} }}", (0..n).map(|i| format!("a{i}: __typename ")).collect::<String>());
        assert!(check(&aliases(Limits::default().max_aliases)).is_ok());
        assert!(check(&aliases(Limits::default().max_aliases + 1)).unwrap_err().contains("too many aliases"));
        let roots = |n: usize| format!("{{ {} }}", "__typename ".repeat(n));
        assert!(check(&roots(Limits::default().max_root_fields)).is_ok());
        assert!(check(&roots(Limits::default().max_root_fields + 1)).unwrap_err().contains("too many root fields"));
    }

    #[test]
    fn fragment_bombs_stop_at_the_field_budget() {
        let mut doc = String::from("{ me { ...F0 } }");
        for i in 0..12 {
            doc += &format!(" fragment F{i} on Me {{ {} }}", format!("...F{} ", i + 1).repeat(10));
        }
        doc += " fragment F12 on Me { __typename }";
        assert_eq!(check(&doc).unwrap_err(), "Query is too complex.");
        assert!(check("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A __typename }").is_ok());
    }

    /// The cost async-graphql computes for a document with our schema.
    fn cost(query: &str) -> usize {
        use async_graphql::ValidationResult;
        use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation};
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Measure(Arc<Mutex<usize>>);
        impl ExtensionFactory for Measure {
            fn create(&self) -> Arc<dyn Extension> {
                Arc::new(self.clone())
            }
        }
        #[async_trait::async_trait]
        impl Extension for Measure {
            async fn validation(
                &self,
                ctx: &ExtensionContext<'_>,
                next: NextValidation<'_>,
            ) -> Result<ValidationResult, Vec<ServerError>> {
                let result = next.run(ctx).await?;
                *self.0.lock().unwrap() = result.complexity;
                // Stop here: nothing is set up to execute.
                Err(vec![ServerError::new("measured", None)])
            }
        }
        let measure = Measure::default();
        let schema = super::super::builder().extension(measure.clone()).finish();
        let response = futures_executor(schema.execute(query));
        assert_eq!(response.errors[0].message, "measured", "{query}: {:?}", response.errors);
        *measure.0.lock().unwrap()
    }

    fn futures_executor<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(future)
    }

    #[test]
    fn lists_cost_their_rows_times_their_selection() {
        // 20 × (edges 1 + node 1 + name 1 + tags 20 × (tag 4 + taggedBy 2)).
        let page = "{ customers(first: 20) { edges { node { name tags { tag { name group { name } } taggedBy { login } } } } } }";
        assert_eq!(cost(page), 20 * (3 + 20 * 6));
        assert_eq!(cost("{ customers { totalCount } }"), 20);
        assert_eq!(cost("{ customers(first: 500) { totalCount } }"), 100);
        assert_eq!(cost("query($n: Int) { customers(first: $n) { totalCount } }"), 20);
        assert_eq!(cost("{ customers(first: -4) { totalCount } }"), 1);
        let aliased: String = (0..250).map(|i| format!("a{i}: customers(first: 100) {{ totalCount }} ")).collect();
        assert!(cost(&format!("{{ {aliased} }}")) > Limits::default().max_query_complexity);
        let library =
            "{ tagLibrary(orgUnitId: 1) { layers { orgUnit { code } groups { name tags { id name version } } } } }";
        assert_eq!(cost(library), 1 + 3 * (2 + 30 * (1 + 20 * 3)));
        // Introspection is not priced by rows: the standard query is cheap.
        assert!(cost(include_str!("../../tests/fixtures/introspection-query.graphql")) < 1_000);
    }

    #[test]
    fn page_cost_clamps_like_page_size() {
        assert_eq!(page_cost(None, 3), 60);
        assert_eq!(page_cost(Some(-5), 3), 3);
        assert_eq!(page_cost(Some(10_000), 3), 300);
        assert_eq!(list_cost(TAGS_PER_CUSTOMER, 0), 20);
    }
}
