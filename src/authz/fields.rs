//! The one table of field rules. It drives the output of customer fields
//! *and* every other place a value could leak through: filters, ordering,
//! cursors, counts, exports.

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

    /// True when the policy may grant a masked reading.
    pub fn maskable(self) -> bool {
        matches!(self, CustomerField::Phone)
    }
}

/// API fields of `Customer` guarded by a rule.
pub const FIELD_RULES: &[(&str, CustomerField)] = &[
    ("phone", CustomerField::Phone),
    ("birthDate", CustomerField::BirthDate),
    ("totalSpend", CustomerField::TotalSpend),
    ("orderCount", CustomerField::TotalSpend),
    ("lastOrderAt", CustomerField::TotalSpend),
];

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
            assert!(FIELD_RULES.iter().any(|(_, f)| *f == field), "{field:?} guards no API field");
        }
    }
}
