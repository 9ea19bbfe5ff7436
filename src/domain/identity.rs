//! A customer's identity in another system, by source: the WeCom
//! `external_userid` (one per corp), the WeChat `unionid`, a phone number,
//! or the order system's customer id. Stored as `customer_identity
//! (provider, external_id)`, unique: one identity, one customer.

use crate::error::{AppError, AppResult};

use super::Phone;

/// Where an identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentitySource {
    /// A WeCom `external_userid`, which is per corp.
    Wecom,
    /// A WeChat `unionid`.
    Unionid,
    /// A mobile number, normalised as customers' phones are.
    Phone,
    /// The order system's customer id.
    OrderSystem,
}

impl IdentitySource {
    /// The stored provider of the source (WeCom adds `:<corp>` when a corp is named).
    pub fn provider(self) -> &'static str {
        match self {
            Self::Wecom => "wecom",
            Self::Unionid => "unionid",
            Self::Phone => "phone",
            Self::OrderSystem => "order_system",
        }
    }
}

/// Longest corp id, so that `wecom:<corp>` fits the 32 characters of a provider.
const MAX_CORP: usize = 26;

/// A checked identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub source: IdentitySource,
    /// The WeCom corp (`ww…`); `None` is the deployment's own corp.
    pub corp: Option<String>,
    pub value: String,
}

impl Identity {
    /// Parses an identity; `field` names the input in errors.
    ///
    /// # Errors
    /// `VALIDATION` for an empty or over-long value, a corp outside WeCom
    /// or not 1–26 characters of a–z, 0–9, `_` and `-`, a phone that is not one.
    pub fn parse(source: IdentitySource, corp: Option<&str>, value: &str, field: &str) -> AppResult<Self> {
        let corp = corp.map(str::trim).filter(|c| !c.is_empty()).map(str::to_ascii_lowercase);
        if let Some(corp) = &corp {
            if source != IdentitySource::Wecom {
                return Err(AppError::validation(field, "only a WeCom identity names a corp"));
            }
            let ok = corp.len() <= MAX_CORP
                && corp.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !ok {
                return Err(AppError::validation(field, "a corp id is 1-26 characters of a-z, 0-9, _ and -"));
            }
        }
        let value = value.trim();
        let value = match source {
            IdentitySource::Phone => Phone::parse(value, field)?.into_inner(),
            _ => {
                if value.is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
                    return Err(AppError::validation(field, "an identity is 1-128 bytes of printable text"));
                }
                value.to_owned()
            }
        };
        Ok(Self { source, corp, value })
    }

    /// The stored provider: `wecom`, `wecom:<corp>`, `unionid`, `phone`, `order_system`.
    pub fn provider(&self) -> String {
        match &self.corp {
            Some(corp) => format!("{}:{corp}", self.source.provider()),
            None => self.source.provider().to_owned(),
        }
    }

    /// The source and corp of a stored provider; `None` for providers of
    /// other systems (`crm`, `shop`, …).
    pub fn source_of(provider: &str) -> Option<(IdentitySource, Option<String>)> {
        let (head, corp) = match provider.split_once(':') {
            Some((head, corp)) => (head, Some(corp.to_owned())),
            None => (provider, None),
        };
        let source =
            [IdentitySource::Wecom, IdentitySource::Unionid, IdentitySource::Phone, IdentitySource::OrderSystem]
                .into_iter()
                .find(|s| s.provider() == head)?;
        (corp.is_none() || source == IdentitySource::Wecom).then_some((source, corp))
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.provider(), self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wecom_identity_carries_its_corp_in_the_provider_and_reads_back() {
        let id = Identity::parse(IdentitySource::Wecom, Some(" WWa1 "), " wmABC ", "id").unwrap();
        assert_eq!(id.provider(), "wecom:wwa1");
        assert_eq!(id.value, "wmABC");
        assert_eq!(Identity::source_of("wecom:wwa1"), Some((IdentitySource::Wecom, Some("wwa1".to_owned()))));
        assert_eq!(Identity::source_of("order_system"), Some((IdentitySource::OrderSystem, None)));
        assert_eq!(Identity::source_of("crm"), None);
        assert_eq!(Identity::source_of("unionid:x"), None);
    }

    #[test]
    fn phones_are_normalised_and_corps_belong_to_wecom_only() {
        let phone = Identity::parse(IdentitySource::Phone, None, "138 0013 8000", "id").unwrap();
        assert_eq!(phone.value, "13800138000");
        assert!(Identity::parse(IdentitySource::Unionid, Some("ww1"), "o6_x", "id").is_err());
        assert!(Identity::parse(IdentitySource::Wecom, Some(&"w".repeat(27)), "x", "id").is_err());
        assert!(Identity::parse(IdentitySource::Unionid, None, "  ", "id").is_err());
    }
}
