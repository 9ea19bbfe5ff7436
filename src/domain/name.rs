//! Names and short texts.

use regex::Regex;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::error::{AppError, AppResult};

/// Trims, normalises to NFC, and checks the length in characters (not
/// bytes: names are mostly Chinese). NFC first, so `Café` typed with a
/// combining accent and with a precomposed `é` is one name, and uniqueness
/// checks compare what a reader sees.
fn bounded(raw: &str, field: &str, min: usize, max: usize) -> AppResult<String> {
    let value: String = raw.trim().nfc().collect();
    let len = value.chars().count();
    if len < min {
        return Err(AppError::validation(field, "must not be empty"));
    }
    if len > max {
        return Err(AppError::validation(field, format!("must be at most {max} characters (got {len})")));
    }
    if value.chars().any(char::is_control) {
        return Err(AppError::validation(field, "must not contain control characters"));
    }
    if let Some(c) = value.chars().find(|&c| is_invisible(c)) {
        return Err(AppError::validation(
            field,
            format!("must not contain invisible or direction-changing characters (U+{:04X})", u32::from(c)),
        ));
    }
    Ok(value)
}

/// Characters that change how a name looks without being seen: every
/// format character (general category Cf: the bidi embeddings, overrides
/// and isolates U+202A–U+202E and U+2066–U+2069, the marks U+200E/U+200F
/// and U+061C, zero-width spaces and joiners, U+FEFF, …) and the fillers
/// and joiners that render as nothing although they are letters or marks.
/// Ordinary spaces stay as they are.
fn is_invisible(c: char) -> bool {
    const BLANK_LOOKING: [char; 7] = [
        '\u{034F}', // combining grapheme joiner
        '\u{115F}', // Hangul choseong filler
        '\u{1160}', // Hangul jungseong filler
        '\u{17B4}', // Khmer vowel inherent aq
        '\u{17B5}', // Khmer vowel inherent aa
        '\u{3164}', // Hangul filler
        '\u{FFA0}', // halfwidth Hangul filler
    ];
    c.general_category() == GeneralCategory::Format || BLANK_LOOKING.contains(&c)
}

/// A tag or tag-group name: trimmed, 1–64 characters, any Unicode.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagName(String);

impl TagName {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(raw: &str, field: &str) -> AppResult<Self> {
        bounded(raw, field, 1, Self::MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A customer's name: trimmed, 1–100 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerName(String);

impl CustomerName {
    pub fn parse(raw: &str, field: &str) -> AppResult<Self> {
        bounded(raw, field, 1, 100).map(Self)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A free description, up to 500 characters, possibly empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Description(String);

impl Description {
    pub fn parse(raw: Option<&str>, field: &str) -> AppResult<Self> {
        match raw {
            None => Ok(Self::default()),
            Some(raw) if raw.trim().is_empty() => Ok(Self::default()),
            Some(raw) => bounded(raw, field, 0, 500).map(Self),
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// An optional short attribute (city, industry, channel): trimmed, empty
/// means absent, at most 64 characters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptionalText(Option<String>);

impl OptionalText {
    pub fn parse(raw: Option<&str>, field: &str) -> AppResult<Self> {
        match raw.map(str::trim) {
            None | Some("") => Ok(Self(None)),
            Some(value) => bounded(value, field, 1, 64).map(|v| Self(Some(v))),
        }
    }

    pub fn into_inner(self) -> Option<String> {
        self.0
    }
}

/// A visibility class of a tag group: lower-case ASCII word, as policies
/// name it (`basic`, `service`, `value`, `sensitive`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VisibilityClass(String);

impl VisibilityClass {
    pub fn parse(raw: &str, field: &str) -> AppResult<Self> {
        policy_word(raw, field).map(Self)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A role name as policies spell it: `store_manager`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(raw: &str, field: &str) -> AppResult<Self> {
        policy_word(raw, field).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A word of the policy language (role, visibility class): lower-case
/// ASCII, digits and `_`, starting with a letter, at most 32 characters.
fn policy_word(raw: &str, field: &str) -> AppResult<String> {
    let value = raw.trim();
    let ok = (1..=32).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(AppError::validation(field, "must be 1-32 characters of a-z, 0-9 and _, starting with a letter"))
    }
}

/// A naming pattern of a tag group: a regular expression every tag name in
/// the group must match, anchored as written.
#[derive(Debug, Clone)]
pub struct NamingPattern {
    source: String,
    regex: Regex,
}

impl NamingPattern {
    pub fn parse(raw: &str, field: &str) -> AppResult<Self> {
        let source = raw.trim();
        if source.is_empty() || source.chars().count() > 200 {
            return Err(AppError::validation(field, "must be 1-200 characters"));
        }
        let regex = regex::RegexBuilder::new(source)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| AppError::validation(field, format!("is not a valid regular expression: {e}")))?;
        Ok(Self { source: source.to_owned(), regex })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Checks a tag name against the pattern.
    pub fn check(&self, name: &TagName, field: &str) -> AppResult<()> {
        if self.regex.is_match(name.as_str()) {
            Ok(())
        } else {
            Err(AppError::validation(
                field,
                format!("{:?} does not match the group's naming pattern {}", name.as_str(), self.source),
            ))
        }
    }
}

/// Aliases (近义词) of a tag: each a valid tag name, no repeats, at most 20.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases(Vec<String>);

impl Aliases {
    pub const MAX: usize = 20;

    pub fn parse(raw: &[String], field: &str) -> AppResult<Self> {
        if raw.len() > Self::MAX {
            return Err(AppError::validation(field, format!("at most {} aliases", Self::MAX)));
        }
        let mut out: Vec<String> = Vec::with_capacity(raw.len());
        for alias in raw {
            let alias = TagName::parse(alias, field)?.into_inner();
            if !out.contains(&alias) {
                out.push(alias);
            }
        }
        Ok(Self(out))
    }

    pub fn into_json(self) -> serde_json::Value {
        serde_json::Value::from(self.0)
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

/// An external identity: provider (a short lower-case word such as `wecom`,
/// `unionid`, `crm`, `shop`) and the id there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub provider: String,
    pub external_id: String,
}

impl ExternalIdentity {
    pub fn parse(provider: &str, external_id: &str, field: &str) -> AppResult<Self> {
        let provider = provider.trim();
        let provider_ok = (1..=32).contains(&provider.len())
            && provider.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !provider_ok {
            return Err(AppError::validation(field, "provider must be 1-32 characters of a-z, 0-9, _ and -"));
        }
        let external_id = external_id.trim();
        if external_id.is_empty() || external_id.len() > 128 || external_id.chars().any(char::is_control) {
            return Err(AppError::validation(field, "external id must be 1-128 bytes of printable text"));
        }
        Ok(Self { provider: provider.to_owned(), external_id: external_id.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_names_are_trimmed_and_counted_in_characters() {
        assert_eq!(TagName::parse("  房贷用户 ", "name").unwrap().as_str(), "房贷用户");
        let sixty_four = "标".repeat(64);
        assert!(TagName::parse(&sixty_four, "name").is_ok());
        let err = TagName::parse(&"标".repeat(65), "name").unwrap_err();
        assert!(err.message().contains("at most 64"), "{err:?}");
    }

    #[test]
    fn blank_and_control_character_names_are_refused() {
        assert!(TagName::parse("   ", "name").is_err());
        assert!(TagName::parse("a\u{0}b", "name").is_err());
    }

    #[test]
    fn names_are_nfc_so_composed_and_decomposed_spellings_are_one_name() {
        let composed = TagName::parse("Caf\u{E9}", "name").unwrap();
        let decomposed = TagName::parse("Cafe\u{301}", "name").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(decomposed.as_str(), "Caf\u{E9}");
        assert_eq!(CustomerName::parse("Jose\u{301}", "name").unwrap().into_inner(), "Jos\u{E9}");
    }

    #[test]
    fn bidi_controls_and_invisible_characters_are_refused_naming_the_field() {
        let spoofs = [
            "abc\u{202E}gpj.exe",
            "\u{202A}VIP",
            "VIP\u{2066}x\u{2069}",
            "a\u{200E}b",
            "a\u{200F}b",
            "a\u{061C}b",
            "高\u{200B}价值",
            "高\u{200D}价值",
            "\u{FEFF}高价值",
            "高\u{2060}价值",
            "\u{3164}",
            "a\u{115F}b",
            "a\u{00AD}b",
        ];
        for raw in spoofs {
            let err = TagName::parse(raw, "name").unwrap_err();
            assert!(matches!(err, AppError::Validation { ref field, .. } if field == "name"), "{raw:?}: {err:?}");
            assert!(CustomerName::parse(raw, "name").is_err(), "{raw:?}");
        }
        assert!(Description::parse(Some("见\u{202E}附件"), "description").is_err());
        assert!(OptionalText::parse(Some("上\u{200B}海"), "city").is_err());
        // Ordinary spaces inside a name stay allowed.
        assert_eq!(TagName::parse("VIP 客户", "name").unwrap().as_str(), "VIP 客户");
        assert_eq!(TagName::parse("VIP\u{3000}客户", "name").unwrap().as_str(), "VIP\u{3000}客户");
    }

    #[test]
    fn naming_pattern_checks_tag_names() {
        let pattern = NamingPattern::parse(r"^年龄_\d+-\d+$", "pattern").unwrap();
        assert!(pattern.check(&TagName::parse("年龄_26-35", "n").unwrap(), "n").is_ok());
        assert!(pattern.check(&TagName::parse("中年", "n").unwrap(), "n").is_err());
        assert!(NamingPattern::parse("([", "pattern").is_err());
    }

    #[test]
    fn visibility_classes_are_lower_case_words() {
        assert!(VisibilityClass::parse("service", "c").is_ok());
        assert!(VisibilityClass::parse("Service", "c").is_err());
        assert!(VisibilityClass::parse("1abc", "c").is_err());
    }

    #[test]
    fn aliases_drop_repeats_and_are_bounded() {
        let aliases = Aliases::parse(&["升学咨询".into(), " 升学咨询".into()], "aliases").unwrap();
        assert_eq!(aliases.into_json(), serde_json::json!(["升学咨询"]));
        let many: Vec<String> = (0..21).map(|i| format!("a{i}")).collect();
        assert!(Aliases::parse(&many, "aliases").is_err());
    }
}

/// A staff member's sign-in name: 2–64 characters of lower-case ASCII
/// letters, digits, `.`, `_`, `-` and `@` (so an e-mail address fits), as
/// identity providers name people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login(String);

impl Login {
    pub fn parse(raw: &str, field: &str) -> AppResult<Self> {
        let value = raw.trim();
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '@');
        if !(2..=64).contains(&value.len()) || !value.chars().all(ok_char) {
            return Err(AppError::validation(
                field,
                "must be 2–64 characters: lower-case letters, digits, `.`, `_`, `-`, `@`",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A staff member's display name: trimmed, 1–64 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffName(String);

impl StaffName {
    pub fn parse(raw: &str, field: &str) -> AppResult<Self> {
        bounded(raw, field, 1, 64).map(Self)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// An e-mail address, checked loosely (one `@`, something on each side, no
/// spaces, at most 254 characters): the mail server is the real judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str, field: &str) -> AppResult<Self> {
        let value = raw.trim();
        let well_formed = value.len() <= 254
            && !value.chars().any(|c| c.is_whitespace() || c.is_control())
            && value.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !domain.contains('@') && !domain.starts_with('.')
            });
        if !well_formed {
            return Err(AppError::validation(field, "is not an e-mail address"));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// The value of a sign-in identity (an OIDC subject, a WeCom user id):
/// 1–255 characters, no spaces or control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityValue(String);

impl IdentityValue {
    pub fn parse(raw: &str, field: &str) -> AppResult<Self> {
        let value = raw.trim();
        if value.is_empty() || value.len() > 255 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AppError::validation(field, "must be 1–255 characters without spaces"));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}
