//! The layers point one way: `graphql` (and the other outer layers) →
//! `service` → {`segment`, `store`, `authz`, `domain`} → the crate-wide
//! basics (`error`, `config`, …) → the `entity` crate. This test reads every
//! file of `src/`, resolves its `crate::`, `super::` and `self::` paths to
//! the files they name, and fails on an import that points up a layer and
//! on an import cycle among the files below `graphql` (GraphQL object types
//! may refer to each other; nothing else may). It prints the offending
//! import or the cycle. A path that names a re-exported item leads to the
//! file that defines it; a `mod.rs` re-exporting its children's items does
//! not import them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Layers, lowest first. A file may import files of its own layer or
/// lower ones.
const LAYERS: &[(&str, &[&str])] = &[
    ("basics", &["error", "config", "request_id"]),
    ("domain, store, authz, segment", &["domain", "store", "authz", "segment"]),
    ("service", &["service"]),
    (
        "outer (graphql, sign-in, http, start-up, tools)",
        &[
            "graphql",
            "auth",
            "http",
            "startup",
            "cli",
            "bench",
            "seed",
            "playground",
            "state",
            "db",
            "rate_limit",
            "observability",
            "fuzz",
        ],
    ),
];

/// Cycles are looked for below the outer layer: GraphQL object types
/// refer to each other, and so may the outer layer's files.
fn cycles_checked(file: &str) -> bool {
    layer_of(file).is_some_and(|l| l + 1 < LAYERS.len())
}

/// Imports known to break the rules, each with the work that removes it:
/// none today. An entry that no longer matches an import fails the test,
/// so the list only shrinks.
const KNOWN: &[(&str, &str)] = &[];

#[derive(Debug, Clone)]
struct Import {
    to: String,
    path: String,
}

fn main_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `src/lib.rs` is the
/// crate root.
fn module_of(rel: &str) -> Vec<String> {
    let rel = rel.trim_start_matches("src/").trim_end_matches(".rs");
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every path a file uses, with the inline module it is written in
/// (`mod tests { use super::*; }` is one level below the file).
#[derive(Default)]
struct Paths {
    inline: Vec<String>,
    /// (inline module, path, written in a `pub use`).
    found: Vec<(Vec<String>, Vec<String>, bool)>,
    /// Items the file re-exports at its top level: name → path.
    reexports: BTreeMap<String, Vec<String>>,
}

impl Paths {
    fn push(&mut self, segments: Vec<String>, public_use: bool) {
        if segments.len() > 1 {
            self.found.push((self.inline.clone(), segments, public_use));
        }
    }
}

/// The paths of a `use` tree, each with the name it brings in (none for
/// a glob).
fn use_tree(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Option<String>, Vec<String>)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_tree(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut full = prefix.clone();
            if n.ident != "self" {
                full.push(n.ident.to_string());
            }
            out.push((full.last().cloned(), full));
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix.clone();
            if r.ident != "self" {
                full.push(r.ident.to_string());
            }
            out.push((Some(r.rename.to_string()), full));
        }
        syn::UseTree::Glob(_) => out.push((None, prefix.clone())),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_tree(t, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut out = Vec::new();
        use_tree(&item.tree, &mut Vec::new(), &mut out);
        let public = !matches!(item.vis, syn::Visibility::Inherited);
        for (name, path) in out {
            if public
                && self.inline.is_empty()
                && let Some(name) = name
            {
                self.reexports.insert(name, path.clone());
            }
            self.push(path, public);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if item.content.is_some() {
            self.inline.push(item.ident.to_string());
            syn::visit::visit_item_mod(self, item);
            self.inline.pop();
        }
    }

    // `pub(super)` names no import.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.push(path.segments.iter().map(|s| s.ident.to_string()).collect(), false);
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Paths inside macro calls (`json!`, `format!`, …) are tokens:
        // read `crate :: a :: b` runs from them.
        let tokens: Vec<String> = mac.tokens.clone().into_iter().map(|t| t.to_string()).collect();
        let mut i = 0;
        while i < tokens.len() {
            if matches!(tokens[i].as_str(), "crate" | "super" | "self") {
                let mut segments = vec![tokens[i].clone()];
                let mut j = i + 1;
                while j + 2 < tokens.len() + 1
                    && tokens.get(j).is_some_and(|t| t == ":")
                    && tokens.get(j + 1).is_some_and(|t| t == ":")
                    && tokens.get(j + 2).is_some_and(|t| t.chars().all(|c| c.is_alphanumeric() || c == '_'))
                {
                    segments.push(tokens[j + 2].clone());
                    j += 3;
                }
                if segments.len() > 1 {
                    self.push(segments, false);
                }
                i = j;
            } else {
                i += 1;
            }
        }
        syn::visit::visit_macro(self, mac);
    }
}

/// What resolving reads: the crate's modules (module path → file) and
/// what each file re-exports.
#[derive(Default)]
struct Crate {
    modules: BTreeMap<Vec<String>, String>,
    reexports: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

/// The file a path names: the longest prefix of its module path that is a
/// module of the crate, followed through that module's re-exports
/// (`super::TagId` in `domain/object_key.rs` names `domain/id.rs`).
fn resolve(krate: &Crate, file_module: &[String], inline: &[String], segments: &[String]) -> Option<String> {
    resolve_in(krate, file_module, inline, segments, 0)
}

fn resolve_in(
    krate: &Crate,
    file_module: &[String],
    inline: &[String],
    segments: &[String],
    depth: usize,
) -> Option<String> {
    let modules = &krate.modules;
    let mut here: Vec<String> = file_module.iter().chain(inline).cloned().collect();
    let mut rest = segments;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            here.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                here.pop();
                rest = &rest[1..];
            }
        }
        // `use id::TagId;` in `domain/mod.rs`: a child module, named
        // without `self::`. Anything else is an extern crate or a local name.
        Some(first) => {
            let mut child = here.clone();
            child.push(first.to_owned());
            if !modules.contains_key(&child) {
                return None;
            }
        }
        None => return None,
    }
    // Inline modules are part of their file.
    let mut target: Vec<String> = here;
    target.extend(rest.iter().cloned());
    let n = (0..=target.len()).rev().find(|n| modules.contains_key(&target[..*n]))?;
    let file = modules[&target[..n]].clone();
    let reexported = target.get(n).and_then(|item| krate.reexports.get(&file)?.get(item));
    match reexported {
        Some(path) if depth < 8 => {
            let mut path = path.clone();
            path.extend(target[n + 1..].iter().cloned());
            resolve_in(krate, &module_of(&file), &[], &path, depth + 1).or(Some(file))
        }
        _ => Some(file),
    }
}

/// True when `module` is below `parent`: a module re-exporting its own
/// children's items (`pub use id::TagId;`) gives them a shorter name, and
/// that is no import; calling into a child is one.
fn within(module: &[String], parent: &[String]) -> bool {
    module.len() > parent.len() && module.starts_with(parent)
}

fn layer_of(rel: &str) -> Option<usize> {
    let top = module_of(rel).into_iter().next()?;
    LAYERS.iter().position(|(_, tops)| tops.contains(&top.as_str()))
}

fn graph() -> BTreeMap<String, Vec<Import>> {
    let src = main_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rel = |p: &Path| format!("src/{}", p.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/"));
    let mut krate = Crate::default();
    let mut parsed = Vec::new();
    for path in &files {
        let from = rel(path);
        if from == "src/main.rs" {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("read file");
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{from}: {e}"));
        let mut paths = Paths::default();
        paths.visit_file(&ast);
        krate.modules.insert(module_of(&from), from.clone());
        krate.reexports.insert(from.clone(), std::mem::take(&mut paths.reexports));
        parsed.push((from, paths));
    }
    let mut graph = BTreeMap::new();
    for (from, paths) in parsed {
        if from == "src/lib.rs" {
            continue;
        }
        let file_module = module_of(&from);
        let mut imports: Vec<Import> = Vec::new();
        for (inline, segments, public_use) in paths.found {
            if let Some(to) = resolve(&krate, &file_module, &inline, &segments)
                && to != from
                && to != "src/lib.rs"
                && !(public_use && within(&module_of(&to), &file_module))
                && !imports.iter().any(|i| i.to == to)
            {
                imports.push(Import { to, path: segments.join("::") });
            }
        }
        graph.insert(from, imports);
    }
    graph
}

fn known(from: &str, to: &str) -> bool {
    KNOWN.contains(&(from, to))
}

#[test]
fn every_module_of_src_has_a_layer() {
    let missing: Vec<String> = graph().keys().filter(|f| layer_of(f).is_none()).cloned().collect();
    assert!(missing.is_empty(), "give these files' top modules a layer in tests/layers.rs: {missing:?}");
}

#[test]
fn no_file_imports_a_higher_layer() {
    let graph = graph();
    let mut upward = Vec::new();
    for (from, imports) in &graph {
        let Some(here) = layer_of(from) else { continue };
        for import in imports {
            let Some(there) = layer_of(&import.to) else { continue };
            if there > here && !known(from, &import.to) {
                upward.push(format!(
                    "{from} ({}) imports {} ({}) through `{}`",
                    LAYERS[here].0, import.to, LAYERS[there].0, import.path
                ));
            }
        }
    }
    assert!(upward.is_empty(), "imports that point up a layer:\n  {}", upward.join("\n  "));
}

/// True for a `mod.rs` calling into its own child file when that child
/// uses the parent's items back (`authz/mod.rs` and `authz/table.rs`): one
/// module split over files, not two modules that need each other.
fn split_of_one_module(graph: &BTreeMap<String, Vec<Import>>, from: &str, to: &str) -> bool {
    within(&module_of(to), &module_of(from)) && graph.get(to).is_some_and(|back| back.iter().any(|i| i.to == from))
}

/// Strongly connected components of the graph without the allowed files
/// and known edges (Tarjan), each as a cycle through its files.
fn cycles(graph: &BTreeMap<String, Vec<Import>>) -> Vec<Vec<String>> {
    let nodes: Vec<&String> = graph.keys().filter(|f| cycles_checked(f)).collect();
    let index_of: BTreeMap<&String, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let edges: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            graph[*n]
                .iter()
                .filter(|i| !known(n, &i.to) && !split_of_one_module(graph, n, &i.to))
                .filter_map(|i| index_of.get(&i.to).copied())
                .collect()
        })
        .collect();
    struct Tarjan<'a> {
        edges: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        found: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.edges[v] {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let n = nodes.len();
    let mut t = Tarjan {
        edges: &edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    // Print each component as one cycle: a shortest way back to its first
    // file, through files of the component.
    t.found
        .iter()
        .map(|component| {
            let start = *component.iter().min().expect("a component has files");
            let members: BTreeSet<usize> = component.iter().copied().collect();
            let mut previous: BTreeMap<usize, usize> = BTreeMap::new();
            let mut frontier = vec![start];
            'search: while !frontier.is_empty() {
                let mut next = Vec::new();
                for v in frontier {
                    for &w in &edges[v] {
                        if !members.contains(&w) || previous.contains_key(&w) {
                            continue;
                        }
                        previous.insert(w, v);
                        if w == start {
                            break 'search;
                        }
                        next.push(w);
                    }
                }
                frontier = next;
            }
            let mut cycle = vec![nodes[start].clone()];
            let mut at = previous[&start];
            while at != start {
                cycle.push(nodes[at].clone());
                at = previous[&at];
            }
            cycle.push(nodes[start].clone());
            cycle.reverse();
            cycle
        })
        .collect()
}

#[test]
fn no_import_cycle_below_graphql() {
    let found = cycles(&graph());
    let shown: Vec<String> = found.iter().map(|c| c.join(" → ")).collect();
    assert!(shown.is_empty(), "import cycles:\n  {}", shown.join("\n  "));
}

#[test]
fn every_known_exception_still_exists() {
    let graph = graph();
    for (from, to) in KNOWN {
        assert!(
            graph.get(*from).is_some_and(|imports| imports.iter().any(|i| i.to == *to)),
            "{from} no longer imports {to}: remove the entry from KNOWN in tests/layers.rs"
        );
    }
}

#[test]
fn the_checker_sees_a_cycle_and_an_upward_import() {
    let mut graph: BTreeMap<String, Vec<Import>> = BTreeMap::new();
    let edge = |to: &str| Import { to: to.to_owned(), path: String::new() };
    graph.insert("src/service/a.rs".into(), vec![edge("src/service/b.rs")]);
    graph.insert("src/service/b.rs".into(), vec![edge("src/service/a.rs")]);
    graph.insert("src/graphql/x.rs".into(), vec![edge("src/graphql/y.rs")]);
    graph.insert("src/graphql/y.rs".into(), vec![edge("src/graphql/x.rs")]);
    // A parent calling its child that calls a sibling that imports the
    // parent is a cycle; a child using its own parent's items is not.
    graph.insert("src/service/lib/mod.rs".into(), vec![edge("src/service/lib/op.rs")]);
    graph.insert("src/service/lib/op.rs".into(), vec![edge("src/service/gov.rs")]);
    graph.insert("src/service/gov.rs".into(), vec![edge("src/service/lib/mod.rs")]);
    graph.insert("src/authz/mod.rs".into(), vec![edge("src/authz/table.rs")]);
    graph.insert("src/authz/table.rs".into(), vec![edge("src/authz/mod.rs")]);
    let cycle = |files: &[&str]| files.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>();
    let mut found = cycles(&graph);
    found.sort();
    assert_eq!(
        found,
        vec![
            cycle(&["src/service/a.rs", "src/service/b.rs", "src/service/a.rs"]),
            cycle(&["src/service/gov.rs", "src/service/lib/mod.rs", "src/service/lib/op.rs", "src/service/gov.rs"]),
        ]
    );
    assert!(layer_of("src/store/event_log.rs") < layer_of("src/service/tagging.rs"));
    let seg = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    let krate = Crate {
        modules: [
            (seg("service"), "src/service/mod.rs".to_owned()),
            (seg("service::library"), "src/service/library/mod.rs".to_owned()),
            (seg("service::library::merge"), "src/service/library/merge.rs".to_owned()),
        ]
        .into(),
        reexports: [(
            "src/service/library/mod.rs".to_owned(),
            [("merged_family".to_owned(), seg("self::merge::merged_family"))].into(),
        )]
        .into(),
    };
    let from = module_of("src/service/library/merge.rs");
    assert_eq!(resolve(&krate, &from, &[], &seg("super::Author")), Some("src/service/library/mod.rs".into()));
    assert_eq!(
        resolve(&krate, &from, &["tests".to_owned()], &seg("super::merge")),
        Some("src/service/library/merge.rs".into())
    );
    assert_eq!(resolve(&krate, &from, &[], &seg("crate::service::NewestFirst")), Some("src/service/mod.rs".into()));
    assert_eq!(
        resolve(&krate, &from, &[], &seg("crate::service::library::merged_family")),
        Some("src/service/library/merge.rs".into())
    );
}
