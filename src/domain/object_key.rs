//! Keys of versioned library objects (`tag:5`, `tag_group:2`), as change
//! requests store their base versions and as callers name what they read.
//! Built and read here only, so nothing else formats or splits the text.

use std::{cmp::Ordering, collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{TagGroupId, TagId};

/// The kinds of versioned objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Tag,
    TagGroup,
}

impl ObjectKind {
    /// As stored in `library_version.object_kind` and
    /// `change_request.target_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tag => "TAG",
            Self::TagGroup => "TAG_GROUP",
        }
    }

    /// The prefix of the key (`tag`, `tag_group`), also the audit log's
    /// object type.
    pub fn key_prefix(self) -> &'static str {
        match self {
            Self::Tag => "tag",
            Self::TagGroup => "tag_group",
        }
    }
}

/// One versioned object: a tag or a tag group, by row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub id: i64,
}

impl ObjectKey {
    pub fn tag(id: TagId) -> Self {
        Self { kind: ObjectKind::Tag, id: id.0 }
    }

    pub fn tag_group(id: TagGroupId) -> Self {
        Self { kind: ObjectKind::TagGroup, id: id.0 }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.key_prefix(), self.id)
    }
}

impl FromStr for ObjectKey {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (prefix, id) = raw.split_once(':').ok_or_else(|| format!("{raw:?} is not an object key"))?;
        let kind = match prefix {
            "tag" => ObjectKind::Tag,
            "tag_group" => ObjectKind::TagGroup,
            _ => return Err(format!("unknown versioned object {raw:?}")),
        };
        let id = id.parse().map_err(|_| format!("{raw:?} has no row id"))?;
        Ok(Self { kind, id })
    }
}

/// Ordered as the text keys always were (`tag:10` before `tag:5`), so
/// stored base versions and error messages keep their order.
impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.to_string().cmp(&other.to_string())
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for ObjectKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ObjectKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// Versions of the objects an edit touches, by key: as read by the caller,
/// or as a change request was made against.
pub type Versions = BTreeMap<ObjectKey, i32>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_round_trips_through_its_text() {
        for key in [ObjectKey::tag(TagId(5)), ObjectKey::tag_group(TagGroupId(12))] {
            assert_eq!(key.to_string().parse::<ObjectKey>(), Ok(key));
        }
        assert_eq!(ObjectKey::tag(TagId(5)).to_string(), "tag:5");
        assert_eq!(ObjectKey::tag_group(TagGroupId(2)).to_string(), "tag_group:2");
    }

    #[test]
    fn versions_serialise_as_the_stored_json_map() {
        let versions: Versions = [(ObjectKey::tag(TagId(5)), 3), (ObjectKey::tag(TagId(10)), 1)].into();
        let json = serde_json::to_value(&versions).unwrap();
        assert_eq!(json, serde_json::json!({ "tag:5": 3, "tag:10": 1 }));
        let back: Versions = serde_json::from_value(json).unwrap();
        assert_eq!(back, versions);
    }

    #[test]
    fn unknown_kinds_and_bad_ids_are_refused() {
        for raw in ["segment:1", "tag", "tag:x", ":4"] {
            assert!(raw.parse::<ObjectKey>().is_err(), "{raw}");
        }
    }
}
