//! The one table of field rules. It drives the output of customer fields
//! *and* every other place a value could leak through: filters, ordering,
//! cursors, counts, exports.

use crate::domain::Phone;

/// Customer fields that need a permission of their own beyond
/// `customer:read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CustomerField {
    Phone,
    BirthDate,
    /// Total spend, and with it order count and last order time.
    TotalSpend,
}

impl CustomerField {
    pub const ALL: [CustomerField; 3] = [CustomerField::Phone, CustomerField::BirthDate, CustomerField::TotalSpend];

    /// The policy object (`customer.totalSpend`).
    pub fn object(self) -> &'static str {
        match self {
            CustomerField::Phone => "customer.phone",
            CustomerField::BirthDate => "customer.birthDate",
            CustomerField::TotalSpend => "customer.totalSpend",
        }
    }

    /// True when the policy may grant a masked reading: a row of
    /// [`FIELD_RULES`] it guards says how to mask.
    pub fn maskable(self) -> bool {
        FIELD_RULES.iter().any(|r| r.field == self && r.mask.is_some())
    }
}

/// One guarded customer field, and every name under which the API reads
/// it. Output guards (`Customer.*`, `me.permissions`), filters, orderings,
/// segment predicates, the CSV export and audit-log masking all look the
/// field up here, so adding a guarded field is adding a row (a test walks
/// the exported schema and fails on a customer field that is neither in
/// this table nor known to be unguarded).
#[derive(Debug, Clone, Copy)]
pub struct FieldRule {
    /// The `Customer` field, and the key of the value in audit details.
    pub api: &'static str,
    /// The permission that reads it.
    pub field: CustomerField,
    /// `CustomerFilterInput` arguments that compare its value.
    pub filters: &'static [&'static str],
    /// The `CustomerOrderField` that sorts by it.
    pub order: Option<&'static str>,
    /// The segment predicate that reads it (text form name; the structured
    /// input's fields start with it, as `lastOrderBefore`).
    pub segment: Option<&'static str>,
    /// The CSV export column that holds it.
    pub export: &'static str,
    /// How a masked reading shows it; `None` when the field has no masked
    /// reading (hidden unless readable in full).
    pub mask: Option<fn(&str) -> String>,
}

/// The guarded fields of `Customer`, one row each.
pub const FIELD_RULES: &[FieldRule] = &[
    FieldRule {
        api: "phone",
        field: CustomerField::Phone,
        filters: &[],
        order: None,
        segment: None,
        export: "phone",
        mask: Some(Phone::mask),
    },
    FieldRule {
        api: "birthDate",
        field: CustomerField::BirthDate,
        filters: &[],
        order: None,
        segment: Some("age"),
        export: "birthDate",
        mask: None,
    },
    FieldRule {
        api: "totalSpend",
        field: CustomerField::TotalSpend,
        filters: &["totalSpendMin", "totalSpendMax"],
        order: Some("TOTAL_SPEND"),
        segment: Some("spend"),
        export: "totalSpendCents",
        mask: None,
    },
    FieldRule {
        api: "orderCount",
        field: CustomerField::TotalSpend,
        filters: &[],
        order: None,
        segment: Some("orders"),
        export: "orderCount",
        mask: None,
    },
    FieldRule {
        api: "lastOrderAt",
        field: CustomerField::TotalSpend,
        filters: &[],
        order: None,
        segment: Some("lastOrder"),
        export: "lastOrderAt",
        mask: None,
    },
];

impl FieldRule {
    fn find(matches: impl Fn(&FieldRule) -> bool) -> Option<&'static FieldRule> {
        FIELD_RULES.iter().find(|r| matches(r))
    }

    /// The row of a `Customer` field (or audit-detail key).
    pub fn by_api(name: &str) -> Option<&'static FieldRule> {
        Self::find(|r| r.api == name)
    }

    /// The row a `CustomerFilterInput` argument compares.
    pub fn by_filter(name: &str) -> Option<&'static FieldRule> {
        Self::find(|r| r.filters.contains(&name))
    }

    /// The row a `CustomerOrderField` sorts by.
    pub fn by_order(name: &str) -> Option<&'static FieldRule> {
        Self::find(|r| r.order == Some(name))
    }

    /// The row a segment predicate reads.
    pub fn by_segment(name: &str) -> Option<&'static FieldRule> {
        Self::find(|r| r.segment == Some(name))
    }

    /// The row of a CSV export column.
    pub fn by_export(column: &str) -> Option<&'static FieldRule> {
        Self::find(|r| r.export == column)
    }

    /// A stored value as a reader with `access` sees it: in full, masked
    /// (the one place a phone is masked), or not at all.
    pub fn show(&self, access: FieldAccess, raw: &str) -> Option<String> {
        match (access, self.mask) {
            (FieldAccess::Full, _) => Some(raw.to_owned()),
            (FieldAccess::Masked, Some(mask)) => Some(mask(raw)),
            _ => None,
        }
    }
}

/// How a caller may read a field of one customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FieldAccess {
    Hidden,
    Masked,
    Full,
}

/// Seeing tags of a visibility class, or putting them on customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClassAccess {
    Read,
    Use,
}

impl ClassAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            ClassAccess::Read => "read",
            ClassAccess::Use => "use",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guarded_api_field_names_a_rule_and_every_rule_guards_a_field() {
        for field in CustomerField::ALL {
            assert!(FIELD_RULES.iter().any(|r| r.field == field), "{field:?} guards no API field");
        }
    }

    #[test]
    fn every_name_of_a_row_finds_that_row_and_no_two_rows_share_a_name() {
        for row in FIELD_RULES {
            assert_eq!(FieldRule::by_api(row.api).map(|r| r.api), Some(row.api));
            assert_eq!(FieldRule::by_export(row.export).map(|r| r.api), Some(row.api));
            for filter in row.filters {
                assert_eq!(FieldRule::by_filter(filter).map(|r| r.api), Some(row.api));
            }
            if let Some(order) = row.order {
                assert_eq!(FieldRule::by_order(order).map(|r| r.api), Some(row.api));
            }
            if let Some(predicate) = row.segment {
                assert_eq!(FieldRule::by_segment(predicate).map(|r| r.api), Some(row.api));
            }
        }
    }

    #[test]
    fn a_phone_is_shown_in_full_masked_or_not_at_all_and_unmaskable_fields_never_masked() {
        let phone = FieldRule::by_api("phone").unwrap();
        assert_eq!(phone.show(FieldAccess::Full, "13812345678").as_deref(), Some("13812345678"));
        assert_eq!(phone.show(FieldAccess::Masked, "13812345678").as_deref(), Some("138****5678"));
        assert_eq!(phone.show(FieldAccess::Hidden, "13812345678"), None);
        let spend = FieldRule::by_api("totalSpend").unwrap();
        assert_eq!(spend.show(FieldAccess::Masked, "100"), None);
        assert!(CustomerField::Phone.maskable() && !CustomerField::TotalSpend.maskable());
    }
}
