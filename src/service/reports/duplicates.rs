//! Probable duplicate tags: pairs of active enterprise tags, among the
//! layers of an org unit's effective library and of the units below it,
//! that are probably one idea. Each pair says why:
//!
//! - `SAME_NAME`: equal names once normalised (NFKC, case, spaces), in
//!   different layers — 黄金会员 in two regions;
//! - `ALIAS_COLLISION`: a name or alias of one is an alias of the other;
//! - `SIMILAR_NAME`: names at most the unit's edit distance apart
//!   (Levenshtein on characters; only names of at least `2d + 2`
//!   characters, so that `S级`/`A级` do not count, and not names that
//!   differ in digits only, a numbered series such as `孩子0-3岁`/`孩子3-6岁`);
//! - `HOLDER_OVERLAP`: the customers holding them overlap at least the
//!   unit's Jaccard threshold (from the index's bitmaps; left out while the
//!   index builds). A 32-slot MinHash sketch per tag spares the exact
//!   intersection of the pairs that cannot come near the threshold.
//!
//! Each pair proposes the merges that fold it into one canonical tag, as
//! the existing `mergeTags` edit (applied or filed as the policy says): a
//! tag's holders must stay within the canonical tag's library, so the
//! canonical tag is the one whose layer contains the other's; for tags of
//! sibling layers it is an active tag of the same name (or alias) in a
//! layer above both, and both merge into it; when there is none the pair
//! has no proposal and says so.

use std::collections::{HashMap, HashSet};

use entity::{tag, tag_group};
use roaring::RoaringBitmap;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use unicode_normalization::UnicodeNormalization;

use super::report_unit;
use super::usage::{self, Recency, TagUsage};
use crate::authz::Principal;
use crate::authz::visibility::group_visible;
use crate::domain::{ObjectKey, OrgUnitId, Reason, TagId};
use crate::error::{AppError, AppResult};
use crate::segment::SegmentIndex;
use crate::service::library::{self, EditContext, EditOutcome, LibraryEdit, aliases_of};
use crate::service::tag_library::tags_of_groups;

/// Why two tags are probably one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DuplicateReason {
    SameName,
    AliasCollision,
    SimilarName,
    HolderOverlap,
}

impl DuplicateReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SameName => "SAME_NAME",
            Self::AliasCollision => "ALIAS_COLLISION",
            Self::SimilarName => "SIMILAR_NAME",
            Self::HolderOverlap => "HOLDER_OVERLAP",
        }
    }
}

/// One merge of a proposal: `source` into `target`.
#[derive(Debug, Clone)]
pub struct ProposedMerge {
    pub target: tag::Model,
    pub source: tag::Model,
}

/// A pair of probable duplicates.
#[derive(Debug, Clone)]
pub struct DuplicatePair {
    pub a: TagUsage,
    pub b: TagUsage,
    pub reasons: Vec<DuplicateReason>,
    /// Names' edit distance (characters).
    pub edit_distance: usize,
    /// Holder overlap; `None` while the index builds.
    pub jaccard: Option<f64>,
    /// The two tags are in sibling layers (neither layer contains the other).
    pub sibling_scopes: bool,
    /// The tag the pair would become.
    pub canonical: Option<tag::Model>,
    /// The merges that fold the pair into `canonical`, in order.
    pub merges: Vec<ProposedMerge>,
    /// Why there is no proposal, when there is none.
    pub note: Option<String>,
}

/// A name as compared: NFKC, lower case, no white space.
pub fn normalise(name: &str) -> String {
    name.nfkc().flat_map(char::to_lowercase).filter(|c| !c.is_whitespace()).collect()
}

fn names_of(t: &tag::Model) -> (String, HashSet<String>) {
    (normalise(&t.name), aliases_of(t).iter().map(|a| normalise(a)).collect())
}

/// The probable duplicates among the tags the caller sees in the unit's
/// effective library and below it, strongest reasons first.
///
/// # Errors
/// `NOT_FOUND` for a unit the caller does not know, `FORBIDDEN` without
/// `report:read` there; database errors.
#[tracing::instrument(skip(db, index, principal), fields(staff = principal.staff.id))]
pub async fn duplicate_tags(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    unit: OrgUnitId,
) -> AppResult<Vec<DuplicatePair>> {
    let found = report_unit(principal, unit)?;
    let org = &principal.org;
    let layers: HashSet<i64> = org
        .ancestors_or_self(found.id)
        .into_iter()
        .map(|u| u.id)
        .chain(org.subtree(found.id).map(|u| u.id))
        .filter(|u| principal.may_read_library_layer(*u))
        .collect();
    let groups: HashMap<i64, tag_group::Model> = tag_group::Entity::find()
        .filter(tag_group::Column::OrgUnitId.is_in(layers.iter().copied()))
        .order_by_asc(tag_group::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .filter(|g| group_visible(principal, g, None))
        .map(|g| (g.id, g))
        .collect();
    let group_ids: Vec<i64> = groups.keys().copied().collect();
    let tags: Vec<tag::Model> = tags_of_groups(db, &group_ids, false).await?.into_values().flatten().collect();
    let usage = usage::usage_of(db, index, principal, found.id, groups.clone(), tags, Recency::Later).await?;
    let settings = usage.settings.clone();
    let max_distance = usize::try_from(settings.duplicate_edit_distance).unwrap_or(0);
    let rows = usage.rows;
    let names: Vec<(String, HashSet<String>)> = rows.iter().map(|r| names_of(&r.tag)).collect();
    let lengths: Vec<usize> = names.iter().map(|(n, _)| n.chars().count()).collect();
    let layer_of = |r: &TagUsage| r.group.org_unit_id;
    let signatures: Option<HashMap<i64, Sketch>> =
        usage.holders.as_ref().map(|h| h.iter().map(|(t, b)| (*t, min_hashes(b))).collect());
    let mut pairs = Vec::new();
    for i in 0..rows.len() {
        for j in (i + 1)..rows.len() {
            let (a, b) = (&rows[i], &rows[j]);
            let (na, aa) = &names[i];
            let (nb, ab) = &names[j];
            let mut reasons = Vec::new();
            if na == nb && layer_of(a) != layer_of(b) {
                reasons.push(DuplicateReason::SameName);
            }
            if ab.contains(na) || aa.contains(nb) || !aa.is_disjoint(ab) {
                reasons.push(DuplicateReason::AliasCollision);
            }
            let short = lengths[i].min(lengths[j]);
            // Names whose lengths differ by more than the distance cannot be
            // that close: spare the comparison (most pairs).
            let same_exclusive_group = a.group.id == b.group.id && a.group.exclusive;
            let eligible = lengths[i].abs_diff(lengths[j]) <= max_distance
                && short >= 2 * max_distance + 2
                && !same_exclusive_group
                && !numbered_series(na, nb);
            let mut distance = if eligible { strsim::levenshtein(na, nb) } else { usize::MAX };
            if distance > 0 && distance <= max_distance {
                reasons.push(DuplicateReason::SimilarName);
            }
            let held = usage.holders.as_ref().and_then(|h| Some((h.get(&a.tag.id)?, h.get(&b.tag.id)?)));
            let mut overlap = None;
            let sketched = signatures.as_ref().is_none_or(|sig| {
                sig.get(&a.tag.id)
                    .zip(sig.get(&b.tag.id))
                    .is_some_and(|(x, y)| may_overlap(x, y, settings.duplicate_jaccard))
            });
            if let Some((ha, hb)) = held
                .filter(|(ha, hb)| sketched && !same_exclusive_group && may_reach(ha, hb, settings.duplicate_jaccard))
            {
                let j = jaccard(ha, hb);
                overlap = Some(j);
                if j >= settings.duplicate_jaccard && !same_exclusive_group {
                    reasons.push(DuplicateReason::HolderOverlap);
                }
            }
            if reasons.is_empty() {
                continue;
            }
            let overlap = overlap.or_else(|| held.map(|(ha, hb)| jaccard(ha, hb)));
            if distance == usize::MAX {
                distance = strsim::levenshtein(na, nb);
            }
            pairs.push(propose(principal, &rows, a.clone(), b.clone(), reasons, distance, overlap));
        }
    }
    // Recency only for the tags of the pairs (a few), not the library.
    let mut paired: HashMap<i64, TagUsage> = HashMap::new();
    for p in &pairs {
        paired.entry(p.a.tag.id).or_insert_with(|| p.a.clone());
        paired.entry(p.b.tag.id).or_insert_with(|| p.b.clone());
    }
    usage::add_recency(db, principal, &usage.scope, &settings, usage.now, paired.values_mut().collect()).await?;
    for p in &mut pairs {
        for side in [&mut p.a, &mut p.b] {
            if let Some(filled) = paired.get(&side.tag.id) {
                *side = filled.clone();
            }
        }
    }
    pairs.sort_by(|x, y| {
        x.reasons.first().cmp(&y.reasons.first()).then(x.a.tag.id.cmp(&y.a.tag.id)).then(x.b.tag.id.cmp(&y.b.tag.id))
    });
    Ok(pairs)
}

/// Slots of a holder set's MinHash sketch.
const SKETCH: usize = 32;

/// Holder sets from this size on are sketched with one hash (one
/// permutation, 32 bins) instead of 32: a bin is then empty with a
/// probability under 1e-14, and the sketch costs one hash per holder
/// instead of 32 (about 0.1 s instead of 0.5 s for 19M assignments).
const ONE_HASH_FROM: u64 = 1024;

/// A MinHash sketch: per slot, the smallest hash of a member, and which
/// kind of sketch it is (sketches of different kinds do not compare).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sketch {
    one_hash: bool,
    mins: [u64; SKETCH],
}

/// A 64-bit mix of a member id (splitmix64's finaliser).
fn mix(x: u64) -> u64 {
    let h = (x ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let h = (h ^ (h >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 29)
}

/// The MinHash sketch of a set (`u64::MAX` in an empty slot). Small sets:
/// per hash function of 32, the smallest hash of a member. Sets of
/// [`ONE_HASH_FROM`] or more: one-permutation hashing, one hash per member
/// whose top 5 bits choose its slot, the smallest per slot. Either way two
/// sets' slots are equal with a probability of their Jaccard index.
fn min_hashes(members: &RoaringBitmap) -> Sketch {
    let mut mins = [u64::MAX; SKETCH];
    let one_hash = members.len() >= ONE_HASH_FROM;
    if one_hash {
        for m in members {
            let h = mix(u64::from(m));
            let slot = usize::try_from(h >> 59).unwrap_or(0);
            mins[slot] = mins[slot].min(h);
        }
        return Sketch { one_hash, mins };
    }
    for m in members {
        let x = u64::from(m);
        for (i, slot) in mins.iter_mut().enumerate() {
            // Multiply-shift hashing with a distinct odd constant per function.
            let seed = 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(2 * i as u64 + 1);
            let h = (x ^ seed).wrapping_mul(0xBF58_476D_1CE4_E5B9).rotate_left(31).wrapping_mul(seed | 1);
            *slot = (*slot).min(h);
        }
    }
    Sketch { one_hash, mins }
}

/// False when the sketches make a Jaccard index of `threshold` or more
/// all but impossible: the share of equal minima estimates the index, and
/// fewer than half the expected matches for `threshold` (12 of 32 at 0.8)
/// happens to a pair at the threshold with a probability under 1e-6. Only
/// pairs passing this are intersected exactly; so are pairs whose
/// sketches are of different kinds (one set under [`ONE_HASH_FROM`]: the
/// intersection is cheap).
fn may_overlap(a: &Sketch, b: &Sketch, threshold: f64) -> bool {
    if a.one_hash != b.one_hash {
        return true;
    }
    let matches = a.mins.iter().zip(&b.mins).filter(|(x, y)| x == y && **x != u64::MAX).count();
    #[allow(clippy::cast_precision_loss)]
    let needed = (threshold * SKETCH as f64 / 2.0).floor() as usize;
    matches >= needed
}

/// True when two names differ in digits only (`年龄_18-25`, `年龄_26-35`;
/// `孩子0-3岁`, `孩子3-6岁`): members of a numbered series, not duplicates.
fn numbered_series(a: &str, b: &str) -> bool {
    let letters = |s: &str| s.chars().filter(|c| !c.is_ascii_digit()).collect::<String>();
    a != b && letters(a) == letters(b)
}

/// True unless the sizes alone keep two holder sets under `threshold`
/// (the Jaccard index is at most the smaller over the larger).
fn may_reach(a: &RoaringBitmap, b: &RoaringBitmap, threshold: f64) -> bool {
    let (la, lb) = (a.len(), b.len());
    #[allow(clippy::cast_precision_loss)]
    let bound = if la.max(lb) == 0 { 0.0 } else { la.min(lb) as f64 / la.max(lb) as f64 };
    bound >= threshold
}

/// The Jaccard index of two holder sets (0 when both are empty).
fn jaccard(a: &RoaringBitmap, b: &RoaringBitmap) -> f64 {
    let both = a.intersection_len(b);
    let either = a.len() + b.len() - both;
    #[allow(clippy::cast_precision_loss)]
    if either == 0 { 0.0 } else { both as f64 / either as f64 }
}

/// The pair with its proposal.
fn propose(
    principal: &Principal,
    rows: &[TagUsage],
    a: TagUsage,
    b: TagUsage,
    reasons: Vec<DuplicateReason>,
    distance: usize,
    jaccard: Option<f64>,
) -> DuplicatePair {
    let org = &principal.org;
    let (ua, ub) = (a.group.org_unit_id, b.group.org_unit_id);
    let a_above = org.is_within(ub, ua);
    let b_above = org.is_within(ua, ub);
    let mut pair = DuplicatePair {
        reasons,
        edit_distance: distance,
        jaccard,
        sibling_scopes: !a_above && !b_above,
        canonical: None,
        merges: Vec::new(),
        note: None,
        a,
        b,
    };
    let (a, b) = (&pair.a, &pair.b);
    let one_into_other = |target: &TagUsage, source: &TagUsage| {
        (Some(target.tag.clone()), vec![ProposedMerge { target: target.tag.clone(), source: source.tag.clone() }])
    };
    let (canonical, merges) = if a_above && b_above {
        // One layer: the more held survives (the older on a tie).
        if (b.holders, std::cmp::Reverse(b.tag.id)) > (a.holders, std::cmp::Reverse(a.tag.id)) {
            one_into_other(b, a)
        } else {
            one_into_other(a, b)
        }
    } else if a_above {
        one_into_other(a, b)
    } else if b_above {
        one_into_other(b, a)
    } else {
        // Sibling layers: a tag of the same name (or alias) above both.
        let common = org.common_ancestor([ua, ub]);
        let (na, aa) = names_of(&a.tag);
        let (nb, ab) = names_of(&b.tag);
        let above = rows.iter().find(|r| {
            let u = r.group.org_unit_id;
            common.is_some_and(|c| org.is_within(c, u)) && {
                let (n, al) = names_of(&r.tag);
                n == na || n == nb || al.contains(&na) || al.contains(&nb) || aa.contains(&n) || ab.contains(&n)
            }
        });
        match above {
            Some(c) => (
                Some(c.tag.clone()),
                vec![
                    ProposedMerge { target: c.tag.clone(), source: a.tag.clone() },
                    ProposedMerge { target: c.tag.clone(), source: b.tag.clone() },
                ],
            ),
            None => {
                let at = common.and_then(|c| org.get(c)).map_or_else(String::new, |u| u.name.clone());
                pair.note = Some(format!(
                    "the tags are in sibling layers: create the tag in {at} (a layer above both) and merge both into it"
                ));
                (None, Vec::new())
            }
        }
    };
    pair.canonical = canonical;
    pair.merges = merges;
    pair
}

/// Merges each source into the canonical tag, in order, as the normal
/// `mergeTags` edit: applied or filed as a change request as the policy
/// decides for the caller. The canonical tag's version moves with each
/// applied merge (its aliases grow), so the next merge is checked against
/// the version the previous one left. Merges filed as requests are decided
/// one by one; approving one moves the canonical tag, so a later one may
/// come back `STALE` and is filed again from a fresh report.
///
/// # Errors
/// `VALIDATION` for no sources or the canonical tag among them; the first
/// failing edit's error (merges before it stay applied or filed, each in
/// its own transaction, and are in the audit log).
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn merge_duplicates(
    db: &DatabaseConnection,
    principal: &Principal,
    canonical: (TagId, i32),
    sources: &[(TagId, i32)],
    reason: Option<Reason>,
) -> AppResult<Vec<EditOutcome>> {
    if sources.is_empty() {
        return Err(AppError::validation("sources", "name at least one tag to merge"));
    }
    if sources.iter().any(|(s, _)| *s == canonical.0) {
        return Err(AppError::validation("sources", "the canonical tag cannot be merged into itself"));
    }
    let (target, mut target_version) = canonical;
    let mut outcomes = Vec::with_capacity(sources.len());
    for (source, version) in sources {
        let ctx = EditContext {
            expected: [(ObjectKey::tag(target), target_version), (ObjectKey::tag(*source), *version)].into(),
            reason: reason.clone(),
        };
        let outcome =
            library::submit(db, principal, LibraryEdit::MergeTags { target_id: target, source_id: *source }, ctx)
                .await?;
        if let Some(t) = outcome.tag.as_ref().filter(|t| t.id == target.0) {
            target_version = t.version;
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_sets_pass_the_sketch_and_disjoint_ones_do_not() {
        let a: RoaringBitmap = (0..1000).collect();
        let b: RoaringBitmap = (5000..6000).collect();
        let (sa, sb) = (min_hashes(&a), min_hashes(&b));
        assert!(may_overlap(&sa, &sa, 0.8));
        assert!(!may_overlap(&sa, &sb, 0.8));
        let close: RoaringBitmap = (0..1050).collect();
        assert!(may_overlap(&sa, &min_hashes(&close), 0.8), "Jaccard 0.95");
    }

    #[test]
    fn large_sets_are_sketched_with_one_hash_and_still_told_apart() {
        let a: RoaringBitmap = (0..200_000).map(|i| i * 3).collect();
        let sa = min_hashes(&a);
        assert!(sa.one_hash && sa.mins.iter().all(|m| *m != u64::MAX), "no empty slot");
        let near: RoaringBitmap = a.iter().filter(|m| m % 30 != 0).collect();
        assert!(may_overlap(&sa, &min_hashes(&near), 0.8), "Jaccard 0.9");
        let apart: RoaringBitmap = (0..200_000).map(|i| i * 3 + 1).collect();
        assert!(!may_overlap(&sa, &min_hashes(&apart), 0.8), "disjoint");
        let tenth: RoaringBitmap = (0..200_000).map(|i| i * 3 + u32::from(i % 10 != 0)).collect();
        assert!(!may_overlap(&sa, &min_hashes(&tenth), 0.8), "Jaccard about 0.05");
        let small: RoaringBitmap = (0..1000).map(|i| i * 3).collect();
        assert!(may_overlap(&sa, &min_hashes(&small), 0.8), "kinds differ: left to the exact count");
    }

    #[test]
    fn a_numbered_series_is_not_a_similar_name() {
        assert!(numbered_series("孩子0-3岁", "孩子3-6岁"));
        assert!(!numbered_series("黄金会员", "黄金會員"));
        assert_eq!(normalise(" ＶＩＰ 会员 "), "vip会员");
    }
}
